"""Preflight judgement: machine facts + thresholds + ``--mode`` → the plan, or a refusal.

The thresholds encode the common advice for heavy source builds such as PyTorch with CUDA:
at least 16 GB RAM, 20 GB free disk and 4 cores; 32 GB and 8 cores to be comfortable.
The decision tree for ``--mode auto``:

* strong (comfortable memory and cores, enough disk) → source, default parallelism;
* medium (the minimum) → source with conservative parallelism: ``max-jobs 1`` and one core
  per ``memory_per_core`` of RAM (2 GiB: a heavy C++/CUDA compile job's working set);
* weak → the ``-bin`` variant.

``--mode source`` builds from source whatever the tier (with conservative parallelism and
a warning below "strong"); ``--mode bin`` always takes the prebuilt variant. Below the
absolute floors nothing can succeed and the CLI exits 3.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import UsageError
from .model import Variant
from .probe import MachineFacts

GiB = 1024**3
MiB = 1024**2

MODES = ("auto", "source", "bin")


@dataclass(frozen=True, slots=True)
class Thresholds:
    min_memory_bytes: int = 16 * GiB
    min_disk_bytes: int = 20 * GiB
    min_cores: int = 4
    comfort_memory_bytes: int = 32 * GiB
    comfort_cores: int = 8
    memory_per_core_bytes: int = 2 * GiB
    # Absolute floors: below these even the prebuilt variant cannot be unpacked or a
    # compiler cannot run at all.
    floor_store_bytes: int = 2 * GiB
    floor_build_dir_bytes: int = 512 * MiB
    floor_memory_bytes: int = 1 * GiB

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class Assessment:
    mode: str
    tier: str  # strong | medium | weak
    variant: Variant
    cores: int | None  # None: leave nix's / the config's default
    max_jobs: int | None
    reasons: tuple[str, ...]
    warnings: tuple[str, ...]
    refusals: tuple[str, ...]

    @property
    def cannot_succeed(self) -> bool:
        return bool(self.refusals)

    def plan_text(self) -> str:
        if self.variant is Variant.BIN:
            return "use the prebuilt -bin variant"
        if self.cores is None and self.max_jobs is None:
            return "build from source with default parallelism"
        return (
            "build from source with conservative parallelism: "
            f"cores {self.cores}, max-jobs {self.max_jobs}"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "tier": self.tier,
            "variant": str(self.variant),
            "cores": self.cores,
            "max_jobs": self.max_jobs,
            "plan": self.plan_text(),
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "cannot_succeed": self.cannot_succeed,
            "refusals": list(self.refusals),
        }


def gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / GiB:.1f} GiB"


def _disk(facts: MachineFacts) -> int | None:
    known = [b for b in (facts.store_free_bytes, facts.build_free_bytes) if b is not None]
    return min(known) if known else None


def tier_of(facts: MachineFacts, t: Thresholds) -> tuple[str, tuple[str, ...]]:
    mem, cores, disk = facts.mem_total_bytes, facts.cores, _disk(facts)
    shortfalls = []
    if mem < t.min_memory_bytes:
        shortfalls.append(f"memory {gib(mem)} < {gib(t.min_memory_bytes)}")
    if disk is not None and disk < t.min_disk_bytes:
        shortfalls.append(f"free disk {gib(disk)} < {gib(t.min_disk_bytes)}")
    if cores < t.min_cores:
        shortfalls.append(f"cores {cores} < {t.min_cores}")
    if shortfalls:
        return "weak", tuple(f"below the advice for heavy source builds: {s}" for s in shortfalls)
    if mem >= t.comfort_memory_bytes and cores >= t.comfort_cores:
        return "strong", (f"comfortable: memory {gib(mem)}, {cores} cores, free disk {gib(disk)}",)
    return "medium", (
        f"meets the minimum but not comfort ({gib(t.comfort_memory_bytes)} and "
        f"{t.comfort_cores} cores): memory {gib(mem)}, {cores} cores, free disk {gib(disk)}",
    )


def conservative_cores(facts: MachineFacts, t: Thresholds) -> int:
    by_memory = facts.mem_total_bytes // max(1, t.memory_per_core_bytes)
    return max(1, min(facts.cores, by_memory))


def assess(facts: MachineFacts, thresholds: Thresholds, mode: str) -> Assessment:
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}", hint="use one of: auto, source, bin")
    tier, reasons = tier_of(facts, thresholds)
    warnings: list[str] = []
    variant = Variant.SOURCE
    cores: int | None = None
    max_jobs: int | None = None
    if mode == "bin" or (mode == "auto" and tier == "weak"):
        variant = Variant.BIN
    elif tier != "strong":
        cores, max_jobs = conservative_cores(facts, thresholds), 1
        if tier == "weak":
            warnings.append(
                "building from source below the advice: expect out-of-memory retries and "
                "a long build; variant 'bin' (NIXBUILD_VARIANT=bin) uses the prebuilt package"
            )
    if facts.mem_available_bytes < facts.mem_total_bytes // 2:
        warnings.append(
            f"only {gib(facts.mem_available_bytes)} of {gib(facts.mem_total_bytes)} memory "
            "is available right now; other programs compete with the build"
        )
    if facts.nix_options_honoured is False:
        warnings.append(facts.nix_trust_reason)
    refusals = _refusals(facts, thresholds, variant)
    return Assessment(
        mode=mode,
        tier=tier,
        variant=variant,
        cores=cores,
        max_jobs=max_jobs,
        reasons=reasons,
        warnings=tuple(warnings),
        refusals=refusals,
    )


def _refusals(facts: MachineFacts, t: Thresholds, variant: Variant) -> tuple[str, ...]:
    out = []
    if facts.nix_version is None:
        out.append("nix is not installed (or `nix --version` fails)")
    if facts.store_free_bytes is not None and facts.store_free_bytes < t.floor_store_bytes:
        out.append(
            f"free disk for the Nix store ({facts.store_dir}) is {gib(facts.store_free_bytes)}, "
            f"below the floor of {gib(t.floor_store_bytes)}"
        )
    if variant is Variant.SOURCE:
        build_free = facts.build_free_bytes
        if build_free is not None and build_free < t.floor_build_dir_bytes:
            out.append(
                f"free disk for the build directory ({facts.build_dir}) is {gib(build_free)}, "
                f"below the floor of {gib(t.floor_build_dir_bytes)}"
            )
        if facts.mem_total_bytes < t.floor_memory_bytes:
            out.append(
                f"memory {gib(facts.mem_total_bytes)} is below the floor of "
                f"{gib(t.floor_memory_bytes)} for a source build"
            )
    return tuple(out)


def thresholds_from(values: Mapping[str, Any]) -> Thresholds:
    """The advice as configured (`min_memory`, `min_disk`, `min_cores`), comfort unchanged."""
    return Thresholds(
        min_memory_bytes=int(values["min_memory"]),
        min_disk_bytes=int(values["min_disk"]),
        min_cores=int(values["min_cores"]),
    )
