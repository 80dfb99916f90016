"""The nix command-line options ``nixbuild run`` knows, by arity, and the ones it refuses.

Arity = how many following words an option consumes. Options not listed here (and not of
the always-boolean form --no-NAME) are refused by wrapcmd.py: guessing wrong would eat an
installable. Kept apart from the parser so the tables read as data.
"""

from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


BUILD_0 = frozenset({"-k"})  # nix build -k is --keep-going; nix develop -k takes a value
COMMON_0 = _words(
    "-v --verbose --quiet --debug --show-trace --keep-failed -K --fallback --repair "
    "--impure --offline --refresh --print-build-logs -L --rebuild --keep-going "
    "--accept-flake-config --no-write-lock-file --recreate-lock-file --commit-lock-file "
    "--no-update-lock-file --no-registries --derivation --print-out-paths --stdin --sandbox "
    "--pure-eval --read-only --readonly-mode --check"
)
COMMON_1 = _words(
    "-o --out-link -f --file --expr -I --include --inputs-from --update-input "
    "--reference-lock-file --output-lock-file --store --eval-store --builders --system "
    "--profile --max-silent-time --timeout --substituters --extra-substituters "
    "--trusted-public-keys --extra-trusted-public-keys --experimental-features "
    "--extra-experimental-features --access-tokens --extra-access-tokens --log-lines "
    "--extra-platforms --system-features --extra-system-features --post-build-hook "
    "--netrc-file --connect-timeout --download-attempts --stalled-download-timeout "
    "--build-dir --arg-from-stdin"
)
COMMON_2 = _words("--override-input --override-flake --arg --argstr --arg-from-file")

# nix develop: phase flags make it non-interactive; -k/-u/-s take values there.
DEVELOP_PHASES = _words("--unpack --configure --build --check --install --installcheck")
DEVELOP_0 = frozenset({"-i", "--ignore-environment", *DEVELOP_PHASES})
DEVELOP_1 = _words("--phase -u --unset -k --keep --keep-env-var")
DEVELOP_2 = _words("--redirect -s --set-env-var")

LEGACY_0 = _words(
    "-v --verbose --quiet --show-trace --keep-failed -K --keep-going -k --fallback --repair "
    "--check --no-out-link --readonly-mode --impure -E --expr"
)
LEGACY_1 = _words(
    "-A --attr -o --out-link -I --include --max-silent-time --timeout --store --eval-store "
    "--builders --system --drv-link --add-root"
)
LEGACY_2 = _words("--arg --argstr")

CORES = frozenset({"--cores", "--option cores", "--option build-cores"})
JOBS = frozenset({"-j", "--max-jobs", "--option max-jobs", "--option build-max-jobs"})

REFUSED = {
    "--dry-run": "a dry run builds nothing, so there is nothing to supervise",
    "--json": "nixbuild writes its own JSON report (use nixbuild's --json PATH)",
    "--help": "help is not a build",
    "-h": "help is not a build",
    "--version": "a version query is not a build",
    "--stdin": "installables read from stdin cannot be read again for a retry",
    "--debugger": "the evaluation debugger is interactive",
}

OTHER_PROGRAMS = {
    "nix-shell": "nix-shell starts an interactive shell; use `nix develop -c CMD` instead",
    "nix-env": "nix-env changes a profile; build with `nix build` instead",
    "nix-store": "nix-store is not a build command nixbuild can supervise",
    "nix-instantiate": "instantiating builds nothing",
}
