"""The line fan-out: the pipe readers only queue; one worker numbers and processes."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

from nixbuild import probe
from nixbuild.attempt import Attempt, AttemptSettings, LineFanout, LineProcessor
from nixbuild.console import Console
from nixbuild.model import ExitInfo, Kind, Mode
from nixbuild.nixcmd import NixInfo
from nixbuild.rundir import RunFiles
from nixbuild.watchdog import MemoryWatchdog


def fanout(tmp_path: Path, backlog: int = 50_000) -> tuple[LineFanout, RunFiles]:
    files = RunFiles(tmp_path, lambda _: None)
    files.open_attempt(1)
    fan = LineFanout(files, Console(io.StringIO()), time.monotonic, backlog=backlog)
    fan.start()
    return fan, files


def build_line(act_id: int, text: str) -> str:
    fields = {"action": "result", "fields": [text], "id": act_id, "type": 101}
    return "@nix " + json.dumps(fields, separators=(",", ":"))


def test_every_line_is_processed_in_order_per_stream(tmp_path: Path) -> None:
    fan, files = fanout(tmp_path, backlog=100)  # small: the readers must wait for the worker
    fan.feed(
        [
            '@nix {"action":"start","id":1,"level":3,"type":105,"text":"building",'
            '"fields":["/nix/store/aaaa-demo-1.0.drv"]}'
        ]
    )

    def reader(stream: str) -> None:
        for i in range(0, 3000, 7):  # batches of up to 7 lines, as the pipe readers hand over
            fan.feed([build_line(1, f"{stream} {j}") for j in range(i, min(i + 7, 3000))])

    threads = [threading.Thread(target=reader, args=(s,)) for s in ("out", "err")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fan.close()
    files.close()
    lines = (tmp_path / "attempt-1.log").read_text().splitlines()
    assert lines[0] == "building..." and len(lines) == 6001 and fan.lines == 6001
    for stream in ("out", "err"):
        mine = [int(line.split()[-1]) for line in lines[1:] if line.startswith(f"demo> {stream}")]
        assert mine == list(range(3000))  # nothing lost, nothing reordered


def test_close_without_lines_stops_the_worker(tmp_path: Path) -> None:
    fan, _ = fanout(tmp_path)
    fan.close()
    assert fan.lines == 0


def test_a_batch_is_numbered_redacted_logged_and_classified_in_order(tmp_path: Path) -> None:
    files = RunFiles(tmp_path, lambda _: None)
    files.open_attempt(1)
    shown = io.StringIO()
    processor = LineProcessor(files, Console(shown))
    start = (
        '@nix {"action":"start","id":1,"level":3,"type":105,"text":"building",'
        '"fields":["/nix/store/aaaa-demo-1.0.drv"]}'
    )
    processor.process([start, build_line(1, "compiling a.c")], now=0.0)
    processor.process(
        [
            build_line(1, "fetching https://user:hunter2@example.org/src.tar.gz"),
            "not json at all",
            build_line(1, "c++: fatal error: Killed signal terminated program cc1plus"),
        ],
        now=1.0,
    )
    processor.process([], now=2.0)
    files.close()
    logged = (tmp_path / "attempt-1.log").read_text().splitlines()
    assert processor.lines == len(logged) == 5
    assert "hunter2" not in "\n".join(logged)
    assert "[redacted]" in logged[2]
    assert "hunter2" not in shown.getvalue()
    diagnosis = processor.classifier.finish(ExitInfo(1, None, None))
    assert diagnosis is not None
    assert diagnosis.kind is Kind.OOM
    evidence = diagnosis.evidence[0]
    assert logged[evidence.line - 1] == evidence.text


def test_lines_fed_before_the_worker_starts_are_kept_in_order(tmp_path: Path) -> None:
    # attempt.py starts nix before the worker (which then imports the classifier while nix
    # starts): output that arrives first waits in the queue, even beyond the backlog.
    files = RunFiles(tmp_path, lambda _: None)
    files.open_attempt(1)
    fan = LineFanout(files, Console(io.StringIO()), time.monotonic, backlog=10)
    fan.feed([build_line(1, f"early {i}") for i in range(25)])  # no wait: nobody to wait for
    fan.start()
    fan.feed([build_line(1, "late")])
    fan.close()
    files.close()
    log = (tmp_path / "attempt-1.log").read_text().splitlines()
    assert log == [f"early {i}" for i in range(25)] + ["late"]


def test_the_worker_keeps_nixbuilds_priority(tmp_path: Path) -> None:
    # A nicer worker, preempted while holding the GIL, starves the pipe readers (see
    # LineFanout): it must run at the priority of the threads that drain nix's pipes.
    fan, files = fanout(tmp_path)
    fan.feed([build_line(1, "hello")])
    assert fan.processor is not None  # the worker has started and built its processor
    worker = fan._worker.native_id
    assert worker is not None
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert os.getpriority(os.PRIO_PROCESS, worker) == mine
    fan.close()
    files.close()


def test_daemon_builds_do_not_read_our_oom_kill_counter(tmp_path: Path) -> None:
    """With the nix daemon the builders run in its cgroup: a kill in ours is never theirs."""

    def watchdog_of(builders_in_our_cgroup: bool) -> MemoryWatchdog:
        settings = AttemptSettings(
            mode=Mode.BUILD,
            gcroot=None,
            watchdog_bytes=1,  # never trips
            builders_in_our_cgroup=builders_in_our_cgroup,
        )
        files = RunFiles(tmp_path, lambda _: None)
        attempt = Attempt(
            settings,
            NixInfo((2, 8, 0)),
            Console(io.StringIO()),
            files,
            clock=time.monotonic,
            interrupted=lambda: None,
            progress=lambda _: None,
        )
        dog = attempt._watchdog()  # the seam where the counter is chosen
        assert dog is not None
        dog.stop()
        return dog

    assert watchdog_of(builders_in_our_cgroup=False).oom_kills_at_start is None
    local = watchdog_of(builders_in_our_cgroup=True).oom_kills_at_start
    assert local == probe.read_oom_kill_count()
    assert local is not None  # this machine's kernel counts OOM kills per cgroup
