"""What the person watching sees: terminal redraws, plain heartbeats, --quiet."""

from __future__ import annotations

import contextlib
import io
import os

from nixbuild import logevents as ev
from nixbuild import logstream as ls
from nixbuild.console import Console, format_elapsed, progress_text
from nixbuild.model import Source


def building_state() -> ls.LogState:
    state = ls.LogState()
    drv = "/nix/store/aaaa-python3.12-torch-2.5.1.drv"
    state.apply(ev.Start(1, ev.ACT_BUILDS, 0, "", None))
    state.apply(ev.Progress(1, 412, 1031, 1, 0))
    state.apply(ev.Start(2, ev.ACT_BUILD, 3, f"building '{drv}'", None, (drv,)))
    state.apply(ev.SetPhase(2, "buildPhase"))
    return state


def test_progress_text_names_counts_derivation_phase_and_time() -> None:
    text = progress_text(building_state(), 3725)
    assert text == "412/1031 built, building python3.12-torch-2.5.1 [buildPhase], 1h02m"


def test_terminal_redraws_the_progress_line_under_the_log() -> None:
    out = io.StringIO()
    console = Console(out, tty=True)
    console.tick(building_state(), 5, now=5)
    console.log_text("torch> [ 1%] Building CXX object", Source.BUILD, now=6)
    console.tick(building_state(), 6, now=6)
    console.done()
    text = out.getvalue()
    assert text.startswith("\r\x1b[K412/1031 built")
    # the log line clears the progress line first, then the progress line is redrawn
    assert "\r\x1b[Ktorch> [ 1%] Building CXX object\n\r\x1b[K412/1031" in text
    assert text.endswith("\r\x1b[K")  # nothing half-drawn left behind


def test_plain_output_has_no_ansi_and_heartbeats_only_when_silent() -> None:
    out = io.StringIO()
    console = Console(out, tty=False, heartbeat_s=30)
    console.start(now=0)
    console.tick(building_state(), 10, now=10)  # 10 s silent: nothing yet
    console.log_text("torch> compiling", Source.BUILD, now=20)
    console.tick(building_state(), 45, now=45)  # 25 s since the last line: still nothing
    console.tick(building_state(), 51, now=51)  # 31 s: one heartbeat
    console.tick(building_state(), 52, now=52)  # and not again at once
    lines = out.getvalue().splitlines()
    assert lines == [
        "torch> compiling",
        "… still running: 412/1031 built, building python3.12-torch-2.5.1 [buildPhase], 51s",
    ]
    assert "\x1b" not in out.getvalue()


def test_quiet_keeps_nix_errors_and_drops_builder_chatter() -> None:
    out = io.StringIO()
    console = Console(out, tty=False, quiet=True)
    console.log_text("torch> compiling", Source.BUILD, now=0)
    console.log_text("building '/nix/store/x.drv'...", Source.NIX, now=0)
    console.log_text("error: builder for 'x' failed", Source.NIX, now=0)
    console.say("attempt 1/6 failed: build", now=0)
    assert out.getvalue().splitlines() == [
        "error: builder for 'x' failed",
        "attempt 1/6 failed: build",
    ]


def test_format_elapsed() -> None:
    assert [format_elapsed(s) for s in (5, 65, 3600, 7322)] == ["5s", "1m05s", "1h00m", "2h02m"]


def test_a_full_nonblocking_pipe_costs_a_line_a_closed_one_ends_the_output() -> None:
    """EAGAIN (a CI runner's full non-blocking pipe) drops one line; EPIPE (the reader is
    gone) stops the console. Neither may end the run."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    stream = os.fdopen(write_end, "w", buffering=1)
    console = Console(stream)
    with contextlib.suppress(BlockingIOError):
        while True:  # fill the pipe
            os.write(write_end, b"x" * 65536)
    console.say("dropped", 0.0)  # EAGAIN
    while len(os.read(read_end, 1 << 20)) == 1 << 20:  # drain
        pass
    console.say("shown", 0.0)
    assert b"shown\n" in os.read(read_end, 1 << 20)
    os.close(read_end)
    console.say("to nobody", 0.0)  # EPIPE: the console is gone, quietly
    console.say("still nothing", 0.0)
    with contextlib.suppress(OSError):
        stream.close()
