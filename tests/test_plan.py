"""The first attempt, the degrade ladder and the derived -bin fallback (pure)."""

from __future__ import annotations

import pytest

from nixbuild.model import AttemptSpec, Variant
from nixbuild.plan import (
    DEFAULT_MAX_JOBS,
    default_cores,
    derive_fallback,
    first_spec,
    ladder,
    lower_parallelism,
)


@pytest.mark.parametrize(
    ("installable", "expected"),
    [
        ("nixpkgs#python312Packages.torch", "nixpkgs#python312Packages.torch-bin"),
        (".#torch", ".#torch-bin"),
        ("path:/tmp/flake#demo", "path:/tmp/flake#demo-bin"),
        (
            "github:o/r?ref=v1#packages.x86_64-linux.torch",
            "github:o/r?ref=v1#packages.x86_64-linux.torch-bin",
        ),
        ("nixpkgs#torch^out", "nixpkgs#torch-bin^out"),
        ('nixpkgs#a."torch"', 'nixpkgs#a."torch-bin"'),
        ("  .#torch ", ".#torch-bin"),
    ],
)
def test_derive_fallback_appends_bin_to_the_last_attribute(installable: str, expected: str) -> None:
    assert derive_fallback(installable) == expected


@pytest.mark.parametrize(
    "installable",
    [
        "",
        ".",  # a flake's default package: no attribute to derive from
        "nixpkgs",
        ".#",
        "nixpkgs#a.b.",  # empty last component
        ".#torch-bin",  # already the prebuilt variant
        "nixpkgs#python312Packages.torch-bin",
        "/nix/store/0c0ns3r3kxl0yq9f8djcd7sqq0mfpjzh-torch-2.3",
        "/nix/store/0c0ns3r3kxl0yq9f8djcd7sqq0mfpjzh-torch.drv",
        "/nix/store/0c0ns3r3kxl0yq9f8djcd7sqq0mfpjzh-torch.drv^out",
        "./result",
        'nixpkgs#a."b.c"',  # a quoted name that is not a plain identifier
        'nixpkgs#a"b"',  # malformed quoting
    ],
)
def test_derive_fallback_gives_none_when_there_is_nothing_to_derive(installable: str) -> None:
    assert derive_fallback(installable) is None


@pytest.mark.parametrize(("usable", "expected"), [(1, 1), (2, 2), (8, 8), (64, 8), (0, 1), (-3, 1)])
def test_default_cores_caps_at_eight_and_floors_at_one(usable: int, expected: int) -> None:
    assert default_cores(usable) == expected
    assert DEFAULT_MAX_JOBS == 1


def test_ladder_halves_cores_down_to_one() -> None:
    steps = ladder(AttemptSpec(".#torch", 8, 1))
    assert [(s.cores, s.max_jobs) for s in steps] == [(8, 1), (4, 1), (2, 1), (1, 1)]
    assert all(s.installable == ".#torch" and s.variant is Variant.SOURCE for s in steps)


def test_ladder_drops_max_jobs_before_halving_cores() -> None:
    # Peak memory ~ max-jobs * cores: dropping max-jobs 4 -> 1 cuts it by 4, halving cores by 2.
    steps = ladder(AttemptSpec(".#torch", 6, 4))
    assert [(s.cores, s.max_jobs) for s in steps] == [(6, 4), (6, 1), (3, 1), (1, 1)]


def test_lower_parallelism_is_none_at_the_floor() -> None:
    assert lower_parallelism(AttemptSpec(".#x", 1, 1)) is None
    assert lower_parallelism(AttemptSpec(".#x", 1, 2)) == AttemptSpec(".#x", 1, 1)
    assert lower_parallelism(AttemptSpec(".#x", 3, 1)) == AttemptSpec(".#x", 1, 1)


def test_lower_parallelism_keeps_the_variant() -> None:
    lowered = lower_parallelism(AttemptSpec(".#x-bin", 4, 1, Variant.BIN))
    assert lowered == AttemptSpec(".#x-bin", 2, 1, Variant.BIN)


def test_first_spec_uses_defaults_without_flags_or_memory() -> None:
    assert first_spec(".#torch", usable_cpus=16) == AttemptSpec(".#torch", 8, 1)
    assert first_spec(".#torch", usable_cpus=2) == AttemptSpec(".#torch", 2, 1)


def test_first_spec_starts_where_the_last_run_succeeded_after_an_oom() -> None:
    assert first_spec(".#torch", usable_cpus=16, remembered=(4, 1)) == AttemptSpec(".#torch", 4, 1)
    # A remembered value above what this machine offers is capped by the machine.
    assert first_spec(".#torch", usable_cpus=2, remembered=(4, 1)) == AttemptSpec(".#torch", 2, 1)


def test_first_spec_explicit_options_win_over_memory() -> None:
    spec = first_spec(".#torch", usable_cpus=16, cores=6, max_jobs=2, remembered=(2, 1))
    assert spec == AttemptSpec(".#torch", 6, 2)
    bin_spec = first_spec(".#torch-bin", usable_cpus=4, variant=Variant.BIN)
    assert bin_spec == AttemptSpec(".#torch-bin", 4, 1, Variant.BIN)
