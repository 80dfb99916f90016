"""`nixbuild verify`: the PyTorch/CUDA check, run inside a built dev shell.

A small probe script runs in the shell's own ``python`` (``nix develop INSTALLABLE --command
python -c …``) and prints one JSON line of facts: torch's version and CUDA build, CUDA
availability and devices, whether the NVIDIA driver library can be loaded, and every torch
installation visible to the interpreter. Everything after that — the diagnosis and the
rendering — is pure functions over frozen dataclasses, so it is tested without a shell.

When CUDA is expected but unavailable, each likely cause is *checked* against those facts:
a CPU-only torch, the driver library ``libcuda.so`` not loadable (neither through
``LD_LIBRARY_PATH`` nor the loader cache), two torch builds mixed in one environment, the
devices hidden by ``CUDA_VISIBLE_DEVICES``, and CUDA failing to initialise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import process
from .errors import NixbuildError, NixMissingError

NIX_FLAKES = ("--extra-experimental-features", "nix-command flakes")
# Set for the child so the template's shellHook skips its own status line.
QUIET_HOOK_ENV = "NIXBUILD_QUIET_SHELLHOOK"
PROBE_MARK = "NIXBUILD-TORCHCHECK "
SCHEMA = 1

# Runs in the shell's python (any 3.8+, nothing but the standard library and torch).
# Facts only; judging them is done by nixbuild.
PROBE_SCRIPT = r"""
import ctypes, importlib.metadata as md, json, os, sys
facts = {"python": sys.version.split()[0], "executable": sys.executable,
         "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
         "torch_error": None, "torch_version": None, "torch_cuda": None, "torch_file": None,
         "cuda_available": False, "device_count": 0, "devices": [], "cuda_error": None}
locations = []
for entry in sys.path:
    init = os.path.join(entry or os.getcwd(), "torch", "__init__.py")
    if os.path.isfile(init):
        real = os.path.realpath(os.path.dirname(init))
        if real not in locations:
            locations.append(real)
facts["torch_locations"] = locations
dists = set()
for dist in md.distributions():
    name = (dist.metadata["Name"] or "").lower().replace("_", "-")
    if name in ("torch", "torch-bin", "pytorch"):
        # torch and torch-bin share name and version: only the location tells them apart
        where = os.path.realpath(str(getattr(dist, "_path", dist.locate_file(""))))
        dists.add("%s %s (%s)" % (dist.metadata["Name"], dist.version, where))
facts["torch_distributions"] = sorted(dists)
lib_dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
facts["ld_library_path"] = lib_dirs
facts["driver_in_ld_library_path"] = [os.path.join(d, n) for d in lib_dirs
    for n in ("libcuda.so.1", "libcuda.so") if os.path.exists(os.path.join(d, n))]
facts["driver_path"] = None
facts["driver_error"] = None
try:
    ctypes.CDLL("libcuda.so.1")
    facts["driver_path"] = "libcuda.so.1"
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "libcuda.so" in line:
                facts["driver_path"] = line.split()[-1]
                break
except OSError as exc:
    facts["driver_error"] = str(exc)
try:
    import torch
except Exception as exc:
    facts["torch_error"] = "%s: %s" % (type(exc).__name__, exc)
else:
    facts["torch_version"] = str(torch.__version__)
    facts["torch_cuda"] = torch.version.cuda
    facts["torch_file"] = torch.__file__
    try:
        facts["cuda_available"] = bool(torch.cuda.is_available())
        facts["device_count"] = int(torch.cuda.device_count()) if facts["cuda_available"] else 0
        facts["devices"] = [torch.cuda.get_device_name(i) for i in range(facts["device_count"])]
        if torch.version.cuda and not facts["cuda_available"]:
            torch.cuda.init()
    except Exception as exc:
        facts["cuda_error"] = "%s: %s" % (type(exc).__name__, exc)
print("NIXBUILD-TORCHCHECK " + json.dumps(facts), flush=True)
"""

Runner = Callable[[Sequence[str], Mapping[str, str]], process.Completed]


@dataclass(frozen=True, slots=True)
class ShellFacts:
    """What the probe saw inside the shell."""

    python: str
    executable: str
    torch_version: str | None
    torch_cuda: str | None
    torch_file: str | None
    torch_error: str | None
    cuda_available: bool
    device_count: int
    devices: tuple[str, ...]
    cuda_error: str | None
    cuda_visible_devices: str | None
    torch_locations: tuple[str, ...]
    torch_distributions: tuple[str, ...]
    ld_library_path: tuple[str, ...]
    driver_in_ld_library_path: tuple[str, ...]
    driver_path: str | None
    driver_error: str | None


@dataclass(frozen=True, slots=True)
class Check:
    """One likely cause, checked: ``applies`` says whether it explains the failure."""

    id: str
    title: str
    applies: bool
    detail: str
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    installable: str
    expect_cuda: bool
    facts: ShellFacts
    ok: bool
    checks: tuple[Check, ...] = field(default=())

    @property
    def causes(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.applies)


def shell_argv(installable: str, script: str, args: Sequence[str] = ()) -> list[str]:
    return ["nix", *NIX_FLAKES, "develop", installable, "--command", "python", "-c", script, *args]


def run_in_shell(
    installable: str,
    script: str,
    mark: str,
    args: Sequence[str] = (),
    *,
    runner: Runner | None = None,
) -> dict[str, Any]:
    """Run ``script`` with the shell's python; return the JSON it printed after ``mark``."""
    env = {**os.environ, QUIET_HOOK_ENV: "1"}
    argv = shell_argv(installable, script, args)
    try:
        done = runner(argv, env) if runner is not None else process.run_capture(argv, env=env)
    except process.CommandNotFound as exc:
        raise NixMissingError("nix is not installed or not on PATH") from exc
    payload = extract_marked_json(done.stdout, mark)
    if payload is None:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        hint = None
        if done.status == 127 or "python: command not found" in done.stderr:
            hint = "the shell has no `python` on PATH"
        raise NixbuildError(
            f"could not run the check in the shell {installable} (exit {done.status})"
            + (f":\n{tail}" if tail else ""),
            hint=hint,
        )
    return payload


def extract_marked_json(stdout: str, mark: str) -> dict[str, Any] | None:
    """The last ``MARK {json}`` line of ``stdout`` (a shellHook may print around it)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(mark):
            try:
                value = json.loads(line[len(mark) :])
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None


def _opt_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return None if value is None else str(value)


def _strs(raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = raw.get(key)
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def parse_facts(raw: Mapping[str, Any]) -> ShellFacts:
    try:
        return _parse_facts(raw)
    except (TypeError, ValueError) as exc:
        raise NixbuildError(f"the check in the shell printed malformed facts: {exc}") from exc


def _parse_facts(raw: Mapping[str, Any]) -> ShellFacts:
    return ShellFacts(
        python=str(raw.get("python", "?")),
        executable=str(raw.get("executable", "?")),
        torch_version=_opt_str(raw, "torch_version"),
        torch_cuda=_opt_str(raw, "torch_cuda"),
        torch_file=_opt_str(raw, "torch_file"),
        torch_error=_opt_str(raw, "torch_error"),
        cuda_available=raw.get("cuda_available") is True,
        device_count=int(raw.get("device_count") or 0),
        devices=_strs(raw, "devices"),
        cuda_error=_opt_str(raw, "cuda_error"),
        cuda_visible_devices=_opt_str(raw, "cuda_visible_devices"),
        torch_locations=_strs(raw, "torch_locations"),
        torch_distributions=_strs(raw, "torch_distributions"),
        ld_library_path=_strs(raw, "ld_library_path"),
        driver_in_ld_library_path=_strs(raw, "driver_in_ld_library_path"),
        driver_path=_opt_str(raw, "driver_path"),
        driver_error=_opt_str(raw, "driver_error"),
    )


def check_causes(facts: ShellFacts) -> tuple[Check, ...]:
    """Every likely cause of "CUDA unavailable", each checked against the facts."""
    cpu_only = facts.torch_version is not None and facts.torch_cuda is None
    mixed = len(facts.torch_locations) > 1 or len(facts.torch_distributions) > 1
    hidden = facts.cuda_visible_devices is not None and facts.cuda_visible_devices.strip() in (
        "",
        "-1",
    )
    searched = ":".join(facts.ld_library_path) or "(empty)"
    checks = [
        Check(
            "cpu-only-torch",
            "CPU-only torch",
            cpu_only,
            f"torch {facts.torch_version} was built without CUDA (torch.version.cuda is None)"
            if cpu_only
            else f"torch was built with CUDA {facts.torch_cuda}",
            "set cudaSupport = true in the nixpkgs config (flake.nix), or use the .#bin shell"
            if cpu_only
            else None,
        ),
        Check(
            "driver-library-missing",
            "driver library libcuda.so not found",
            facts.driver_path is None,
            "libcuda.so is not loadable: not in LD_LIBRARY_PATH "
            f"({searched}) nor in the loader cache (ldconfig): {facts.driver_error}"
            if facts.driver_path is None
            else f"libcuda loads from {facts.driver_path}",
            "install the NVIDIA driver; on NixOS enable it (hardware.nvidia) so "
            "/run/opengl-driver/lib exists, elsewhere add the directory holding the host's "
            "libcuda.so.1 (ldconfig -p | grep libcuda) to LD_LIBRARY_PATH"
            if facts.driver_path is None
            else None,
        ),
        Check(
            "mixed-torch",
            "two torch builds mixed",
            mixed,
            "more than one torch is visible: "
            + "; ".join([*facts.torch_locations, *facts.torch_distributions])
            if mixed
            else f"one torch ({facts.torch_file or 'not importable'})",
            "choose torch-bin inside the Python package set (packageOverrides), not next to "
            "a source torch; remove torch from PYTHONPATH or user site-packages"
            if mixed
            else None,
        ),
        Check(
            "devices-hidden",
            "GPUs hidden by CUDA_VISIBLE_DEVICES",
            hidden,
            f"CUDA_VISIBLE_DEVICES={facts.cuda_visible_devices!r}"
            if hidden
            else "CUDA_VISIBLE_DEVICES does not hide the GPUs",
            "unset CUDA_VISIBLE_DEVICES" if hidden else None,
        ),
    ]
    unexplained = not (cpu_only or mixed or hidden or facts.driver_path is None)
    checks.append(
        Check(
            "cuda-init-failed",
            "CUDA failed to initialise",
            unexplained and not facts.cuda_available,
            (facts.cuda_error or "torch.cuda.is_available() is False with a loadable driver")
            if unexplained
            else "not needed: explained by the causes above",
            "check `nvidia-smi`: the driver and kernel module must match, and a GPU must exist"
            if unexplained
            else None,
        )
    )
    return tuple(checks)


def judge(installable: str, facts: ShellFacts, *, expect_cuda: bool) -> Verdict:
    if facts.torch_version is None:
        missing = Check(
            "torch-missing",
            "torch is not installed",
            True,
            f"`import torch` failed: {facts.torch_error}",
            "add torch (or torch-bin) to the shell's Python packages",
        )
        return Verdict(installable, expect_cuda, facts, ok=False, checks=(missing,))
    ok = facts.cuda_available or not expect_cuda
    checks = check_causes(facts)
    if facts.cuda_available:
        # Nothing to explain; a mixed environment is still worth a warning.
        checks = tuple(c for c in checks if c.id == "mixed-torch" and c.applies)
    return Verdict(installable, expect_cuda, facts, ok=ok, checks=checks)


def verify(installable: str, *, expect_cuda: bool = True, runner: Runner | None = None) -> Verdict:
    raw = run_in_shell(installable, PROBE_SCRIPT, PROBE_MARK, runner=runner)
    return judge(installable, parse_facts(raw), expect_cuda=expect_cuda)


def render_human(verdict: Verdict) -> str:
    facts = verdict.facts
    if facts.torch_version is None:
        (cause,) = verdict.checks
        return (
            f"❌ torch is not importable in {verdict.installable} "
            f"(python {facts.python}, {facts.executable})\n   {cause.detail}\n   hint: {cause.hint}"
        )
    lines = [f"✅ PyTorch {facts.torch_version}  (python {facts.python})"]
    mixed = [c for c in verdict.causes if c.id == "mixed-torch"]
    if facts.cuda_available or not verdict.expect_cuda:
        if facts.cuda_available:
            lines.append(f"✅ CUDA {facts.torch_cuda}: available, {facts.device_count} device(s)")
            lines.extend(f"✅ GPU {i}: {name}" for i, name in enumerate(facts.devices))
        else:
            cuda = f"CUDA {facts.torch_cuda}" if facts.torch_cuda else "CUDA (CPU-only torch)"
            lines.append(f"○ {cuda}: not available (not expected: --no-expect-cuda)")
        lines.extend(f"⚠ warning: {c.title} — {c.detail}" for c in mixed)
        return "\n".join(lines)
    cuda = f"CUDA {facts.torch_cuda}" if facts.torch_cuda else "CUDA (CPU-only torch)"
    lines.append(f"❌ {cuda}: not available. Likely causes, checked:")
    for check in verdict.checks:
        mark = "✗ cause:" if check.applies else "✓ ruled out:"
        lines.append(f"   {mark} {check.title} — {check.detail}")
    for check in verdict.causes:
        if check.hint:
            lines.append(f"   fix ({check.title}): {check.hint}")
    return "\n".join(lines)


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    """The stable ``--json`` shape (``schema`` bumps on any incompatible change)."""
    facts = verdict.facts
    return {
        "schema": SCHEMA,
        "installable": verdict.installable,
        "ok": verdict.ok,
        "expect_cuda": verdict.expect_cuda,
        "python": facts.python,
        "torch_version": facts.torch_version,
        "torch_cuda": facts.torch_cuda,
        "cuda_available": facts.cuda_available,
        "device_count": facts.device_count,
        "devices": list(facts.devices),
        "driver_library": facts.driver_path,
        "torch_locations": list(facts.torch_locations),
        "causes": [{"id": c.id, "message": c.detail, "hint": c.hint} for c in verdict.causes],
        "checks": [{"id": c.id, "applies": c.applies} for c in verdict.checks],
    }
