"""Which CI runs us: detection from the environment and the ``--ci-format`` choices.

Apart from ciformat.py (the renderers) so that a build outside CI can decide it needs no
renderer without importing them (they and report.py cost ≈25 ms of start-up).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from .errors import UsageError


class Flavor(enum.StrEnum):
    GITHUB = "github"
    GITLAB = "gitlab"
    BUILDKITE = "buildkite"
    PLAIN = "plain"  # a CI we do not know: plain lines, no markup
    TERMINAL = "terminal"  # not in CI: the console decides (colours, redraws)


CI_FORMAT_CHOICES: tuple[str, ...] = ("github", "gitlab", "buildkite", "plain")


def parse_flavor(text: str) -> Flavor:
    """The ``--ci-format`` value; anything else is a usage error."""
    value = text.strip().lower()
    if value not in CI_FORMAT_CHOICES:
        raise UsageError(
            f"unknown CI format {text!r}", hint=f"choose one of: {', '.join(CI_FORMAT_CHOICES)}"
        )
    return Flavor(value)


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no")


def detect_ci(environ: Mapping[str, str], override: str | None = None) -> Flavor:
    """Which CI runs us, from the variables each one sets; ``override`` (--ci-format) wins."""
    if override:
        return parse_flavor(override)
    if environ.get("GITHUB_ACTIONS") == "true":
        return Flavor.GITHUB
    if _truthy(environ.get("GITLAB_CI")):
        return Flavor.GITLAB
    if _truthy(environ.get("BUILDKITE")):
        return Flavor.BUILDKITE
    if _truthy(environ.get("CI")):
        return Flavor.PLAIN
    return Flavor.TERMINAL
