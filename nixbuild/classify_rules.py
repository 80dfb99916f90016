"""The ordered rule table the classifier applies (see classify.py for how it is used).

Order is the policy: the first CAUSE rule with evidence that concerns the failing
derivation decides. External observations come first (nixbuild's own watchdogs and
signals; not the cgroup's OOM-kill counter, see its rule), then nix's final messages (hash,
timeout, SIGKILL, its command line, evaluation), then root causes found in build logs
(memory, disk, broken environment, network), then ordinary build failures, and last nix
errors nothing else explains. A root cause is listed before its
symptoms: "Killed signal terminated program cc1plus" before "make: *** Error 1", a full disk
before the download or compile error it provoked.

Every pattern is tried only on lines that contain one of its ``keywords`` (a cheap
substring prefilter), so adding a rule costs nothing on ordinary build output.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .model import Kind, Source


class Role(enum.Enum):
    CAUSE = "cause"  # may decide the diagnosis
    SUPPORT = "support"  # only adds evidence to a diagnosis of the same kind
    CONTEXT = "context"  # marks a derivation as a fetcher (network access is legitimate)


@dataclass(frozen=True, slots=True)
class Rule:
    """One classification rule. ``explanation`` is a template: {name} is the failing
    derivation's name; {detail}, {program}, {code}, {seconds} come from the pattern's
    named groups (a trailing digit in a group name is ignored: ``detail2`` fills {detail})."""

    id: str
    kind: Kind
    sources: frozenset[Source]
    pattern: re.Pattern[str]
    explanation: str
    keywords: tuple[str, ...]
    fatal: bool = True  # the line alone shows something failed (used when the exit is unknown)
    role: Role = Role.CAUSE
    fetch: bool | None = None  # True/False: only when the failing drv is / is not a fetcher
    also: tuple[str, ...] = ()  # ids of rules whose lines make useful extra evidence
    # Decides only when no derivation failed: nix stopped before building anything.
    before_builds: bool = False


N = frozenset({Source.NIX})
B = frozenset({Source.BUILD})
E = frozenset({Source.EXTERNAL})
NB = N | B
ALL = N | B | E

# Nix has quoted paths with '…', with curly quotes (U+2018/U+2019) and with `…' over the years.
Q = r"['\u2018`\"]"
QC = r"['\u2019`\"]"
QT = r"[^'\u2018\u2019`\"]"  # a character inside quotes


def _dns_or_connect(g: str = "") -> str:
    return (
        rf"(?P<detail{g}>Could not resolve host(?:name)?:? ?\S*|Couldn't resolve host name"
        r"|Temporary failure in name resolution|Name or service not known"
        r"|getaddrinfo \S*(?:EAI_AGAIN|ENOTFOUND)\S*|\b(?:EAI_AGAIN|ENOTFOUND)\b|no such host"
        r"|Network is unreachable|Connection refused|Connection timed out|Connection reset by peer"
        r"|TLS handshake timeout|Failed to connect to \S+)"
    )


def _curl(g: str = "") -> str:
    return (
        rf"curl: \((?P<code{g}>5|6|7|16|18|28|35|52|55|56|92)\) (?P<detail{g}>.*)"
        rf"|curl: \(22\) The requested URL returned error: (?P<code{g}0>5\d\d|429)"
    )


def _git(g: str = "") -> str:
    return (
        rf"fatal: unable to access {Q}{QT}+{QC}: (?P<detail{g}>.*)"
        r"|fatal: Could not read from remote"
    )


_DNS_KEYWORDS = (
    "resolve",
    "name resolution",
    "Name or service",
    "EAI_AGAIN",
    "ENOTFOUND",
    "no such host",
    "unreachable",
    "Connection ",
    "handshake",
    "Failed to connect",
)


def _rule(  # noqa: PLR0917 - positional arguments keep the table below readable
    rule_id: str,
    kind: Kind,
    sources: frozenset[Source],
    pattern: str,
    explanation: str,
    keywords: tuple[str, ...],
    *,
    fatal: bool = True,
    role: Role = Role.CAUSE,
    fetch: bool | None = None,
    also: tuple[str, ...] = (),
    before_builds: bool = False,
) -> Rule:
    return Rule(
        rule_id,
        kind,
        sources,
        re.compile(pattern),
        explanation,
        keywords,
        fatal,
        role,
        fetch,
        also,
        before_builds,
    )


# fmt: off
# (The table is laid out by hand: one rule per paragraph reads better than one argument per line.)
RULES: tuple[Rule, ...] = (
    # ---- nixbuild's own observations and signals: the strongest evidence --------------
    _rule("interrupted.signal", Kind.INTERRUPTED, E, r"^interrupted: (?P<detail>.+)",
          "the build of {name} was interrupted: nixbuild received {detail}", ("interrupted",)),
    _rule("oom.watchdog", Kind.OOM, E, r"memory watchdog:? ?(?P<detail>.*)",
          "nixbuild's memory watchdog stopped the build of {name}: {detail}", ("memory watchdog",)),
    _rule("timeout.stall", Kind.TIMEOUT, E, r"no output for (?P<seconds>\d+(?:\.\d+)?) ?s",
          "{name} printed nothing for {seconds} s, so nixbuild's stall detector stopped it",
          ("no output for",)),
    _rule("oom.exit-sigkill", Kind.OOM, ALL,
          r"exit code 137\b|Error 137\b|exited with status 137\b|killed by signal 9\b",
          "", ("137", "signal 9"), role=Role.SUPPORT),
    # ---- nix's own final messages ------------------------------------------------------
    _rule("hash.fixed-output-mismatch", Kind.HASH, N,
          rf"hash mismatch in fixed-output derivation\s+{Q}(?P<detail>{QT}+){QC}"
          r"|NAR hash mismatch in input"
          rf"|output path {Q}{QT}+{QC} has \w+ hash {Q}{QT}*{QC} when {Q}{QT}*{QC} was expected",
          "the fixed-output derivation {name} produced a different hash than the one declared "
          "— the source changed upstream or the declared hash is wrong",
          ("hash mismatch", "was expected")),
    _rule("hash.specified-got", Kind.HASH, N, r"^(?:specified|wanted|got):\s+\S+", "",
          ("specified:", "wanted:", "got:"), role=Role.SUPPORT),
    _rule("timeout.max-silent-time", Kind.TIMEOUT, N,
          r"timed out after (?P<seconds>\d+) seconds? of silence",
          "{name} printed nothing for {seconds} seconds and nix stopped it (max-silent-time)",
          ("timed out after",)),
    _rule("timeout.build-timeout", Kind.TIMEOUT, N,
          r"timed out after (?P<seconds>\d+) seconds?(?!\w| of silence)",
          "{name} ran longer than the {seconds}-second build timeout and nix stopped it",
          ("timed out after",)),
    _rule("oom.nix-signal-9", Kind.OOM, N, r"failed due to signal 9\b",
          "the builder of {name} was killed by SIGKILL — most likely by the kernel's OOM killer",
          ("signal 9",), also=("oom.shell-killed",)),
    # ---- nix's command line, then evaluation ------------------------------------------
    # A usage error is nix refusing its arguments (an extra argument after `--`, a wrapped
    # command's typo): it fails identically every time, so it is an eval kind (stop at once).
    # Wording of nix 2.3 to current: libutil/args.cc, libmain/shared.cc, nix-build.cc. Only
    # before any derivation failed: a builder's own tool says "error: unexpected argument"
    # too (clap), and a legacy nix-build log gives its lines no prefix to tell them apart.
    _rule("eval.nix-usage", Kind.EVAL, N,
          r"^error: (?P<detail>(?:unrecogni[sz]ed|unknown) (?:flag|option) .*"
          r"|unexpected argument .*"
          rf"|flag {Q}{QT}+{QC} requires .*"
          rf"|{Q}?--?[\w-]+{QC}? requires (?:an|two) arguments?"
          rf"|{Q}{QT}+{QC} is not a recogni[sz]ed command"
          r"|more arguments are required|no operation specified)",
          "nix rejected its command line: {detail} — fix the nix arguments (after `--`, or "
          "in the wrapped command); retrying cannot help",
          ("unrecognised", "unrecognized", "unknown flag", "unknown option",
           "unexpected argument", "requires", "recognised command", "recognized command",
           "more arguments", "no operation"), before_builds=True),
    _rule("eval.syntax-error", Kind.EVAL, N, r"syntax error, (?P<detail>unexpected .*)",
          "evaluation failed: syntax error, {detail}", ("syntax error",)),
    _rule("eval.undefined-variable", Kind.EVAL, N, rf"undefined variable {Q}(?P<detail>{QT}+)",
          "evaluation failed: undefined variable '{detail}'", ("undefined variable",)),
    _rule("eval.attribute-missing", Kind.EVAL, N,
          rf"attribute {Q}(?P<detail>{QT}+){QC}(?: in selection path {Q}{QT}*{QC})? missing"
          rf"|does not provide attribute {Q}(?P<detail2>{QT}+)",
          "evaluation failed: attribute '{detail}' is missing", ("attribute",)),
    _rule("eval.infinite-recursion", Kind.EVAL, N, r"infinite recursion encountered",
          "evaluation failed: infinite recursion encountered", ("infinite recursion",)),
    _rule("eval.refused-package", Kind.EVAL, N,
          r"(?P<detail>(?:Package )?\S+ in \S+ is marked as (?:broken|insecure|unsupported)"
          r"|has an unfree license|is not available on the requested hostPlatform"
          r"|refusing to evaluate)",
          "evaluation refused the package: {detail}",
          ("refusing to evaluate", "is marked as", "unfree license", "hostPlatform")),
    _rule("eval.evaluation-error", Kind.EVAL, N,
          r"(?P<detail>value is (?:an? \w+|null) while an? \w+ was expected|cannot coerce .*"
          r"|called with unexpected argument .*|called without required argument .*"
          r"|assertion .* failed|evaluation aborted with the following error message.*"
          r"|is not a function|cannot find flake .*)",
          "evaluation failed: {detail}",
          ("was expected", "cannot coerce", "argument", "assertion", "evaluation aborted",
           "is not a function", "cannot find flake")),
    # ---- memory, disk, broken environment: root causes in the build log ---------------
    _rule("oom.compiler-killed", Kind.OOM, NB,
          r"Killed signal terminated program (?P<program>\S+)"
          r"|(?P<program2>[\w.+-]+) terminated with signal 9\b"
          r"|internal compiler error: Killed \(program (?P<program3>\S+)\)"
          r"|error: unable to execute command: Killed|(?P<program4>\S+) died due to signal 9"
          r"|signal: 9, SIGKILL",
          "{program} was killed by the kernel — out of memory while compiling {name}",
          ("Killed", "signal 9", "SIGKILL"), also=("oom.shell-killed",)),
    _rule("oom.out-of-memory", Kind.OOM, NB,
          r"(?P<detail>virtual memory exhausted|std::bad_alloc|^(?:\w+\.)*MemoryError\b"
          r"|^Out of memory!?\s*$|[Oo]ut of memory allocating|Cannot allocate memory"
          r"|fatal error: out of memory|JavaScript heap out of memory|OutOfMemoryError"
          r"|memory allocation of \d+ bytes failed|LLVM ERROR: out of memory|ghc: out of memory"
          r"|[Mm]emory exhausted)",
          "{name} ran out of memory ({detail})",
          ("memory", "Memory", "bad_alloc")),
    _rule("disk.no-space", Kind.DISK, NB,
          r"(?i)(?:error|cannot|can't|fatal|fail|unable|could not).*?"
          r"(?P<detail>no space left on device|disk quota exceeded)"
          r"|(?P<detail2>no space left on device|disk quota exceeded).*(?:error|fail)",
          "the disk filled up while building {name} ({detail})",
          ("space left", "Space Left", "SPACE LEFT", "quota exceeded", "Quota Exceeded")),
    _rule("disk.nix-lack-of-space", Kind.DISK, N, r"lack of free disk space",
          "nix reports that the build of {name} probably failed for lack of free disk space",
          ("free disk space",)),
    _rule("oom.shell-killed", Kind.OOM, NB,
          r"^Killed\s*$|: line \d+: +\d+ Killed\b|^\s*\d+ Killed\s"
          r"|make(?:\[\d+\])?: \*\*\* .*Killed",
          "a process of {name} was killed by SIGKILL (\"Killed\") — most likely out of memory",
          ("Killed",), fatal=False),
    _rule("unknown.nix-privileges", Kind.UNKNOWN, N,
          r"(?P<detail>\S.*: (?:Operation not permitted|Permission denied))\s*$",
          "nix lacks a privilege it needs ({detail}) — a sandbox, container or store "
          "permission problem, not a fault of {name}",
          ("not permitted", "Permission denied")),
    _rule("unknown.store-corruption", Kind.UNKNOWN, NB,
          r"(?P<detail>invalid ownership on file .*"
          r"|/\S*/[0-9a-z]{32}-\S*: cannot execute binary file|database disk image is malformed"
          r"|path \S+ is not valid|NAR \S+ is corrupt)",
          "a store path used by {name} looks corrupt or unusable ({detail}) — check the store "
          "with `nix-store --verify --check-contents`",
          ("invalid ownership", "cannot execute binary", "malformed", "is not valid", "corrupt")),
    # ---- network -----------------------------------------------------------------------
    _rule("network.ssh-builder", Kind.NETWORK, NB,
          rf"(?P<detail>failed to start SSH connection to {Q}{QT}+{QC}|ssh: connect to host .*"
          rf"|ssh: Could not resolve hostname .*|cannot connect to {Q}(?:ssh(?:-ng)?://){QT}+{QC})",
          "nix could not reach the remote builder for {name} ({detail})",
          ("SSH connection", "ssh: ", "cannot connect to")),
    _rule("build.require-file", Kind.BUILD, NB,
          r"cannot download file (?P<detail>\S+) automatically",
          "{name} is a file you must download by hand and add to the store (requireFile); "
          "it fails every time until you do", ("automatically",), fatal=False),
    _rule("build.http-client-error", Kind.BUILD, NB,
          rf"(?:unable to download {Q}{QT}+{QC}: HTTP error|The requested URL returned error:)"
          r" (?P<code>4(?!08|29)\d\d)",
          "the download for {name} failed with HTTP {code}: the URL is gone or refused, so "
          "retrying will not help", ("HTTP error", "returned error")),
    _rule("network.download-failed", Kind.NETWORK, NB,
          rf"unable to download {Q}(?P<url>{QT}+){QC}: (?!.*; retrying in)(?P<detail>.+)",
          "a download for {name} failed: {detail}", ("unable to download",)),
    _rule("network.no-mirror", Kind.NETWORK, NB, r"cannot download (?P<detail>\S+) from any mirror",
          "{detail} could not be downloaded from any mirror while building {name}",
          ("from any mirror",)),
    _rule("network.retried-download", Kind.NETWORK, NB,
          r"retrying in \d+ ms|Transient problem: .* Will retry", "",
          ("retrying in", "Transient problem"), role=Role.SUPPORT),
    _rule("network.fetcher-marker", Kind.NETWORK, NB,
          r"^trying (?:https?|ftp)://|^exporting \S+ \(rev |^Unable to checkout"
          r"|^Initialized empty Git repository in /\S*/[0-9a-z]{32}-|^downloading " + Q,
          "", ("trying ", "exporting ", "Unable to checkout", "Initialized empty", "downloading"),
          role=Role.CONTEXT),
    _rule("network.curl-error", Kind.NETWORK, B, _curl(),
          "the download for {name} failed: {detail}", ("curl: (",), fatal=False, fetch=True),
    _rule("network.git-unreachable", Kind.NETWORK, B, _git(),
          "git could not reach the remote while fetching {name}: {detail}",
          ("unable to access", "Could not read from remote"), fatal=False, fetch=True),
    _rule("network.connection-error", Kind.NETWORK, B, _dns_or_connect(),
          "the fetcher {name} could not reach the network: {detail}", _DNS_KEYWORDS,
          fatal=False, fetch=True),
    _rule("build.sandboxed-network", Kind.BUILD, B,
          f"{_curl('1')}|{_git('2')}|{_dns_or_connect('3')}",
          "{name} tried to reach the network inside the build sandbox ({detail}); that fails "
          "every time — fetch its dependencies in a fixed-output derivation",
          ("curl: (", "unable to access", "Could not read from remote", *_DNS_KEYWORDS),
          fatal=False, fetch=False),
    _rule("unknown.platform-unavailable", Kind.UNKNOWN, N,
          rf"(?P<detail>{Q}{QT}+{QC} with features \{{[^}}]*\}} is required to build .*"
          r"|required system or feature not available)",
          "no available machine can build {name}: {detail}",
          ("is required to build", "required system or feature")),
    # ---- ordinary build failures -------------------------------------------------------
    _rule("build.patch-failed", Kind.BUILD, B,
          r"(?P<detail>Hunk #\d+ FAILED.*|\d+ out of \d+ hunks? FAILED.*"
          r"|can't find file to patch.*)",
          "a patch no longer applies while building {name} ({detail})",
          ("FAILED", "can't find file to patch"), fatal=False),
    _rule("build.compile-error", Kind.BUILD, B,
          r"^(?P<detail>[^\s:][^:]*:\d+(?::\d+)?: (?:fatal )?error: .*)"
          r"|^(?P<detail2>error(?:\[E\d+\])?: .*)"
          r"|^(?P<detail3>\S+\(\d+\)(?: \(col\. \d+\))?: (?:catastrophic )?error.*)",
          "{name} failed to compile: {detail}", ("error:", "error["), fatal=False,
          also=("build.tool-failed",)),
    _rule("build.link-error", Kind.BUILD, B,
          r"(?P<detail>undefined reference to .*|ld returned \d+ exit status|ld: cannot find -l\S+"
          r"|linker command failed with exit code \d+|undefined symbol: .*)",
          "{name} failed to link: {detail}",
          ("undefined reference", "ld returned", "cannot find -l", "linker command failed",
           "undefined symbol"), also=("build.tool-failed",)),
    _rule("build.test-failure", Kind.BUILD, B,
          r"^=+ (?:\d+ )?FAILURES? =+$|^=+ .*\b[1-9]\d* failed\b.*=+$|^FAIL: |^# FAIL: +[1-9]"
          r"|^Failed Tests \(\d+\)|^\s*Failed: +[1-9]|The following tests FAILED|^--- FAIL: "
          r"|\b[1-9]\d* tests? failed|^E +\w+(?:Error|Exception)\b|^FAILED \S+::"
          r"|test result: FAILED",
          "tests failed while building {name}",
          ("FAIL", "Fail", "failed", "E  "), also=("build.tool-failed",)),
    _rule("build.missing-command", Kind.BUILD, B,
          r"(?P<detail>\S+: command not found)\s*$",
          "a command the build of {name} needs is missing: {detail}", ("command not found",),
          fatal=False),
    # The cgroup's OOM-kill counter proves a kill in nixbuild's cgroup, which it may share with
    # the user's shell and anything else started from it: it decides only when the log names
    # no specific cause, so an unrelated kill cannot turn a compile or network error into oom.
    _rule("oom.cgroup-oom-kill", Kind.OOM, E,
          r"oom_kill\s+(?P<detail>\d+\s*(?:→|->)\s*\d+)"
          r"|Out of memory: Killed process \d+ \((?P<program>[^)]+)\)",
          "the kernel's OOM killer killed a process while building {name} (oom_kill {detail})",
          ("oom_kill", "Out of memory: Kill")),
    _rule("unknown.killed", Kind.UNKNOWN, E, r"^nix was killed by signal (?P<detail>\d+.*)",
          "nix was killed from outside by signal {detail} while building {name}, and the log "
          "shows no sign of memory exhaustion", ("killed by signal",)),
    _rule("build.builder-failed", Kind.BUILD, N,
          rf"builder for {Q}{QT}+{QC} failed "
          r"(?:with exit code (?P<code>\d+)|due to signal (?P<code2>\d+))"
          r"|Reason: builder failed (?:with exit code (?P<code3>\d+)|due to signal (?P<code4>\d+))"
          rf"|build of {Q}{QT}+{QC} on {Q}{QT}+{QC} failed",
          "the builder of {name} failed (status {code}) and its log names no more specific cause",
          ("builder for", "builder failed", "failed with exit code"),
          also=("build.tool-failed",)),
    _rule("build.tool-failed", Kind.BUILD, B,
          r"(?P<detail>make(?:\[\d+\])?: \*\*\* .*Error \d+|ninja: build stopped: .*|^FAILED: .*"
          r"|CMake Error.*|error: command .* failed.*|returned a non-zero code: \d+"
          r"|Error: Process completed with exit code \d+|^\+ exitCode=[1-9]\d*|runHook failureHook"
          r"|npm ERR! code \S+|^npm error code \S+)",
          "the build of {name} failed ({detail})",
          ("***", "ninja:", "FAILED", "CMake Error", "error: command", "non-zero code",
           "exit code", "exitCode=", "failureHook", "npm ERR!", "npm error")),
    _rule("build.nix-build-failed", Kind.BUILD, N, rf"^error: build of {Q}{QT}+{QC}.* failed",
          "the build of {name} failed and the log names no more specific cause", ("build of",)),
    _rule("eval.error-trace", Kind.EVAL, N, r"^(?:…|\.\.\.) (?P<detail>while .*)",
          "evaluation failed ({detail})", ("while ",), also=("unknown.nix-error",)),
    _rule("unknown.nix-error", Kind.UNKNOWN, N, r"^error: (?P<detail>\S.*)",
          "nix failed with an error nixbuild does not recognise: {detail}", ("error:",)),
)
# fmt: on

# Names of fixed-output (fetcher) derivations: sources, archives, vendored dependencies.
FETCHER_NAME = re.compile(
    r"(?i)(?:\.(?:tar(?:\.\w+)?|tgz|tbz2?|txz|zip|gz|bz2|xz|zst|lz|7z|jar|whl|gem|deb|rpm"
    r"|crate|patch|diff|appimage|dmg|iso|narinfo)"
    r"|-(?:source|src|vendor|deps|go-modules|npm-deps|yarn-deps|cargo-deps|pnpm-deps"
    r"|node-modules|git|hg|svn))$"
)
