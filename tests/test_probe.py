"""Probe parsers over recorded /proc and cgroup text, the assessment table, and the real machine."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require

from nixbuild import process
from nixbuild.assess import GiB, Thresholds, assess
from nixbuild.cli_service import doctor_command, render_doctor
from nixbuild.errors import UsageError
from nixbuild.model import Variant
from nixbuild.nixfacts import build_dir, options_honoured, parse_nix_config, store_mode
from nixbuild.probe import (
    MachineFacts,
    Reader,
    collect_facts,
    existing_ancestor,
    free_bytes,
    locate_cgroups,
    parse_cfs_quota,
    parse_cpu_max,
    parse_limit,
    parse_meminfo,
    read_cpu_quota,
    read_memory,
    read_oom_kill_count,
    usable_cores,
)

MEMINFO = """\
MemTotal:       24683792 kB
MemFree:        24415972 kB
MemAvailable:   24360124 kB
HugePages_Total:       0
"""

# A pure cgroup v2 machine (systemd user service) and a hybrid v1 one (recorded here).
MOUNTINFO_V2 = (
    "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw\n"
)
SELF_V2 = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/nixbuild@torch.service\n"
MOUNTINFO_V1 = (
    "35 25 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "36 25 0:31 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "37 25 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)
SELF_V1 = "4:memory:/process_api/bd73\n1:cpu:/\n0::/\n"

V2_SERVICE = (
    "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/nixbuild@torch.service"
)
V2_USER = "/sys/fs/cgroup/user.slice/user-1000.slice"


def fake_fs(files: dict[str, str]) -> Reader:
    """A reader over a dict: the real code reads files; here we feed recorded contents."""

    def read(path: str) -> str | None:
        return files.get(path)

    return read


def test_parse_meminfo() -> None:
    info = parse_meminfo(MEMINFO)
    assert info["MemTotal"] == 24683792 * 1024
    assert info["MemAvailable"] == 24360124 * 1024
    assert info["HugePages_Total"] == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("max\n", None), ("8589934592\n", 8589934592), ("9223372036854771712\n", None), ("", None)],
)
def test_parse_limit(text: str, expected: int | None) -> None:
    assert parse_limit(text) == expected


def test_cpu_quota_parsers() -> None:
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("250000 100000\n") == 2.5
    assert parse_cpu_max("garbage") is None
    assert parse_cfs_quota("-1\n", "100000\n") is None
    assert parse_cfs_quota("150000\n", "100000\n") == 1.5
    assert usable_cores(16, 2.5) == 3
    assert usable_cores(2, 8.0) == 2
    assert usable_cores(4, None) == 4


def test_locate_v2_walks_to_the_mount_root() -> None:
    dirs = locate_cgroups(MOUNTINFO_V2, SELF_V2)
    assert dirs is not None
    assert dirs.version == 2
    assert dirs.memory[0] == V2_SERVICE
    assert dirs.memory[-1] == "/sys/fs/cgroup"


def test_locate_hybrid_prefers_v1_memory_controller() -> None:
    dirs = locate_cgroups(MOUNTINFO_V1, SELF_V1)
    assert dirs is not None
    assert dirs.version == 1
    assert dirs.memory == (
        "/sys/fs/cgroup/memory/process_api/bd73",
        "/sys/fs/cgroup/memory/process_api",
        "/sys/fs/cgroup/memory",
    )
    assert dirs.cpu == ("/sys/fs/cgroup/cpu",)


def test_bind_mounted_subtree_is_stripped() -> None:
    mountinfo = "30 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    dirs = locate_cgroups(mountinfo, "0::/docker/abc\n")
    assert dirs is not None
    assert dirs.memory == ("/sys/fs/cgroup",)


def test_cgroup_v2_limit_binds_memory() -> None:
    read = fake_fs(
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/mountinfo": MOUNTINFO_V2,
            "/proc/self/cgroup": SELF_V2,
            f"{V2_SERVICE}/memory.max": "max\n",
            f"{V2_USER}/memory.max": str(8 * GiB),
            f"{V2_USER}/memory.current": str(6 * GiB),
            f"{V2_SERVICE}/memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n",
            f"{V2_USER}/cpu.max": "200000 100000\n",
        }
    )
    memory = read_memory(read)
    assert memory.cgroup_limit_bytes == 8 * GiB
    assert memory.total_bytes == 8 * GiB
    assert memory.available_bytes == 2 * GiB  # the ancestor's headroom, not MemAvailable
    assert read_oom_kill_count(read) == 2
    assert read_cpu_quota(read) == 2.0


def test_page_cache_in_the_cgroup_counts_as_available() -> None:
    """A build that wrote 5 GiB under an 8 GiB limit has most of it back on demand: the
    kernel drops clean file pages before it OOM-kills, so the watchdog must not trip.
    Dirty pages (still to be written) and shared memory (on the anon lists) stay used."""
    files = {
        "/proc/meminfo": MEMINFO,
        "/proc/self/mountinfo": MOUNTINFO_V2,
        "/proc/self/cgroup": SELF_V2,
        f"{V2_USER}/memory.max": str(8 * GiB),
        f"{V2_USER}/memory.current": str(7 * GiB),
        f"{V2_USER}/memory.stat": f"anon {2 * GiB}\nfile {5 * GiB}\nshmem {1 * GiB}\n"
        f"active_file {2 * GiB}\ninactive_file {2 * GiB}\nfile_dirty {GiB // 2}\n"
        f"file_writeback {GiB // 2}\n",
    }
    assert read_memory(fake_fs(files)).available_bytes == 4 * GiB  # 8 - (7 - (2 + 2 - 1))
    # v1: the hierarchical total_ figure, not this cgroup's own (its children hold the cache)
    base = "/sys/fs/cgroup/memory/process_api/bd73"
    v1 = {
        "/proc/meminfo": MEMINFO,
        "/proc/self/mountinfo": MOUNTINFO_V1,
        "/proc/self/cgroup": SELF_V1,
        f"{base}/memory.limit_in_bytes": str(8 * GiB),
        f"{base}/memory.usage_in_bytes": str(7 * GiB),
        f"{base}/memory.stat": f"inactive_file 0\nactive_file 0\ndirty {GiB}\n"
        f"total_inactive_file {3 * GiB}\ntotal_active_file {GiB}\ntotal_dirty 0\n",
    }
    assert read_memory(fake_fs(v1)).available_bytes == 5 * GiB
    # a v1 kernel without the hierarchical keys: this cgroup's own
    v1[f"{base}/memory.stat"] = f"inactive_file {3 * GiB}\nactive_file {GiB}\ndirty {GiB}\n"
    assert read_memory(fake_fs(v1)).available_bytes == 4 * GiB
    # a memory.stat that cannot be read or parsed leaves the usage as it is, never below zero
    del files[f"{V2_USER}/memory.stat"]
    assert read_memory(fake_fs(files)).available_bytes == 1 * GiB
    files[f"{V2_USER}/memory.stat"] = f"inactive_file {99 * GiB}\ngarbage\n"
    assert read_memory(fake_fs(files)).available_bytes == 8 * GiB


def test_v1_limits_and_no_cgroup_at_all() -> None:
    base = "/sys/fs/cgroup/memory/process_api/bd73"
    read = fake_fs(
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/mountinfo": MOUNTINFO_V1,
            "/proc/self/cgroup": SELF_V1,
            f"{base}/memory.limit_in_bytes": "9223372036854771712\n",
            f"{base}/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n",
            "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
            "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
        }
    )
    memory = read_memory(read)
    assert memory.cgroup_limit_bytes is None
    assert memory.available_bytes == 24360124 * 1024
    assert read_oom_kill_count(read) == 5
    assert read_cpu_quota(read) is None
    bare = fake_fs({"/proc/meminfo": MEMINFO})
    assert read_oom_kill_count(bare) is None
    assert read_memory(bare).total_bytes == 24683792 * 1024


def test_nix_config_parser() -> None:
    config = parse_nix_config("cores = 2\ntrusted-users = root @wheel\nsubstituters = \n")
    assert config["trusted-users"] == "root @wheel"
    assert config["cores"] == "2"


def test_store_mode_and_trust() -> None:
    assert store_mode(None, state_writable=True, daemon_socket=True) == "local"
    assert store_mode(None, state_writable=False, daemon_socket=True) == "daemon"
    assert store_mode("daemon", state_writable=True, daemon_socket=False) == "daemon"
    assert store_mode("", state_writable=False, daemon_socket=False) == "local"
    assert options_honoured("local", "me", frozenset(), None)[0] is True
    assert options_honoured("daemon", "me", frozenset({"wheel"}), "root @wheel")[0] is True
    assert options_honoured("daemon", "me", frozenset(), "*")[0] is True
    honoured, why = options_honoured("daemon", "me", frozenset({"users"}), "root @wheel")
    assert honoured is False
    assert "not in the daemon's trusted-users" in why
    assert options_honoured("daemon", "me", frozenset(), None)[0] is None


def test_free_disk_walks_up_to_an_existing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "not" / "yet" / "store"
    assert existing_ancestor(missing) == tmp_path
    free = free_bytes(missing)
    assert free is not None
    assert free > 0


# --- assessment --------------------------------------------------------------------------


FACTS = MachineFacts(
    mem_total_bytes=64 * GiB,
    mem_available_bytes=60 * GiB,
    cgroup_memory_limit_bytes=None,
    cpu_affinity=16,
    cpu_quota=None,
    cores=16,
    store_dir="/nix/store",
    store_free_bytes=200 * GiB,
    build_dir="/tmp",
    build_free_bytes=200 * GiB,
    nix_version="2.8.0",
    nix_store_mode="local",
    nix_options_honoured=True,
    nix_trust_reason="",
)
MEDIUM = replace(FACTS, mem_total_bytes=16 * GiB, mem_available_bytes=15 * GiB, cores=12)
WEAK = replace(FACTS, mem_total_bytes=8 * GiB, mem_available_bytes=7 * GiB)
T = Thresholds()


@pytest.mark.parametrize(
    ("facts", "mode", "expected"),
    [
        (FACTS, "auto", ("strong", Variant.SOURCE, None, None)),
        (MEDIUM, "auto", ("medium", Variant.SOURCE, 8, 1)),  # 16 GiB / 2 GiB per core
        (WEAK, "auto", ("weak", Variant.BIN, None, None)),
        (WEAK, "source", ("weak", Variant.SOURCE, 4, 1)),
        (FACTS, "bin", ("strong", Variant.BIN, None, None)),
        (replace(MEDIUM, cores=4), "auto", ("medium", Variant.SOURCE, 4, 1)),
        (replace(FACTS, cores=4), "auto", ("medium", Variant.SOURCE, 4, 1)),
        (replace(FACTS, build_free_bytes=10 * GiB), "auto", ("weak", Variant.BIN, None, None)),
    ],
)
def test_assessment_table(
    facts: MachineFacts,
    mode: str,
    expected: tuple[str, Variant, int | None, int | None],
) -> None:
    a = assess(facts, T, mode)
    assert (a.tier, a.variant, a.cores, a.max_jobs) == expected
    assert not a.cannot_succeed


def test_weak_source_build_warns() -> None:
    a = assess(WEAK, T, "source")
    assert any("below the advice" in w for w in a.warnings)
    assert any("memory 8.0 GiB < 16.0 GiB" in r for r in a.reasons)


def test_refusals() -> None:
    no_nix = assess(replace(FACTS, nix_version=None), T, "auto")
    assert no_nix.cannot_succeed
    assert "nix is not installed" in no_nix.refusals[0]
    full = assess(replace(FACTS, store_free_bytes=1 * GiB), T, "bin")
    assert full.cannot_succeed
    assert "below the floor of 2.0 GiB" in full.refusals[0]
    # a tiny build dir stops a source build but not the prebuilt variant
    tiny_tmp = replace(FACTS, build_free_bytes=100 * 1024**2)
    assert assess(tiny_tmp, T, "source").cannot_succeed
    assert not assess(tiny_tmp, T, "bin").cannot_succeed


def test_thresholds_are_configurable_and_mode_is_validated() -> None:
    relaxed = replace(T, min_memory_bytes=4 * GiB, comfort_memory_bytes=8 * GiB, comfort_cores=2)
    assert assess(WEAK, relaxed, "auto").tier == "strong"
    with pytest.raises(UsageError):
        assess(FACTS, T, "fast")
    assert (
        assess(FACTS, T, "auto").to_json()["plan"] == "build from source with default parallelism"
    )


def test_untrusted_daemon_user_is_warned() -> None:
    facts = replace(FACTS, nix_options_honoured=False, nix_trust_reason="not trusted")
    assert "not trusted" in assess(facts, T, "auto").warnings


# --- the real machine --------------------------------------------------------------------


def test_collect_facts_on_this_machine(nix_env: dict[str, str]) -> None:
    require("nix")
    facts = collect_facts()
    assert 0 < facts.mem_available_bytes <= facts.mem_total_bytes
    assert 1 <= facts.cores <= len(os.sched_getaffinity(0))
    assert facts.store_dir == nix_env["NIX_STORE_DIR"]
    assert facts.store_free_bytes is not None
    assert facts.store_free_bytes > 0
    assert facts.nix_version is not None
    assert facts.nix_version[0].isdigit()
    # the isolated test store is opened directly (NIX_REMOTE empty), so options apply
    assert facts.nix_store_mode == "local"
    assert facts.nix_options_honoured is True


def test_collect_facts_without_nix(tmp_path: Path) -> None:
    def no_nix(argv: list[str]) -> process.Completed:
        raise process.CommandNotFound(f"{argv[0]}: command not found")

    facts = collect_facts({"NIX_STORE_DIR": str(tmp_path)}, run=no_nix)
    assert facts.nix_version is None
    assert assess(facts, T, "auto").cannot_succeed


@pytest.mark.parametrize(
    ("nix_remote", "asked", "honoured"),
    [("", False, True), ("daemon", True, False)],
)
def test_the_daemon_config_is_read_only_for_a_daemon(
    tmp_path: Path, nix_remote: str, asked: bool, honoured: bool
) -> None:
    # A recorded runner: `nix show-config` costs a process start before every build, and
    # its trusted-users only matter when a daemon applies the options.
    calls: list[list[str]] = []

    def recorded(argv: list[str]) -> process.Completed:
        calls.append(argv)
        out = "nix (Nix) 2.8.0\n" if "--version" in argv else "trusted-users = someone-else\n"
        return process.Completed(tuple(argv), 0, out, "")

    env = {"NIX_STORE_DIR": str(tmp_path), "NIX_STATE_DIR": str(tmp_path), "NIX_REMOTE": nix_remote}
    facts = collect_facts({**env, "TMPDIR": str(tmp_path / "client-tmp")}, run=recorded)
    assert any("show-config" in argv for argv in calls) is asked
    assert facts.nix_options_honoured is honoured
    # Our TMPDIR is where builds go only when nix opens the store itself.
    assert facts.build_dir == (str(tmp_path / "client-tmp") if nix_remote == "" else "/tmp")


def test_the_build_dir_follows_the_setting_the_version_and_the_store_mode() -> None:
    env = {"TMPDIR": "/run/user/1000", "NIX_STATE_DIR": "/state"}
    assert build_dir(env, "local", "2.8.0", None) == Path("/run/user/1000")
    assert build_dir({}, "local", "2.8.0", None) == Path("/tmp")
    assert build_dir(env, "daemon", "2.24.10", None) == Path("/tmp")  # the daemon's, not ours
    assert build_dir(env, "daemon", "2.30.0", None) == Path("/state/builds")
    assert build_dir({}, "local", "2.31.2pre", None) == Path("/nix/var/nix/builds")
    assert build_dir(env, "daemon", "2.24.10", "/big/builds") == Path("/big/builds")
    assert build_dir(env, "local", None, "") == Path("/run/user/1000")  # shown but not set


# --- nixbuild doctor ---------------------------------------------------------------------


def test_doctor_json_on_this_machine(nix_env: dict[str, str]) -> None:
    result = CliRunner().invoke(doctor_command, ["--json", "--mode", "bin"], standalone_mode=False)
    assert result.exception is None, result.output
    data = json.loads(result.output)
    assert sorted(data) == [
        "assessment",
        "facts",
        "schema",
        "thresholds",
        "watchdog_threshold_bytes",
    ]
    assert data["watchdog_threshold_bytes"] >= 256 * 1024**2
    assert data["schema"] == 1
    assert data["facts"]["store_dir"] == nix_env["NIX_STORE_DIR"]
    assert data["thresholds"]["min_memory_bytes"] == 16 * GiB
    assert data["assessment"]["variant"] == "bin"
    assert data["assessment"]["plan"] == "use the prebuilt -bin variant"
    assert result.return_value == (3 if data["assessment"]["cannot_succeed"] else 0)


def test_doctor_text_and_refusal() -> None:
    text, refused = render_doctor(MEDIUM, T, "auto")
    assert not refused
    assert "  cores       12 usable (affinity 16)" in text
    assert "plan: build from source with conservative parallelism: cores 8, max-jobs 1" in text
    text, refused = render_doctor(replace(FACTS, store_free_bytes=GiB // 2), T, "auto")
    assert refused
    assert "cannot succeed:" in text
    assert "free disk for the Nix store (/nix/store) is 0.5 GiB" in text
