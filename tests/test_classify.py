"""How the classifier decides: root cause over symptom, the first failing derivation, the
exit status and nixbuild's own observations, no verdict without proof, bounded memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterable

from nixbuild.classify import Classifier, classify, drv_name
from nixbuild.model import Evidence, ExitInfo, Kind, LogLine, Source
from nixbuild.textlog import TextLogReader

TORCH = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-python3.12-torch-2.5.1.drv"
ENV = "/nix/store/abcdfghijklmnpqrsvwxyz0123456789-python3.12-env.drv"
SRC = "/nix/store/bcdfghijklmnpqrsvwxyz0123456789a-foo-1.0.tar.gz.drv"
FOO = "/nix/store/cdfghijklmnpqrsvwxyz0123456789ab-foo-1.0.drv"


def text_lines(text: str) -> list[LogLine]:
    reader = TextLogReader()
    return [reader.line(n, raw) for n, raw in enumerate(text.splitlines(), start=1)]


def diagnose(text: str, exit: ExitInfo | None = None, external: Iterable[LogLine] = ()):  # type: ignore[no-untyped-def]
    return classify(text_lines(text), exit, tuple(external))


def test_drv_name_strips_store_directory_hash_and_suffix() -> None:
    assert drv_name(TORCH) == "python3.12-torch-2.5.1"
    assert drv_name("python3.12-torch-2.5.1") == "python3.12-torch-2.5.1"


def test_killed_compiler_beats_the_make_errors_it_causes() -> None:
    log = f"""building '{TORCH}'...
python3.12-torch-2.5.1> [ 31%] Building CXX object caffe2/CMakeFiles/torch_cpu.dir/x.cpp.o
python3.12-torch-2.5.1> g++: fatal error: Killed signal terminated program cc1plus
python3.12-torch-2.5.1> compilation terminated.
python3.12-torch-2.5.1> make[2]: *** [caffe2/CMakeFiles/torch_cpu.dir/build.make:77: x.o] Error 1
python3.12-torch-2.5.1> make: *** [Makefile:136: all] Error 2
error: builder for '{TORCH}' failed with exit code 2
error: 1 dependencies of derivation '{ENV}' failed to build"""
    diagnosis = diagnose(log, ExitInfo(status=1))
    assert diagnosis is not None
    assert diagnosis.kind is Kind.OOM
    assert diagnosis.rule == "oom.compiler-killed"
    assert diagnosis.drv == TORCH
    assert diagnosis.explanation == (
        "cc1plus was killed by the kernel — out of memory while compiling python3.12-torch-2.5.1"
    )
    assert diagnosis.evidence[0].line == 3
    assert "Killed signal terminated program cc1plus" in diagnosis.evidence[0].text
    assert any(e.line == 7 for e in diagnosis.evidence)  # nix's own verdict backs it up


def test_retried_download_then_compile_error_is_a_build_failure() -> None:
    log = f"""warning: error: unable to download 'https://c.example/x.narinfo': HTTP error 503; \
retrying in 291 ms
copying path '/nix/store/dfghijklmnpqrsvwxyz0123456789abc-src' from 'https://cache.example'...
building '{FOO}'...
foo-1.0> foo.c:3:1: error: expected ';' before '}}' token
foo-1.0> make: *** [Makefile:2: all] Error 1
error: builder for '{FOO}' failed with exit code 2"""
    diagnosis = diagnose(log, ExitInfo(status=1))
    assert diagnosis is not None
    assert (diagnosis.kind, diagnosis.rule) == (Kind.BUILD, "build.compile-error")
    assert diagnosis.drv == FOO


def test_current_nix_wording_points_at_the_builder_not_the_dependents() -> None:
    log = f"""error: Cannot build '{ENV}'.
       Reason: 1 dependency failed.
       Output paths:
         /nix/store/efghijklmnpqrsvwxyz0123456789abcd-python3.12-env
error: Cannot build '{TORCH}'.
       Reason: builder failed due to signal 9 (Killed).
       Output paths:
         /nix/store/fghijklmnpqrsvwxyz0123456789abcde-python3.12-torch-2.5.1
       Last 2 log lines:
       > [ 31%] Building CXX object x.cpp.o
       > make: *** [Makefile:136: all] Killed"""
    diagnosis = diagnose(log, ExitInfo(status=1))
    assert diagnosis is not None
    assert (diagnosis.kind, diagnosis.rule) == (Kind.OOM, "oom.nix-signal-9")
    assert diagnosis.drv == TORCH
    assert "python3.12-torch-2.5.1" in diagnosis.explanation


def test_a_successful_neighbours_output_does_not_accuse_the_failing_derivation() -> None:
    log = f"""building '{ENV}'...
building '{FOO}'...
python3.12-env> test_enospc: write error: No space left on device (expected) ... ok
foo-1.0> foo.c:3:1: error: expected ';' before '}}' token
error: builder for '{FOO}' failed with exit code 2"""
    diagnosis = diagnose(log, ExitInfo(status=1))
    assert diagnosis is not None
    assert (diagnosis.kind, diagnosis.drv) == (Kind.BUILD, FOO)


def test_network_failure_in_a_fetcher_is_network_but_in_a_sandboxed_build_is_build() -> None:
    for drv, kind, rule in [
        (SRC, Kind.NETWORK, "network.curl-error"),
        (FOO, Kind.BUILD, "build.sandboxed-network"),
    ]:
        name = drv_name(drv)
        log = f"""building '{drv}'...
{name}> curl: (6) Could not resolve host: example.org
error: builder for '{drv}' failed with exit code 1"""
        diagnosis = diagnose(log, ExitInfo(status=1))
        assert diagnosis is not None
        assert (diagnosis.kind, diagnosis.rule, diagnosis.drv) == (kind, rule, drv)


def test_internal_json_error_message_tail_lines_count_as_the_builders_output() -> None:
    # nix's error message arrives as one msg; logstream splits it into NIX lines.
    message = [
        f"error: builder for '{FOO}' failed with exit code 1;",
        "       last 2 log lines:",
        "       > OSError: [Errno 28] No space left on device",
        "       > make: *** [Makefile:2: all] Error 1",
    ]
    lines = [LogLine(n, text, Source.NIX) for n, text in enumerate(message, start=10)]
    diagnosis = classify(lines, ExitInfo(status=1))
    assert diagnosis is not None
    assert (diagnosis.kind, diagnosis.rule, diagnosis.drv) == (Kind.DISK, "disk.no-space", FOO)
    assert diagnosis.evidence[0].line == 12


def test_exit_status_zero_means_no_failure_whatever_the_log_says() -> None:
    log = "g++: fatal error: Killed signal terminated program cc1plus\nerror: something odd"
    assert diagnose(log, ExitInfo(status=0)) is None


def test_unknown_exit_needs_proof_of_failure() -> None:
    words = """pytest-suite> test_killed_children ... Killed
pytest-suite> Connection refused (expected by this test) ... ok
pytest-suite> checking ENOSPC: No space left on device is reported ... ok
pytest-suite> Hunk #1 FAILED at 3 (the patch test expects this)
warning: error: unable to download 'https://c.example/x.narinfo': HTTP error 502; retrying \
in 300 ms"""
    assert diagnose(words) is None
    assert diagnose(words + "\nerror: builder for '" + FOO + "' failed with exit code 1")


def test_interruption_wins_over_everything() -> None:
    log = "g++: fatal error: Killed signal terminated program cc1plus"
    diagnosis = diagnose(log, ExitInfo(status=None, signal=15, interrupted_by=15))
    assert diagnosis is not None
    assert (diagnosis.kind, diagnosis.rule) == (Kind.INTERRUPTED, "interrupted.signal")
    assert "SIGTERM" in diagnosis.explanation


def test_external_observations_are_the_strongest_evidence() -> None:
    log = f"""building '{TORCH}'...
python3.12-torch-2.5.1> make: *** [Makefile:136: all] Error 2
error: builder for '{TORCH}' failed with exit code 2"""
    watchdog = LogLine(
        0,
        "memory watchdog: available memory 180 MiB < 256 MiB threshold, stopped the build",
        Source.EXTERNAL,
    )
    diagnosis = diagnose(log, ExitInfo(status=1), [watchdog])
    assert diagnosis is not None
    assert (diagnosis.kind, diagnosis.rule, diagnosis.drv) == (Kind.OOM, "oom.watchdog", TORCH)
    stall = LogLine(0, "no output for 3600 s", Source.EXTERNAL)
    diagnosis = diagnose(log, ExitInfo(status=None, signal=15), [stall])
    assert diagnosis is not None
    assert (diagnosis.kind, diagnosis.rule) == (Kind.TIMEOUT, "timeout.stall")


def test_sigkill_counts_as_oom_only_with_support() -> None:
    alone = diagnose(f"building '{TORCH}'...", ExitInfo(status=None, signal=9))
    assert alone is not None
    assert (alone.kind, alone.rule) == (Kind.UNKNOWN, "unknown.killed")
    cgroup = LogLine(0, "cgroup memory.events oom_kill 1 → 2", Source.EXTERNAL)
    supported = diagnose(f"building '{TORCH}'...", ExitInfo(status=None, signal=9), [cgroup])
    assert supported is not None
    assert (supported.kind, supported.rule) == (Kind.OOM, "oom.cgroup-oom-kill")
    assert any("killed by signal 9" in e.text for e in supported.evidence)


def test_an_oom_kill_in_the_cgroup_does_not_override_a_named_cause() -> None:
    """nixbuild's cgroup may hold the user's shell and more: a kill there while a build
    fails for its own reason must not make that failure "oom" (less parallelism, -bin)."""
    cgroup = LogLine(0, "cgroup memory.events oom_kill 1 → 2", Source.EXTERNAL)
    compile_error = (
        f"building '{FOO}'...\nfoo> main.c:3:5: error: 'x' undeclared (first use in this function)"
        f"\nerror: builder for '{FOO}' failed with exit code 2"
    )
    diagnosis = diagnose(compile_error, ExitInfo(status=1), [cgroup])
    assert diagnosis is not None
    assert (diagnosis.kind, diagnosis.rule) == (Kind.BUILD, "build.compile-error")
    generic = f"building '{FOO}'...\nerror: builder for '{FOO}' failed with exit code 2"
    diagnosis = diagnose(generic, ExitInfo(status=1), [cgroup])
    assert diagnosis is not None  # the log names no cause: the kill is the best explanation
    assert (diagnosis.kind, diagnosis.rule) == (Kind.OOM, "oom.cgroup-oom-kill")


def test_a_failure_with_no_recognisable_cause_is_unknown() -> None:
    diagnosis = diagnose(f"building '{FOO}'...\nfoo> doing things", ExitInfo(status=1))
    assert diagnosis is not None
    assert (diagnosis.kind, diagnosis.rule) == (Kind.UNKNOWN, "unknown.no-evidence")


def test_the_incremental_classifier_matches_the_one_shot_function() -> None:
    log = f"""building '{FOO}'...
foo-1.0> collect2: error: ld returned 1 exit status
error: builder for '{FOO}' failed with exit code 1"""
    classifier = Classifier()
    for line in text_lines(log):
        classifier.feed(line)
    assert classifier.finish(ExitInfo(status=1)) == diagnose(log, ExitInfo(status=1))


def test_memory_stays_flat_over_a_long_noisy_log() -> None:
    classifier = Classifier()

    def feed(start: int, count: int) -> None:
        for n in range(start, start + count):
            drv = f"/nix/store/{n % 997:032d}-pkg-{n % 997}.drv"
            classifier.feed(
                LogLine(n, f"pkg> [{n}] cc -c x{n}.c -Werror=format", Source.BUILD, drv)
            )
            if n % 10 == 0:
                classifier.feed(LogLine(n, f"pkg> x{n}.c:1:1: error: oops {n}", Source.BUILD, drv))
                classifier.feed(LogLine(n, "Killed", Source.BUILD, drv))
                classifier.feed(LogLine(n, f"error: opening file '/x/{n}'", Source.NIX))

    feed(0, 5_000)
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    feed(5_000, 60_000)
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert after - before < 200_000, f"grew by {after - before} bytes"
    diagnosis = classifier.finish(ExitInfo(status=1))
    assert diagnosis is not None
    assert diagnosis.kind is Kind.OOM


def test_the_supervisors_own_evidence_lines_are_understood() -> None:
    # The exact texts nixbuild's watchdog, cgroup reader and stall detector produce.
    from nixbuild.watchdog import oom_kill_evidence, trip_evidence

    log = f"building '{TORCH}'...\nerror: builder for '{TORCH}' failed with exit code 2"
    for text, rule in [
        (trip_evidence(180 * 2**20, 256 * 2**20), "oom.watchdog"),
        (oom_kill_evidence(0, 1), "oom.cgroup-oom-kill"),
        ("stall detector: no output for 3600 s", "timeout.stall"),
    ]:
        diagnosis = diagnose(log, ExitInfo(status=1), [LogLine(0, text, Source.EXTERNAL)])
        assert diagnosis is not None
        assert diagnosis.rule == rule, text
        assert diagnosis.evidence[0] == Evidence(0, text)


def test_current_nix_build_of_cannot_build_wording_with_log_tail() -> None:
    log = f"""error: build of '{FOO}^*' failed: Cannot build '{FOO}'.
       Reason: builder failed with exit code 1.
       Output paths:
         /nix/store/dfghijklmnpqrsvwxyz0123456789abc-foo-1.0
       Last 2 log lines:
       > foo.c:1:1: error: expected identifier before numeric constant
       > make: *** [Makefile:2: all] Error 1
       For full logs, run:
         nix log {FOO}"""
    diagnosis = diagnose(log, ExitInfo(status=1))
    assert diagnosis is not None
    assert (diagnosis.rule, diagnosis.drv) == ("build.compile-error", FOO)
    assert diagnosis.evidence[0].line == 6


def test_a_plain_nix_error_before_any_build_is_nix_not_a_compiler() -> None:
    # A usage error reaches nixbuild as plain text before nix's internal-json logger starts,
    # so the stream reader cannot tell it from builder output (Source.BUILD, no drv).
    lines = [
        LogLine(1, "error: unrecognised flag '--bogus-flag'", Source.BUILD),
        LogLine(2, "Try '/usr/bin/nix --help' for more information.", Source.BUILD),
    ]
    diagnosis = classify(lines, ExitInfo(status=1))
    assert diagnosis is not None
    assert (diagnosis.kind, diagnosis.rule) == (Kind.EVAL, "eval.nix-usage")
    assert diagnosis.evidence == (Evidence(1, "error: unrecognised flag '--bogus-flag'"),)
    # Any other plain error before a build is nix's too, with its indented continuation.
    other = [
        LogLine(1, "error: getting status of '/x/default.nix': No such file", Source.BUILD),
        LogLine(2, "       … while evaluating the file", Source.BUILD),
    ]
    diagnosis = classify(other, ExitInfo(status=1))
    assert diagnosis is not None and diagnosis.rule == "eval.error-trace"


def test_a_builders_usage_error_in_a_legacy_log_is_not_nixs() -> None:
    # nix-build's plain log gives builder lines no prefix: a Rust tool's clap says "error:
    # unexpected argument" in nix's own words. A derivation failed, so nix got past its
    # command line: the usage rule must not decide.
    log = f"""building '{FOO}'...
error: unexpected argument '--frozen' found
error: builder for '{FOO}' failed with exit code 2"""
    diagnosis = diagnose(log, ExitInfo(status=1))
    assert diagnosis is not None
    assert diagnosis.kind is Kind.BUILD, diagnosis


def test_a_plain_error_line_after_a_build_started_stays_builder_output() -> None:
    lines = [
        LogLine(1, f"building '{FOO}'...", Source.NIX, FOO),
        LogLine(2, "error: expected expression", Source.BUILD),
        LogLine(3, f"error: builder for '{FOO}' failed with exit code 1", Source.NIX),
    ]
    diagnosis = classify(lines, ExitInfo(status=1))
    assert diagnosis is not None and diagnosis.rule == "build.compile-error"


def test_evidence_text_is_cut_at_500_characters_saying_how_long_the_line_was() -> None:
    long_line = "error: " + "y" * 10_000
    short_line = "error: " + "z" * 493  # exactly 500 characters: kept whole
    lines = [LogLine(1, long_line, Source.NIX), LogLine(2, f"  {short_line}  ", Source.NIX)]
    diagnosis = classify(lines, ExitInfo(status=1))
    assert diagnosis is not None
    cut, whole = diagnosis.evidence
    assert cut.text == f"{long_line[:500]}… (cut: the line has {len(long_line)} characters)"
    assert whole.text == short_line
