"""Machine facts for preflight: memory, cores, disk, Nix, each with the limit that binds.

A container or a systemd unit sees the host's ``/proc/meminfo``, but the kernel kills at
its cgroup limit, so memory and cores are the minimum of what the machine has and what our
cgroup (and every ancestor) allows. Each parser is a pure function over file text; the
readers take a ``read`` callable (path → text or None) so tests feed recorded files.
Judging the facts against thresholds and ``--mode`` is ``assess.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from . import process
from .nixfacts import (
    build_dir,
    nix_config,
    nix_version,
    options_honoured,
    state_dir,
    store_dir,
    store_mode,
    user_and_groups,
)

Reader = Callable[[str], str | None]
Runner = Callable[[list[str]], process.Completed]

# cgroup v1 reports "no limit" as a page-rounded LONG_MAX; anything this large is no limit.
_NO_LIMIT = 1 << 60


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:  # noqa: PTH123 - str paths
            return f.read()
    except OSError:
        return None


# --- pure parsers ------------------------------------------------------------------------


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` → {field: bytes}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            unit = parts[1].lower() if len(parts) > 1 else ""
            out[key.strip()] = int(parts[0]) * (1024 if unit == "kb" else 1)
    return out


def parse_limit(text: str | None) -> int | None:
    """``memory.max`` / ``memory.limit_in_bytes`` → bytes, None for no limit."""
    if text is None:
        return None
    value = text.strip()
    if not value.isdigit():
        return None  # "max", empty, garbage
    number = int(value)
    return None if number >= _NO_LIMIT else number


def parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    value = text.strip()
    return int(value) if value.lstrip("-").isdigit() else None


def parse_cpu_max(text: str | None) -> float | None:
    """cgroup v2 ``cpu.max`` ("200000 100000") → 2.0 cores; None for "max"."""
    if text is None:
        return None
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit() or int(parts[1]) == 0:
        return None
    return int(parts[0]) / int(parts[1])


def parse_cfs_quota(quota: str | None, period: str | None) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; quota -1 means none."""
    q, p = parse_int(quota), parse_int(period)
    if q is None or p is None or q <= 0 or p <= 0:
        return None
    return q / p


def parse_flat_keyed(text: str | None) -> dict[str, int]:
    """``memory.events`` / ``memory.oom_control`` style "key value" lines."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


@dataclass(frozen=True, slots=True)
class CgroupMount:
    version: int  # 1 or 2
    mountpoint: str
    root: str  # the cgroup path mounted there (not "/" when a subtree is bind-mounted)
    controllers: frozenset[str]


def parse_mountinfo(text: str) -> list[CgroupMount]:
    mounts = []
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] == "cgroup2":
            mounts.append(CgroupMount(2, fields[4], fields[3], frozenset()))
        elif tail[0] == "cgroup":
            mounts.append(CgroupMount(1, fields[4], fields[3], frozenset(tail[2].split(","))))
    return mounts


def parse_self_cgroup(text: str) -> tuple[str | None, dict[str, str]]:
    """``/proc/self/cgroup`` → (v2 path, {v1 controller: path})."""
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        else:
            for controller in controllers.split(","):
                v1[controller] = path
    return v2, v1


@dataclass(frozen=True, slots=True)
class CgroupDirs:
    """Our cgroup directory per concern, plus its ancestors up to the mount (nearest first)."""

    version: int
    memory: tuple[str, ...]
    cpu: tuple[str, ...]


def _chain(mount: CgroupMount, path: str) -> tuple[str, ...]:
    rel = path
    if mount.root != "/" and (path == mount.root or path.startswith(mount.root + "/")):
        rel = path[len(mount.root) :]
    parts = [p for p in rel.split("/") if p and p != ".."]
    return tuple(
        os.path.join(mount.mountpoint, *parts[:n])  # noqa: PTH118 - plain strings
        for n in range(len(parts), -1, -1)
    )


def locate_cgroups(mountinfo: str, self_cgroup: str) -> CgroupDirs | None:
    """Prefer a v2 mount that has the memory controller, else v1 memory/cpu hierarchies."""
    mounts = parse_mountinfo(mountinfo)
    v2_path, v1_paths = parse_self_cgroup(self_cgroup)
    v1_mem = next((m for m in mounts if m.version == 1 and "memory" in m.controllers), None)
    if v1_mem is None and v2_path is not None:
        v2 = next((m for m in mounts if m.version == 2), None)
        if v2 is not None:
            chain = _chain(v2, v2_path)
            return CgroupDirs(2, chain, chain)
    if v1_mem is not None and "memory" in v1_paths:
        v1_cpu = next((m for m in mounts if m.version == 1 and "cpu" in m.controllers), None)
        cpu = _chain(v1_cpu, v1_paths["cpu"]) if v1_cpu and "cpu" in v1_paths else ()
        return CgroupDirs(1, _chain(v1_mem, v1_paths["memory"]), cpu)
    return None


# --- readers -----------------------------------------------------------------------------


def cgroup_dirs(read: Reader = read_text) -> CgroupDirs | None:
    mountinfo, self_cgroup = read("/proc/self/mountinfo"), read("/proc/self/cgroup")
    if mountinfo is None or self_cgroup is None:
        return None
    return locate_cgroups(mountinfo, self_cgroup)


@dataclass(frozen=True, slots=True)
class Memory:
    total_bytes: int
    available_bytes: int
    cgroup_limit_bytes: int | None


def reclaimable_bytes(memory_stat: str | None, version: int) -> int:
    """Clean page cache in a cgroup's ``memory.stat``: the kernel drops it before it OOM-kills.

    A cgroup's usage counts the page cache of every file its processes read or wrote, and the
    kernel lets that cache grow up to the limit before reclaiming it: a build that has written
    object files and read them back to link sits at its limit while most of it is free for
    the taking. Active pages too: the kubelet counts only inactive ones and is known to evict
    pods that had memory to spare (kubernetes#43916); the host's MemAvailable counts both.
    Dirty pages must be written first, so they stay counted as used. v1's plain keys cover
    this cgroup only, its ``total_`` keys the children as well.
    """
    stat = parse_flat_keyed(memory_stat)
    # File LRU pages: tmpfs and shared memory are on the anonymous lists, so not in these.
    if version == 2:
        cached, unwritten = ("active_file", "inactive_file"), ("file_dirty", "file_writeback")
    else:
        t = "total_" if "total_inactive_file" in stat else ""
        cached, unwritten = (f"{t}active_file", f"{t}inactive_file"), (f"{t}dirty", f"{t}writeback")
    clean = sum(stat.get(k, 0) for k in cached) - sum(stat.get(k, 0) for k in unwritten)
    return max(0, clean)


def read_memory(read: Reader = read_text, *, strict: bool = False) -> Memory:
    """``strict``: raise OSError when /proc/meminfo cannot be read (else it reads as 0)."""
    meminfo = read("/proc/meminfo")
    if meminfo is None and strict:
        raise OSError("/proc/meminfo cannot be read")
    info = parse_meminfo(meminfo or "")
    total = info.get("MemTotal", 0)
    available = info.get("MemAvailable", info.get("MemFree", 0))
    dirs = cgroup_dirs(read)
    limit: int | None = None
    if dirs is not None:
        limit_file, usage_file = (
            ("memory.max", "memory.current")
            if dirs.version == 2
            else ("memory.limit_in_bytes", "memory.usage_in_bytes")
        )
        for d in dirs.memory:
            level_limit = parse_limit(read(f"{d}/{limit_file}"))
            if level_limit is None:
                continue
            limit = level_limit if limit is None else min(limit, level_limit)
            used = parse_int(read(f"{d}/{usage_file}")) or 0
            used -= reclaimable_bytes(read(f"{d}/memory.stat"), dirs.version)
            available = min(available, max(0, level_limit - max(0, used)))
    return Memory(
        total_bytes=min(total, limit) if limit is not None and total else (limit or total),
        available_bytes=available,
        cgroup_limit_bytes=limit,
    )


def available_memory(read: Reader = read_text) -> int:
    """Bytes a build may still allocate (host and cgroup); the watchdog polls this.

    Raises OSError when /proc/meminfo cannot be read: "0 bytes" would stop the build.
    """
    return read_memory(read, strict=True).available_bytes


def read_oom_kill_count(read: Reader = read_text) -> int | None:
    """The kernel's count of OOM kills in our cgroup; None where the kernel does not say."""
    dirs = cgroup_dirs(read)
    if dirs is None or not dirs.memory:
        return None
    name = "memory.events" if dirs.version == 2 else "memory.oom_control"
    return parse_flat_keyed(read(f"{dirs.memory[0]}/{name}")).get("oom_kill")


def read_cpu_quota(read: Reader = read_text) -> float | None:
    dirs = cgroup_dirs(read)
    quotas: list[float] = []
    for d in dirs.cpu if dirs else ():
        if dirs is not None and dirs.version == 2:
            quota = parse_cpu_max(read(f"{d}/cpu.max"))
        else:
            quota = parse_cfs_quota(read(f"{d}/cpu.cfs_quota_us"), read(f"{d}/cpu.cfs_period_us"))
        if quota is not None:
            quotas.append(quota)
    return min(quotas) if quotas else None


def usable_cores(affinity: int, quota: float | None) -> int:
    if quota is None:
        return max(1, affinity)
    return max(1, min(affinity, math.ceil(quota)))


def existing_ancestor(path: Path) -> Path:
    """The path itself or its nearest existing parent (the store may not exist yet)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def free_bytes(path: Path) -> int | None:
    try:
        st = os.statvfs(existing_ancestor(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


@dataclass(frozen=True, slots=True)
class MachineFacts:
    mem_total_bytes: int
    mem_available_bytes: int
    cgroup_memory_limit_bytes: int | None
    cpu_affinity: int
    cpu_quota: float | None
    cores: int
    store_dir: str
    store_free_bytes: int | None
    build_dir: str
    build_free_bytes: int | None
    nix_version: str | None
    nix_store_mode: str | None
    nix_options_honoured: bool | None
    nix_trust_reason: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def collect_facts(
    env: Mapping[str, str] | None = None,
    *,
    read: Reader = read_text,
    run: Runner | None = None,
    version_cache: Path | None = None,
) -> MachineFacts:
    """What preflight and ``doctor`` need to know; ``version_cache``: see nixfacts.py."""
    env = os.environ if env is None else env
    runner: Runner = run or (lambda argv: process.run_capture(argv, timeout=30))
    memory = read_memory(read)
    affinity = len(os.sched_getaffinity(0))
    quota = read_cpu_quota(read)
    store = store_dir(env)
    mode = None
    config: dict[str, str] = {}
    honoured: bool | None = None
    reason = "nix is not installed"
    version = nix_version(runner, env, version_cache)
    if version is not None:
        state = state_dir(env)
        mode = store_mode(
            env.get("NIX_REMOTE"),
            os.access(existing_ancestor(state), os.W_OK),
            (state / "daemon-socket" / "socket").exists(),
        )
        # Only a daemon's trusted-users matter, and asking nix for its configuration costs
        # a process start before every build: skip it when nix opens the store itself.
        config = {} if mode == "local" else nix_config(runner)
        user, groups = user_and_groups()
        honoured, reason = options_honoured(mode, user, groups, config.get("trusted-users"))
    build = build_dir(env, mode, version, config.get("build-dir"))
    return MachineFacts(
        mem_total_bytes=memory.total_bytes,
        mem_available_bytes=memory.available_bytes,
        cgroup_memory_limit_bytes=memory.cgroup_limit_bytes,
        cpu_affinity=affinity,
        cpu_quota=quota,
        cores=usable_cores(affinity, quota),
        store_dir=str(store),
        store_free_bytes=free_bytes(store),
        build_dir=str(build),
        build_free_bytes=free_bytes(build),
        nix_version=version,
        nix_store_mode=mode,
        nix_options_honoured=honoured,
        nix_trust_reason=reason,
    )
