"""Which prebuilt (``-bin``) installable a run may fall back to, and whether it exists.

The fallback is derived from the installable (plan.derive_fallback) unless the user names
one or turns it off. A derived one is checked with nix only when the policy wants it: a
successful run never pays for evaluating nixpkgs twice.
"""

from __future__ import annotations

from collections.abc import Callable

from . import config as config_mod
from . import nixcmd, plan
from .errors import UsageError
from .process import CommandNotFound, run_capture


def check_fallback(nix: nixcmd.NixInfo, candidate: str, extra: tuple[str, ...]) -> bool:
    """Does the derived ``-bin`` installable exist? Asks nix to evaluate it (no build)."""
    base = candidate.partition("^")[0]
    argv = [
        *nixcmd.nix_prefix(nix),
        "eval",
        base,
        "--apply",
        "x: x ? drvPath",
        "--json",
        *nixcmd.eval_passthrough(extra),
    ]
    try:
        done = run_capture(argv, timeout=600)
    except CommandNotFound:
        return False
    return done.ok and done.stdout.strip() == "true"


def choose_fallback(
    cfg: config_mod.Config,
    target: str,
    *,
    wrapped: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[str | None, bool]:
    """(the fallback installable, whether it is derived and so still to be checked)."""
    if wrapped:  # `run` refuses --fallback; one from NIXBUILD_FALLBACK or a file is not used
        if cfg["fallback"]:
            say(f"nixbuild: `run` never falls back; fallback from {cfg.sources['fallback']} unused")
        return None, False
    if cfg["no_fallback"]:
        return None, False
    if cfg["fallback"]:
        # Checked now, not when the policy falls back to it after hours of source attempts.
        if (reason := nixcmd.check_installable(cfg["fallback"])) is not None:
            raise UsageError(f"malformed fallback {cfg['fallback']!r}: {reason}")
        return str(cfg["fallback"]), False
    candidate = plan.derive_fallback(target)
    if candidate is None or cfg["mode"] == "develop":
        return None, False  # dev shells live under devShells; a -bin sibling cannot be guessed
    # Checked only when needed (the policy decides to fall back): evaluating nixpkgs for a
    # fallback that a successful run never uses would cost every nightly run seconds.
    return candidate, True
