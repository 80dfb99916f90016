"""The benchmarks' own moving parts, checked fast and without timing anything.

The generated log must be what it claims (exactly N lines of valid internal-json that
nixbuild decodes into builder output), the flaky server must really answer 503 before the
file, and the tables must survive odd cells. No figure is asserted here.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import _common as c
import bench_recovery
import pytest
import run_all

from nixbuild import config
from nixbuild.logevents import BuildLogLine, Plain, parse_line


def test_generated_log_has_exactly_the_lines_asked_for_and_all_are_internal_json() -> None:
    lines = list(c.iter_internal_json(30_000))
    assert len(lines) == 30_000
    assert all(line.startswith("@nix ") for line in lines)
    for line in lines:
        json.loads(line[5:])  # raises on a malformed line
    events = [parse_line(line) for line in lines]
    assert not any(isinstance(e, Plain) for e in events)
    builder = sum(isinstance(e, BuildLogLine) for e in events)
    assert 0.85 * len(lines) < builder < 0.99 * len(lines)  # the documented mix


def test_generated_log_is_deterministic_and_goes_through_the_supervisor_path() -> None:
    assert list(c.iter_internal_json(2_000, seed=3)) == list(c.iter_internal_json(2_000, seed=3))
    produced = c.consume(c.iter_internal_json(5_000))
    assert 4_000 < produced <= 5_000  # builder lines and nix messages, not progress results


def test_flaky_server_answers_503_the_given_number_of_times_then_serves_the_file() -> None:
    with bench_recovery.FlakyServer() as server:
        url = server.add("/src.tar.gz", b"payload", failures=2)
        for _ in range(2):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(url, timeout=5)
            assert info.value.code == 503
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.read() == b"payload"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url + ".unknown", timeout=5)
        assert missing.value.code == 404


def test_waits_are_scaled_like_the_loop_sleep_rounded_up_to_hundredths() -> None:
    assert bench_recovery.scaled_waits(60) == {
        "network_backoff": "2s",
        "network_backoff_cap": "600s",
        "oom_delay": "45s",
        "settle_delay": "5s",
    }
    assert bench_recovery.scaled_waits(5) == {
        "network_backoff": "0.17s",  # 0.1666… s, rounded up: never shorter than the exact scaling
        "network_backoff_cap": "50s",  # exactly 50: float noise does not add 0.01 s
        "oom_delay": "3.75s",
        "settle_delay": "0.42s",
    }
    assert bench_recovery.scaled_waits(0.1) == {
        "network_backoff": "0.01s",  # 0.0033 s: at least 0.01 s, never 0 (which means no wait)
        "network_backoff_cap": "1s",
        "oom_delay": "0.08s",
        "settle_delay": "0.01s",
    }
    assert bench_recovery.missing_settings() == []  # nixbuild has every setting today


def test_the_scaled_waits_are_valid_settings_and_start_from_nixbuilds_defaults() -> None:
    for name, default in bench_recovery.WAIT_SETTINGS.items():
        assert config.BY_NAME[name].default == default, name
    for text in bench_recovery.scaled_waits(5).values():
        assert config.parse_delay(text) == float(text.removesuffix("s"))


def test_the_flaky_server_throttles_only_the_successful_answer() -> None:
    with bench_recovery.FlakyServer(seconds=0.2) as server:
        url = server.add("/big.tar.gz", b"x" * 300_000, failures=1)
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url, timeout=5)
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.read() == b"x" * 300_000


def test_nixbuild_waits_are_read_from_its_events(tmp_path: Path) -> None:
    events = [
        {"event": "attempt_started", "timestamp": "2026-12-04T22:00:00.000000Z"},
        {"event": "attempt_decided", "timestamp": "2026-12-04T22:00:01.500000Z"},
        {"event": "memory_wait", "waited_s": 1.0, "timestamp": "2026-12-04T22:00:02.500000Z"},
        {"event": "attempt_started", "timestamp": "2026-12-04T22:00:02.600000Z"},
        {"event": "attempt_decided", "timestamp": "2026-12-04T22:00:03.000000Z"},
        {"event": "attempt_started", "timestamp": "2026-12-04T22:00:05.000000Z"},
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    waiting, memory = bench_recovery.measured_waits(path)
    assert waiting == pytest.approx(3.1)
    assert memory == [1.0]


def test_markdown_table_escapes_pipes() -> None:
    table = c.markdown_table([c.Row("s", "jq 'a | b'", "1", "x|y")])
    assert table.splitlines()[2] == "| s | jq 'a \\| b' | 1 | x\\|y |"


def test_classify_result_lines_are_recognised() -> None:
    line = "nixbuild classify (streaming)                             3.0       32,225      5.7     13.1 MiB"  # noqa: E501
    match = run_all._CLASSIFY_ROW.match(line)
    assert match is not None
    assert (match["name"], match["rate"], match["rss"]) == (
        "nixbuild classify (streaming)",
        "32,225",
        "13.1 MiB",
    )


def test_run_all_full_selects_the_issue_sizes_and_rejects_unknown_benchmarks() -> None:
    args = run_all.parse_args(["--full"])
    assert (args.lines, args.chatty_lines, args.memory_lines) == (
        5_000_000,
        1_000_000,
        "1000000,10000000",
    )
    with pytest.raises(SystemExit):
        run_all.parse_args(["--only", "overhead,nonsense"])


def test_proc_stat_reads_this_process() -> None:
    stat = c.proc_stat(os.getpid())
    assert stat is not None and stat.pid == os.getpid() and stat.self_s >= 0
    assert c.vm_hwm_kib(os.getpid()) > 0


def test_the_printed_command_leaves_out_the_output_file() -> None:
    argv = ["--out", "/somewhere/perf.md", "--full", "--out=x.md", "--rounds", "3"]
    assert run_all._without_out(argv) == ["--full", "--rounds", "3"]
