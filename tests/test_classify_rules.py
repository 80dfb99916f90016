"""Table tests: every rule has lines it must match and near-misses it must not.

A near-miss is a line a careless keyword matcher would accuse: failure words inside test
names, warnings of successful builds, nix's retried-download warnings, the same text from
the wrong source. Each positive example is real wording (nix 2.8, current nix, nixpkgs
tools, compilers); see tests/corpus for whole logs.
"""

from __future__ import annotations

import pytest

from nixbuild.classify import RULES, Role, matching_rules
from nixbuild.model import LogLine, Source

N, B, E = Source.NIX, Source.BUILD, Source.EXTERNAL
DRV = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-foo-1.0.drv"
STORE = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz"
LQ, RQ = "\u2018", "\u2019"  # the curly quotes of nix 1.x and 2.3 messages

Example = tuple[Source, str]

TABLE: dict[str, tuple[list[Example], list[Example]]] = {
    "interrupted.signal": (
        [(E, "interrupted: SIGTERM (signal 15)")],
        [(E, "the download was interrupted: retrying"), (B, "interrupted: SIGINT")],
    ),
    "oom.watchdog": (
        [(E, "memory watchdog: available memory 180 MiB < 256 MiB threshold, stopped the build")],
        [(B, "memory watchdog: available memory 180 MiB < 256 MiB threshold")],
    ),
    "oom.cgroup-oom-kill": (
        [
            (E, "cgroup memory.events oom_kill 1 → 2"),
            (E, "cgroup memory.events oom_kill 0 -> 1"),
            (E, "Out of memory: Killed process 4242 (cc1plus)"),
        ],
        [(E, "cgroup memory.events oom_kill 0"), (B, "cgroup memory.events oom_kill 1 → 2")],
    ),
    "timeout.stall": (
        [(E, "no output for 3600 s"), (E, "stall detector: no output for 90s")],
        [(B, "no output for 3600 s"), (E, "no output forwarded")],
    ),
    "oom.exit-sigkill": (
        [
            (E, "nix was killed by signal 9 (SIGKILL)"),
            (B, "make[3]: *** [x.o] Error 137"),
            (N, f"error: builder for '{DRV}' failed with exit code 137;"),
        ],
        [(B, "make: *** [all] Error 1370"), (E, "nix exited with status 1")],
    ),
    "hash.fixed-output-mismatch": (
        [
            (N, f"error: hash mismatch in fixed-output derivation '{DRV}':"),
            (N, f"hash mismatch in fixed-output derivation '{STORE}-foo.tar.gz':"),
            (N, f"output path '{STORE}-foo' has sha256 hash 'abc' when 'def' was expected"),
            (N, "error: NAR hash mismatch in input 'github:a/b', expected 'x' but got 'y'"),
        ],
        [
            (B, "3/3 Test #3: hash_mismatch_detection ..........   Passed    0.01 sec"),
            (B, f"hash mismatch in fixed-output derivation '{DRV}':"),
        ],
    ),
    "hash.specified-got": (
        [
            (N, "         specified: sha256-oPly/SWMtFTivgVe12WBNI/U34WmMWSs+SS7t9s2ypI="),
            (N, "  wanted: sha256:1jfk5a33f01g2a68igdkwxnc9rkhz7mfg3zg25r6agib7scjbgj3"),
            (N, "            got:    sha256-x3MwaM53vqCBBieT+AcRZWF+TSWe9asdIgQgDDj5Yf0="),
        ],
        [
            (B, "got: sha256-x3MwaM53vqCBBieT+AcRZWF+TSWe9asdIgQgDDj5Yf0="),
            (N, "copying path 'specified: x'"),
        ],
    ),
    "timeout.max-silent-time": (
        [
            (N, f"error: building of '{DRV}' timed out after 1 seconds of silence"),
            (N, f"building of '{DRV}' timed out after 3600 seconds of silence"),
        ],
        [
            (B, "test_stream timed out after 5 seconds of silence"),
            (N, f"building of '{DRV}' timed out after 1800 seconds"),
        ],
    ),
    "timeout.build-timeout": (
        [
            (N, f"building of '{DRV}' timed out after 1800 seconds"),
            (N, f"error: building of '{DRV}' timed out after 60 seconds"),
        ],
        [
            (N, f"building of '{DRV}' timed out after 1 seconds of silence"),
            (B, "test_slow timed out after 30 seconds"),
        ],
    ),
    "oom.nix-signal-9": (
        [
            (N, f"error: builder for '{DRV}' failed due to signal 9 (Killed)"),
            (N, "       Reason: builder failed due to signal 9 (Killed)."),
        ],
        [
            (N, f"error: builder for '{DRV}' failed due to signal 11 (Segmentation fault)"),
            (B, "worker failed due to signal 9 (Killed) as the test expects"),
        ],
    ),
    "eval.nix-usage": (
        [
            (N, "error: unrecognised flag '--bogus-flag'"),
            (N, "error: unrecognized option '--bogus'"),
            (N, "error: unknown flag '--bogus'"),
            (N, "error: unexpected argument 'b'"),
            (N, "error: flag '--option' requires 2 argument(s)"),
            (N, "error: flag '--option' requires 2 argument(s), but only 1 were given"),
            (N, "error: '-o' requires an argument"),
            (N, "error: --arg requires two arguments"),
            (N, "error: 'biuld' is not a recognised command"),
            (N, "error: more arguments are required"),
            (N, "error: no operation specified"),
        ],
        [
            (B, "error: unrecognised flag '--bogus-flag'"),
            (N, "error: function 'f' called with unexpected argument 'cuda'"),
            (N, "warning: unknown setting 'bogus'"),
            (N, "error: derivation 'x' requires non-existent output 'dev'"),
            (B, "gcc: error: unrecognized command-line option '-mbogus'"),
        ],
    ),
    "eval.syntax-error": (
        [(N, "error: syntax error, unexpected '}', expecting ';'")],
        [(B, "parse.y: syntax error, unexpected '}' in test input, as expected")],
    ),
    "eval.undefined-variable": (
        [
            (N, "error: undefined variable 'boolToString' at /x/lib/types.nix:552:42"),
            (N, "       error: undefined variable 'inputs'"),
        ],
        [
            (B, "error: undefined variable 'x' (from the test's own interpreter)"),
            (N, "warning: undefined variable 'x' is shadowed"),
        ],
    ),
    "eval.attribute-missing": (
        [
            (N, "error: attribute 'torch' missing"),
            (N, "error: flake 'path:/x' does not provide attribute 'packages.x86_64-linux.y'"),
        ],
        [(N, "evaluating attribute set"), (B, "error: attribute 'x' missing")],
    ),
    "eval.infinite-recursion": (
        [(N, "       error: infinite recursion encountered")],
        [(B, "test_detects_infinite_recursion PASSED")],
    ),
    "eval.refused-package": (
        [
            (
                N,
                f"error: Package {LQ}ShellCheck-0.7.0{RQ} in /x/hackage.nix:17 is marked as "
                "broken, refusing to evaluate.",
            ),
            (
                N,
                f"error: Package {LQ}cuda-12{RQ} in /x.nix:3 has an unfree license "
                f"({LQ}unfree{RQ}), refusing to evaluate.",
            ),
        ],
        [
            (N, "note: the option foo is marked as deprecated"),
            (B, "Package x in y is marked as broken, refusing to evaluate."),
        ],
    ),
    "eval.evaluation-error": (
        [
            (N, "error: value is null while a set was expected"),
            (N, "error: cannot coerce a set to a string"),
            (N, "error: assertion 'cudaSupport -> cudatoolkit != null' failed"),
            (N, "error: function 'anonymous lambda' called with unexpected argument 'cuda'"),
        ],
        [(B, "assertion 'x' failed"), (N, "evaluating file '/x/flake.nix'")],
    ),
    "oom.compiler-killed": (
        [
            (B, "> g++: fatal error: Killed signal terminated program cc1plus"),
            (B, "collect2: fatal error: ld terminated with signal 9 [Killed]"),
            (B, "torch> g++: internal compiler error: Killed (program cc1plus)"),
            (B, "clang-16: error: unable to execute command: Killed"),
            (
                B,
                "error: could not compile `foo` (lib) (signal: 9, SIGKILL: kill)",
            ),
        ],
        [
            (B, "tests/test_kill.py::test_child_Killed_signal_9 PASSED"),
            (B, "Killed signal handler installed"),
        ],
    ),
    "oom.out-of-memory": (
        [
            (B, "virtual memory exhausted: Cannot allocate memory"),
            (B, "terminate called after throwing an instance of 'std::bad_alloc'"),
            (B, "MemoryError"),
            (B, "foo> Out of memory!"),
            (
                B,
                "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory",
            ),
            (B, "Exception in thread main java.lang.OutOfMemoryError: Java heap space"),
        ],
        [
            (B, "tests/test_oom.py::test_handles_MemoryError PASSED"),
            (B, "checking for memory.h... yes"),
            (B, "MEMORY LEAK: <frozen runpy>:198: size=550 B (+550 B), count=10 (+10)"),
        ],
    ),
    "disk.no-space": (
        [
            (
                B,
                "> x.c:5224:1: fatal error: error writing to /build/cc.s: No space left on device",
            ),
            (B, "tar: write error: No space left on device"),
            (B, "mkdir: cannot create directory '/nix/store/x': No space left on device"),
            (B, "OSError: [Errno 28] No space left on device"),
            (B, "/bin/bash: line 1: echo: write error: No space left on device"),
            (N, "error: writing to file: No space left on device"),
            (B, "cp: error writing 'x': Disk quota exceeded"),
        ],
        [
            (B, "tests/test_disk.py::test_reports_no_space_left_on_device PASSED"),
            (B, "checking ENOSPC: No space left on device is reported correctly ... ok"),
        ],
    ),
    "disk.nix-lack-of-space": (
        [(N, "note: build failure may have been caused by lack of free disk space")],
        [(B, "note: build failure may have been caused by lack of free disk space")],
    ),
    "oom.shell-killed": (
        [
            (B, "Killed"),
            (B, f"{STORE}-stdenv-linux/setup: line 1300: 490128 Killed        ./Setup build"),
            (B, "make: *** [Makefile:12: all] Killed"),
        ],
        [(B, "Killed 3 zombie processes"), (B, "test_child_Killed_signal_9 PASSED")],
    ),
    "unknown.nix-privileges": (
        [
            (N, "error: cloning builder process: Operation not permitted"),
            (N, "error: opening lock file '/nix/var/nix/db/big-lock': Permission denied"),
        ],
        [
            (B, "cp: cannot create regular file 'x': Permission denied"),
            (N, "warning: setting permissions: Operation not permitted"),
        ],
    ),
    "unknown.store-corruption": (
        [
            (B, f"invalid ownership on file `{STORE}-automake/bin/aclocal'"),
            (B, f"source: {STORE}-stdenv-linux/setup: cannot execute binary file"),
            (N, "error: database disk image is malformed"),
        ],
        [(B, "./test-arm: cannot execute binary file")],
    ),
    "network.ssh-builder": (
        [
            (N, "cannot build on 'ssh-ng://b': error: failed to start SSH connection to 'b'"),
            (B, "ssh: connect to host builder port 22: Connection refused"),
            (N, "error: cannot connect to 'ssh://builder'"),
        ],
        [(B, "Connection to github.com closed."), (B, "test ssh: the suite passed")],
    ),
    "build.require-file": (
        [(B, "Unfortunately, we cannot download file PureRef-1.11.1_x64.Appimage automatically.")],
        [(B, "we can download files automatically")],
    ),
    "build.http-client-error": (
        [
            (N, "error: unable to download 'https://x/y.tar.gz': HTTP error 404"),
            (B, "curl: (22) The requested URL returned error: 404 Not Found"),
        ],
        [
            (N, "error: unable to download 'https://x/y': HTTP error 429"),
            (N, "error: unable to download 'https://x/y': HTTP error 503"),
        ],
    ),
    "network.download-failed": (
        [
            (N, "error: unable to download 'http://127.0.0.1:1/x': Couldn't connect to server (7)"),
            (
                N,
                f"error: unable to download {LQ}http://x/p.tgz{RQ}: Couldn't resolve host name (6)",
            ),
        ],
        [
            (
                N,
                "warning: error: unable to download 'https://c/x.narinfo': HTTP error 502; retrying"
                " in 329 ms",
            ),
            (
                B,
                "^[[Bwarning: error: unable to download 'http://x': Timeout; retrying in 21 ms",
            ),
        ],
    ),
    "network.no-mirror": (
        [(B, "error: cannot download szip-2.1.1.tar.gz from any mirror")],
        [(B, "trying the next mirror")],
    ),
    "network.retried-download": (
        [
            (N, "warning: error: unable to download 'x': HTTP error 502; retrying in 329 ms"),
            (B, "Warning: Transient problem: timeout Will retry in 1 seconds. 3 retries left."),
        ],
        [(B, "retrying the flaky test once")],
    ),
    "network.fetcher-marker": (
        [
            (B, "trying https://example.org/x.tar.gz"),
            (B, f"exporting https://github.com/a/b (rev abc) into {STORE}-b"),
            (B, f"Initialized empty Git repository in {STORE}-src/.git/"),
        ],
        [
            (B, "Initialized empty Git repository in /build/source/.git/"),
            (B, "trying to link with -lfoo"),
        ],
    ),
    "network.curl-error": (
        [
            (B, "curl: (6) Could not resolve host: tug.org"),
            (B, "curl: (7) Failed to connect to 127.0.0.1 port 1: Connection refused"),
            (B, "curl: (22) The requested URL returned error: 502"),
        ],
        [
            (B, "curl: (22) The requested URL returned error: 404"),
            (B, "curl: (23) Failed writing body"),
        ],
    ),
    "network.git-unreachable": (
        [
            (
                B,
                "> fatal: unable to access 'https://github.com/a/b/': Could not resolve host: "
                "github.com",
            )
        ],
        [(B, "fatal: not a git repository (or any of the parent directories): .git")],
    ),
    "network.connection-error": (
        [
            (
                B,
                "npm error request to https://registry.npmjs.org/x failed, reason: getaddrinfo "
                "EAI_AGAIN registry.npmjs.org",
            ),
            (B, "Temporary failure in name resolution"),
            (B, "dial tcp: lookup proxy.golang.org: no such host"),
        ],
        [
            (B, "tests/test_net.py::test_retry_on_Connection_reset_by_peer PASSED"),
            (B, "Connection: keep-alive"),
        ],
    ),
    "build.sandboxed-network": (
        [
            (B, "getaddrinfo EAI_AGAIN registry.npmjs.org"),
            (B, "curl: (6) Could not resolve host: example.org"),
        ],
        [(B, "test_retry_on_Connection_reset_by_peer PASSED")],
    ),
    "unknown.platform-unavailable": (
        [
            (
                N,
                "error: a 'aarch64-linux' with features {big-parallel} is required to build "
                f"'{DRV}', but I am a 'aarch64-darwin' with features {{}}",
            ),
            (N, "       Reason: required system or feature not available"),
        ],
        [(N, "warning: required system feature 'kvm' not declared")],
    ),
    "build.patch-failed": (
        [
            (B, "Hunk #1 FAILED at 8."),
            (B, "1 out of 1 hunk FAILED -- saving rejects to file x.rej"),
            (B, "can't find file to patch at input line 5"),
        ],
        [(B, "Hunk #2 succeeded at 40 (offset 3 lines).")],
    ),
    "build.compile-error": (
        [
            (B, "foo> foo.c:12:5: error: 'x' undeclared (first use in this function)"),
            (B, "error[E0425]: cannot find value `x` in this scope"),
            (B, "src/a.cpp:3:10: fatal error: b.h: No such file or directory"),
        ],
        [
            (B, "gcc -Werror=format-security -c foo.c -o foo.o"),
            (B, "foo.c:12:5: warning: unused variable 'x'"),
        ],
    ),
    "build.link-error": (
        [
            (B, "foo.o: undefined reference to `bar'"),
            (B, "collect2: error: ld returned 1 exit status"),
            (B, "/usr/bin/ld: cannot find -lcuda"),
        ],
        [(B, "checking for library containing dlopen... none required")],
    ),
    "build.test-failure": (
        [
            (B, "=================================== FAILURES ==================================="),
            (B, "FAIL: test-foo"),
            (B, "> # FAIL:  1"),
            (B, "Failed Tests (1):"),
            (B, "The following tests FAILED:"),
            (B, "--- FAIL: TestX (0.00s)"),
            (B, "test result: FAILED. 3 passed; 1 failed"),
            (B, "E   AssertionError"),
            (B, "2 tests failed"),
        ],
        [
            (B, "100% tests passed, 0 tests failed out of 3"),
            (B, "# FAIL:  0"),
            (B, "XFAIL: test-bar"),
            (B, "tests/test_fail.py::test_failure_words PASSED"),
            (B, "PASS: test-fail-handling"),
        ],
    ),
    "build.missing-command": (
        [(B, f"{STORE}-bash-5.2/bin/bash: gcc: command not found")],
        [(B, "checking that a command not found handler works... yes")],
    ),
    "unknown.killed": (
        [(E, "nix was killed by signal 9 (SIGKILL)")],
        [(E, "nix exited with status 1"), (B, "nix was killed by signal 9 (SIGKILL)")],
    ),
    "build.builder-failed": (
        [
            (N, f"error: builder for '{DRV}' failed with exit code 2;"),
            (N, "       Reason: builder failed with exit code 1."),
            (N, f"builder for {LQ}{DRV}{RQ} failed with exit code 1"),
        ],
        [
            (N, f"error: 1 dependencies of derivation '{DRV}' failed to build"),
            (N, "       Reason: 1 dependency failed."),
        ],
    ),
    "build.tool-failed": (
        [
            (B, "make: *** [Makefile:136: all] Error 2"),
            (B, "ninja: build stopped: subcommand failed."),
            (B, "FAILED: foo.o"),
            (B, "CMake Error at CMakeLists.txt:3 (message):"),
            (B, "error: command 'gcc' failed with exit status 1"),
        ],
        [
            (B, "make[1]: Leaving directory '/build/source'"),
            (B, "make: Nothing to be done for 'all'."),
        ],
    ),
    "build.nix-build-failed": (
        [(N, f"error: build of '{DRV}' failed")],
        [(N, f"building '{DRV}'..."), (B, f"error: build of '{DRV}' failed")],
    ),
    "eval.error-trace": (
        [
            (N, "       … while evaluating the attribute 'value'"),
            (N, "       … while calling the 'head' builtin"),
        ],
        [(B, "… while evaluating tests"), (N, "error: something while evaluating")],
    ),
    "unknown.nix-error": (
        [(N, "error: opening file '/nix/var/nix/x': No such file or directory")],
        [
            (N, "error (ignored): error: cannot unlink '/x'"),
            (N, "error:"),
            (N, "warning: error: unable to download 'x': HTTP error 502; retrying in 9 ms"),
        ],
    ),
}


def test_every_rule_has_examples_and_near_misses() -> None:
    ids = [rule.id for rule in RULES]
    assert len(ids) == len(set(ids)), "rule ids must be unique"
    assert set(TABLE) == set(ids)
    for positives, near_misses in TABLE.values():
        assert positives
        assert near_misses


def test_every_rule_is_well_formed() -> None:
    for rule in RULES:
        assert rule.keywords, rule.id
        assert rule.sources, rule.id
        assert rule.id.split(".")[0] in {k.value for k in type(rule.kind)}, rule.id
        if rule.role is Role.CAUSE:
            assert rule.explanation.format_map(
                {"name": "x", "detail": "d", "program": "p", "code": "1", "seconds": "2"}
            ), rule.id
            assert "{name}" in rule.explanation or rule.kind.value in {"eval", "unknown"}


CASES = [
    (rule_id, source, text, expected)
    for rule_id, (positives, near_misses) in TABLE.items()
    for expected, examples in ((True, positives), (False, near_misses))
    for source, text in examples
]


@pytest.mark.parametrize(("rule_id", "source", "text", "expected"), CASES)
def test_rule_matches_its_examples_and_not_its_near_misses(
    rule_id: str, source: Source, text: str, expected: bool
) -> None:
    matched = rule_id in matching_rules(LogLine(1, text, source))
    assert matched == expected, f"{rule_id} {'missed' if expected else 'falsely matched'}: {text}"


def test_the_prefilter_lets_every_keyword_through_wherever_it_stands() -> None:
    from nixbuild.classify import _PREFILTER  # the prefilter is an implementation detail

    for source, prefilter in _PREFILTER.items():
        for keyword in prefilter.keywords():
            for text in (keyword, f"x{keyword}", f"{keyword}y", f"a/b -Werror=x {keyword} tail"):
                assert prefilter.pattern.search(text), (source, keyword, text)
        assert prefilter.pattern.search("cc -O2 -Wall -c main.c -o main.o") is None
