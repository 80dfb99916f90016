"""Benchmark: time to success under real faults, real Nix — nixbuild vs a shell loop vs an oracle.

Three strategies on the same scenario, each from a clean start (its own nonce or its own
download, its own nixbuild state directory):

* nixbuild: ``nixbuild build X`` with its defaults, except that its waits are shortened by
  the same factor as the shell loop's sleep (``--loop-sleep`` / the usual 60 s, so 1/12 by
  default): the ``network_backoff``, ``network_backoff_cap``, ``oom_delay`` and
  ``settle_delay`` settings, through their environment twins (``NIXBUILD_OOM_DELAY`` …),
  scaled exactly and rounded up to the next 0.01 s, so never shorter than the exact scaling
  (2 s → 0.17 s, 600 s → 50 s, 45 s → 3.75 s, 5 s → 0.42 s). What is not a setting is not
  scaled: after an out-of-memory failure nixbuild polls available memory every 0.5 s and
  starts once two readings in a row are back (at least 0.5 s; ``oom_delay`` is only the
  longest pause), so that wait is the same here as in a real run.
* shell loop: ``until nix build X …; do sleep S; done``, run by bash as written, bounded to
  ``--loop-tries`` tries; S = ``--loop-sleep`` (default 5 s instead of the usual 60 s, the
  same in every scenario).
* oracle: one ``nix build`` that starts with the settings that work.

The builds take real time (``--work``, the fixture flake's ``work.txt``; its header says
how): a successful source build does W CPU-seconds of busy work split into
``$NIX_BUILD_CORES`` parallel jobs (default W = 30: about 15 s at 2 cores on 2 free CPUs);
its out-of-memory failure comes at the first heavy step, after 10% of that work — an
assumption, stated: a real OOM may come earlier or later, and the *wasted build* column is
what it costs; a ``-bin`` sibling does W/2 CPU-seconds in one job (as long as the source
build at 2 cores: generous to a supervisor that tries the source first, since real
prebuilt packages are usually much cheaper than their source build).

Scenarios:

* oom: the fixture flake's ``cores`` fails above 2 cores (cc1plus killed). On this machine
  nixbuild would start at 2 cores and never see the failure, so every strategy's first
  attempt is forced to 8 cores (``--cores 8`` / ``--option cores 8``); the oracle uses 2.
* network: a fixed-output ``<nix/fetchurl.nix>`` download of ``--download-mb`` MiB from a
  local HTTP server that answers 503 at once to the first two requests, then serves the
  file throttled to take ``--download-s`` seconds. Nix retries a 503 by itself
  (``download-attempts``, default 5, backoff 0.25 s doubling), which gets through two 503s
  in under a second: the fault would be invisible and every strategy would take the same
  time. The scenario stands for an outage that outlasts nix's own retries (a mirror down
  for minutes), compressed to two requests, so the nixbuild and shell-loop runs pass
  ``--option download-attempts 1`` — the same handicap for both, and nixbuild passes it
  through untouched; the oracle passes 3, i.e. it knows the outage is two requests long
  and gets through it with nix's sub-second backoff. nixbuild's retry windows start at
  ``network_backoff`` (2 s) and grow 4-fold up to ``network_backoff_cap`` (600 s): 2, 8,
  32, 128, 512 s with full jitter, so its first retry comes within 2 s and its five retries
  reach about 11 min (682 s at most, ≈341 s expected); scaled, 0.17, 0.68, 2.72 … s, so the
  two 503s here cost at most 0.85 s of waiting. With the default ``download-attempts`` nix
  has already retried a 503 for about 4 s before it reports the failure, so a blip shorter
  than that never reaches nixbuild; what does reach it is retried within 2 s, the first
  three windows are used up within 42 s at most, and it is the last two (128 s, 512 s) that
  carry a run across an outage of minutes. A retry costs little (built dependencies stay
  in the store).
* bin fallback: the fixture's ``alwaysfail`` fails at any parallelism; ``alwaysfail-bin``
  builds. nixbuild derives that fallback itself; the oracle builds ``alwaysfail-bin``.

Reported per strategy: outcome, wall time, wasted build time (time spent in attempts that
failed) and time spent waiting between attempts (nixbuild: measured from its events, from
each decision to the next attempt's start; the loop: its sleeps). nixbuild runs three times
per scenario (``--nixbuild-runs``) and the run with the median wall time is reported: its
network backoff is random by design, so a single run would be a single draw.

    .venv/bin/python tests/perf/bench_recovery.py [--loop-sleep 5] [--loop-tries 4]
        [--work 30] [--download-s 5] [--download-mb 8] [--only oom] [--keep]

Figures are printed, never asserted. When nixbuild lacks a setting this needs, the
scenario says so instead of printing a figure.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import json
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # a script directory, not a package

SECTION = "time to success"
USUAL_LOOP_SLEEP_S = 60.0
# nixbuild's defaults for the waits it lets a user configure (nixbuild config).
WAIT_SETTINGS = {
    "network_backoff": 2.0,
    "network_backoff_cap": 600.0,
    "oom_delay": 45.0,
    "settle_delay": 5.0,
}
WORK_S = 30.0  # CPU-seconds of a successful source build (fixture work.txt)
DOWNLOAD_S = 5.0  # how long the successful download takes
DOWNLOAD_MB = 8

FETCH_FLAKE = """{
  # A fixed-output download whose URL and hash the benchmark writes before each run.
  outputs = { self }: {
    packages.x86_64-linux.fetch = import <nix/fetchurl.nix> {
      url = builtins.readFile ./url.txt;
      sha256 = builtins.readFile ./sha256.txt;
    };
  };
}
"""

LOOP = r"""
tries=0
until started=$EPOCHREALTIME; "$@"; do
  echo "$started $EPOCHREALTIME" >> "$FAILED_LOG"
  tries=$((tries + 1))
  if [ "$tries" -ge "$LOOP_TRIES" ]; then exit 1; fi
  sleep "$LOOP_SLEEP"
done
"""


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool
    wall_s: float
    wasted_s: float  # time in failed attempts
    waiting_s: float  # time between attempts, by choice
    attempts: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    installable: str
    loop_args: tuple[str, ...]  # nix options of the shell loop's `nix build`
    nixbuild_args: tuple[str, ...]  # nixbuild's options, then `--` and nix's if any
    oracle_installable: str
    oracle_args: tuple[str, ...]
    prepare: str  # what to do before each strategy: "nonce" or "download"


# -- a flaky HTTP server --------------------------------------------------------------------


class FlakyServer:
    """Serves registered files on 127.0.0.1, answering 503 at once to the first requests of
    each, then the file, throttled so that it takes ``seconds``."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.files: dict[str, tuple[bytes, int]] = {}
        self.lock = threading.Lock()
        self.seconds = seconds
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server.lock:
                    data, failures = server.files.get(self.path, (b"", -1))
                    if failures > 0:
                        server.files[self.path] = (data, failures - 1)
                if failures < 0:
                    self.send_error(404)
                elif failures > 0:
                    self.send_error(503)
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    server.send_throttled(self.wfile, data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def send_throttled(self, out: io.BufferedIOBase, data: bytes, chunk: int = 64 * 1024) -> None:
        pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
        start = time.monotonic()
        try:
            for n, piece in enumerate(pieces, 1):
                out.write(piece)
                due = start + self.seconds * n / len(pieces)
                time.sleep(max(0.0, due - time.monotonic()))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up

    def __enter__(self) -> FlakyServer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(self, path: str, data: bytes, failures: int) -> str:
        with self.lock:
            self.files[path] = (data, failures)
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}{path}"


# -- the three strategies -----------------------------------------------------------------


def run_nixbuild(scn: Scenario, root: Path, env: dict[str, str], waits: dict[str, str]) -> Result:
    run_env = dict(env, XDG_STATE_HOME=str(root / "nixbuild-state"))
    for name, value in waits.items():
        run_env["NIXBUILD_" + name.upper()] = value
    logs = root / "nixbuild-logs"
    argv = c.nixbuild_argv(
        "build",
        scn.installable,
        "--quiet",
        "--log-dir",
        str(logs),
        "--out-link",
        str(root / "result-nixbuild"),
        *scn.nixbuild_args,
    )
    wall, done = c.timed_run(argv, run_env, timeout=1800)
    summaries = list(logs.glob("*/summary.json"))
    if not summaries:
        return Result(False, wall, 0.0, 0.0, 0, f"no summary (exit {done.returncode})")
    summary = json.loads(summaries[0].read_text())
    attempts = summary["attempts"]
    wasted = sum(a["duration_s"] for a in attempts if a["diagnosis"] is not None)
    waiting, memory = measured_waits(summaries[0].parent / "events.jsonl")
    steps = " → ".join(_describe_attempt(a) for a in attempts)
    memory_text = ""
    if memory:
        memory_text = "; after OOM waited for memory " + ", ".join(f"{s:.1f} s" for s in memory)
    return Result(
        done.returncode == 0,
        wall,
        wasted,
        waiting,
        len(attempts),
        f"status {summary['status']}: {steps}{memory_text}",
    )


def measured_waits(events_file: Path) -> tuple[float, list[float]]:
    """Time from each decision to the next attempt's start (what nixbuild waited, chosen
    or measured), and the waits for memory it reports, from the run's events."""
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    waiting = 0.0
    decided: datetime | None = None
    for event in events:
        when = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
        if event["event"] == "attempt_decided":
            decided = when
        elif event["event"] == "attempt_started" and decided is not None:
            waiting += (when - decided).total_seconds()
            decided = None
    memory = [float(e["waited_s"]) for e in events if e["event"] == "memory_wait"]
    return waiting, memory


def _describe_attempt(attempt: dict[str, object]) -> str:
    where = f"{attempt['variant']} c{attempt['cores']}"
    diagnosis = attempt["diagnosis"]
    if isinstance(diagnosis, dict):
        return f"{where} {diagnosis.get('kind')}"
    return f"{where} ok"


def run_loop(scn: Scenario, root: Path, env: dict[str, str], sleep_s: float, tries: int) -> Result:
    failed_log = root / "loop-failed.log"
    failed_log.write_text("")
    nix = c.nix_build_plain(scn.installable, root / "result-loop")
    loop_env = dict(
        env, FAILED_LOG=str(failed_log), LOOP_TRIES=str(tries), LOOP_SLEEP=f"{sleep_s:g}"
    )
    wall, done = c.timed_run(
        ["bash", "-c", LOOP, "loop", *nix, *scn.loop_args], loop_env, timeout=1800
    )
    failures = [tuple(map(float, line.split())) for line in failed_log.read_text().splitlines()]
    wasted = sum(end - start for start, end in failures)
    attempts = len(failures) + (1 if done.returncode == 0 else 0)
    waiting = sleep_s * (len(failures) - (0 if done.returncode == 0 else 1))
    return Result(done.returncode == 0, wall, wasted, max(0.0, waiting), attempts)


def run_oracle(scn: Scenario, root: Path, env: dict[str, str]) -> Result:
    nix = c.nix_build_plain(scn.oracle_installable, root / "result-oracle")
    wall, done = c.timed_run([*nix, *scn.oracle_args], env, timeout=1800)
    ok = done.returncode == 0
    return Result(ok, wall, 0.0 if ok else wall, 0.0, 1)


# -- scenarios ---------------------------------------------------------------------------------


def scenarios(fixture: Path, fetch: Path) -> list[Scenario]:
    return [
        Scenario(
            "oom (fails above 2 cores)",
            f"path:{fixture}#cores",
            ("--option", "cores", "8"),
            ("--cores", "8"),
            f"path:{fixture}#cores",
            ("--option", "cores", "2"),
            "nonce",
        ),
        Scenario(
            "network (503 twice, then OK)",
            f"path:{fetch}#fetch",
            ("--option", "download-attempts", "1"),
            ("--", "--option", "download-attempts", "1"),
            f"path:{fetch}#fetch",
            ("--option", "download-attempts", "3"),
            "download",
        ),
        Scenario(
            "source always fails, -bin exists",
            f"path:{fixture}#alwaysfail",
            (),
            (),
            f"path:{fixture}#alwaysfail-bin",
            (),
            "nonce",
        ),
    ]


def prepare(
    scn: Scenario, fixture: Path, fetch: Path, server: FlakyServer, tag: str, *, size: int
) -> None:
    """A clean start: new derivations (nonce), or a new file to download (new hash)."""
    if scn.prepare == "nonce":
        c.new_nonce(fixture)
        return
    data = f"payload for {tag} at {time.time_ns()}\n".encode() + os.urandom(size)
    url = server.add(f"/{tag}-{time.time_ns()}.tar.gz", data, failures=2)
    (fetch / "url.txt").write_text(url)
    (fetch / "sha256.txt").write_text(hashlib.sha256(data).hexdigest())


def missing_settings() -> list[str]:
    from nixbuild import config

    return [name for name in WAIT_SETTINGS if name not in config.BY_NAME]


def scaled_waits(loop_sleep_s: float) -> dict[str, str]:
    """Each wait setting times loop_sleep / 60 s, rounded up to the next 0.01 s and at least
    0.01 s (never shorter than the exact scaling: the rounding does not favour nixbuild)."""
    return {
        name: f"{ceil_hundredths(v * loop_sleep_s / USUAL_LOOP_SLEEP_S):g}s"
        for name, v in WAIT_SETTINGS.items()
    }


def ceil_hundredths(seconds: float) -> float:
    # Rounded to 1e-6 first, so float noise (50.000000000001) does not add 0.01 s.
    return max(1, math.ceil(round(seconds * 100, 6))) / 100


def run(
    loop_sleep_s: float,
    loop_tries: int,
    only: Sequence[str] = (),
    keep: bool = False,
    *,
    work_s: float = WORK_S,
    download_s: float = DOWNLOAD_S,
    download_mb: int = DOWNLOAD_MB,
    nixbuild_repeats: int = 3,
) -> list[c.Row]:
    missing = missing_settings()
    if missing:
        return [
            c.Row(
                SECTION,
                "all scenarios",
                "NOT RUN",
                f"nixbuild has no setting {', '.join(missing)}: its waits cannot be shortened",
            )
        ]
    waits = scaled_waits(loop_sleep_s)
    waits_text = ", ".join(f"{k}={v}" for k, v in waits.items())
    rows = [
        c.Row(
            SECTION,
            "settings",
            f"loop sleep {loop_sleep_s:g} s, {loop_tries} tries",
            f"nixbuild waits scaled by the same factor, rounded up to 0.01 s: {waits_text} (env "
            "NIXBUILD_*); its memory polling after OOM (every 0.5 s, two readings) is not "
            "a setting and not scaled",
        ),
        c.Row(
            SECTION,
            "work",
            f"{work_s:g} CPU-s per source build, {download_mb} MiB in {download_s:g} s",
            f"source: split into $NIX_BUILD_CORES jobs, OOM after 10% of it; -bin: "
            f"{work_s / 2:g} CPU-s in one job; a 503 answers at once (fixture work.txt)",
        ),
    ]
    with (
        c.work_dir("nixbuild-bench-recovery-", keep) as root,
        FlakyServer(download_s) as srv,
    ):
        env = c.isolated_env(root / "nix")
        fixture = c.copy_flake(root / "fixture", work_txt=f"{work_s:g}")
        fetch = root / "fetch"
        fetch.mkdir()
        (fetch / "flake.nix").write_text(FETCH_FLAKE)
        for scn in scenarios(fixture, fetch):
            if only and not any(word in scn.name for word in only):
                continue
            results: dict[str, Result] = {}
            nixbuild_runs: list[Result] = []
            strategies = ["nixbuild"] * nixbuild_repeats + ["shell loop", "oracle"]
            for number, strategy in enumerate(strategies):
                work = root / f"{scn.prepare}-{len(rows)}-{number}-{strategy.replace(' ', '-')}"
                work.mkdir()
                prepare(scn, fixture, fetch, srv, work.name, size=download_mb * 1024 * 1024)
                if strategy == "nixbuild":
                    nixbuild_runs.append(run_nixbuild(scn, work, env, waits))
                elif strategy == "shell loop":
                    results[strategy] = run_loop(scn, work, env, loop_sleep_s, loop_tries)
                else:
                    results[strategy] = run_oracle(scn, work, env)
            results["nixbuild"] = median_run(nixbuild_runs)
            rows += scenario_rows(scn.name, results)
    return rows


def median_run(runs: list[Result]) -> Result:
    """The run with the median wall time; its detail names the others' times.

    nixbuild's network backoff is random by design (full jitter), so one run is one draw.
    """
    ordered = sorted(runs, key=lambda r: (not r.ok, r.wall_s))
    chosen = ordered[(len(ordered) - 1) // 2]
    if len(runs) == 1:
        return chosen
    walls = ", ".join(f"{r.wall_s:.1f}" + ("" if r.ok else " FAILED") for r in runs)
    return replace(chosen, detail=f"median of {len(runs)} runs ({walls} s); {chosen.detail}")


def scenario_rows(name: str, results: dict[str, Result]) -> list[c.Row]:
    rows = []
    for strategy, res in results.items():
        outcome = "built" if res.ok else "FAILED"
        rows.append(
            c.Row(
                SECTION,
                f"{name}: {strategy}",
                f"{outcome} in {c.fmt_s(res.wall_s)}",
                f"{res.attempts} attempt(s); wasted build {res.wasted_s:.1f} s; "
                f"waiting {res.waiting_s:.1f} s" + (f"; {res.detail}" if res.detail else ""),
            )
        )
    nb, oracle, loop = results["nixbuild"], results["oracle"], results["shell loop"]
    if nb.ok and oracle.ok:
        extra = nb.wall_s - oracle.wall_s
        working = nb.wall_s - nb.waiting_s
        loop_text = f"{loop.wall_s / oracle.wall_s:.1f}x" if loop.ok else "did not succeed"
        rows.append(
            c.Row(
                SECTION,
                f"{name}: nixbuild / oracle",
                f"{nb.wall_s / oracle.wall_s:.1f}x ({extra:+.1f} s)",
                f"of the extra, {nb.waiting_s:.1f} s are nixbuild's chosen waits and "
                f"{nb.wasted_s:.1f} s failed attempts; without the waits "
                f"{working / oracle.wall_s:.1f}x; shell loop {loop_text} (target: 1.3x)",
            )
        )
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loop-sleep", type=float, default=5.0, help="shell loop sleep in seconds [5]"
    )
    parser.add_argument("--loop-tries", type=int, default=4, help="shell loop bound [4]")
    parser.add_argument(
        "--nixbuild-runs",
        type=int,
        default=3,
        help="nixbuild runs per scenario, the median reported (its backoff is random) [3]",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    parser.add_argument(
        "--only", action="append", default=[], help="run scenarios whose name contains this"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--work",
        type=float,
        default=WORK_S,
        help=f"CPU-seconds of a successful source build [{WORK_S:g}]",
    )
    parser.add_argument(
        "--download-s",
        type=float,
        default=DOWNLOAD_S,
        help=f"seconds the successful download takes [{DOWNLOAD_S:g}]",
    )
    parser.add_argument(
        "--download-mb", type=int, default=DOWNLOAD_MB, help=f"MiB downloaded [{DOWNLOAD_MB}]"
    )
    args = parser.parse_args()
    rows = run(
        args.loop_sleep,
        args.loop_tries,
        args.only,
        args.keep,
        work_s=args.work,
        download_s=args.download_s,
        download_mb=args.download_mb,
        nixbuild_repeats=args.nixbuild_runs,
    )
    c.print_rows(rows)


if __name__ == "__main__":
    main()
