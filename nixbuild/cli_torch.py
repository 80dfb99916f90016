"""Click commands of the PyTorch CUDA environment: ``init``, ``verify``, ``bench``.

Parsing and printing only; the logic is in ``init``, ``torchcheck`` and ``torchbench``.
Errors are raised deep as ``NixbuildError`` and turned into a message and an exit code here.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import init as init_mod
from . import torchbench, torchcheck
from .errors import ExitCode, NixbuildError

F = TypeVar("F", bound=Callable[..., Any])


def _exits_on_error(name: str) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except NixbuildError as exc:
                click.echo(f"nixbuild {name}: error: {exc}", err=True)
                sys.exit(int(exc.exit_code))

        return wrapper  # type: ignore[return-value]  # same signature as func

    return decorate


def _entering(installable: str) -> None:
    # On stderr, so --json output stays clean; a source shell may build for hours first.
    click.echo(
        f"nixbuild: running in {installable} (nix develop builds it first if needed)", err=True
    )


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option(
    "--template",
    type=click.Choice(init_mod.TEMPLATE_NAMES),
    default=init_mod.DEFAULT_TEMPLATE,
    show_default=True,
)
@click.option(
    "--python",
    "python_version",
    default=init_mod.DEFAULT_PYTHON,
    show_default=True,
    help="Python version of the shells (3.10 … 3.14).",
)
@click.option(
    "--cuda-capabilities",
    multiple=True,
    metavar="LIST",
    help="Compute capabilities to build for, e.g. 8.6,8.9 (default: all nixpkgs supports).",
)
@click.option(
    "--extra-package",
    "extra_packages",
    multiple=True,
    metavar="NAME",
    help="Another Python package (nixpkgs attribute name); pkgs.NAME for a system package.",
)
@click.option("--force", is_flag=True, help="Replace the template's files if they exist.")
@_exits_on_error("init")
def init_command(
    *,
    directory: Path,
    template: str,
    python_version: str,
    cuda_capabilities: tuple[str, ...],
    extra_packages: tuple[str, ...],
    force: bool,
) -> None:
    """Write a PyTorch CUDA project: flake, two dev shells (source, bin), nixbuild.toml."""
    python_packages, system_packages = init_mod.split_extra_packages(extra_packages)
    options = init_mod.InitOptions(
        template=template,
        python_version=python_version,
        cuda_capabilities=init_mod.parse_capabilities(cuda_capabilities),
        python_packages=python_packages,
        system_packages=system_packages,
    )
    files = init_mod.render(options)
    written = init_mod.write_project(directory, files, force=force)
    caps = ", ".join(options.cuda_capabilities) or "all (set --cuda-capabilities to build faster)"
    click.echo(
        f"nixbuild init: wrote the {template} project in {directory} "
        f"(Python {python_version}, CUDA capabilities: {caps}):"
    )
    for path in written:
        click.echo(f"  {path.relative_to(directory)}")
    if init_mod.inside_git_work_tree(directory):
        click.echo(
            "This is a git repository: `git add` these files first (flakes see only tracked files)."
        )
    click.echo(
        "flake.lock is not written: run `nix flake lock` there to pin nixpkgs.\n"
        "Next: nixbuild develop --job torch   (source build; falls back to .#bin)\n"
        "      nixbuild verify                 (PyTorch, CUDA and GPU check)"
    )


@click.command("verify")
@click.argument("installable", default=".#default")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--expect-cuda/--no-expect-cuda",
    default=True,
    show_default=True,
    help="Fail (exit 1) when CUDA is unavailable.",
)
@_exits_on_error("verify")
def verify_command(installable: str, as_json: bool, expect_cuda: bool) -> None:
    """Check PyTorch and CUDA inside the built dev shell INSTALLABLE."""
    _entering(installable)
    verdict = torchcheck.verify(installable, expect_cuda=expect_cuda)
    if as_json:
        click.echo(json.dumps(torchcheck.verdict_json(verdict), indent=2))
    else:
        click.echo(torchcheck.render_human(verdict))
    if not verdict.ok:
        sys.exit(int(ExitCode.FAILED))


@click.command("bench")
@click.option("--source", "source", default=".#default", show_default=True, metavar="INSTALLABLE")
@click.option("--bin", "binary", default=".#bin", show_default=True, metavar="INSTALLABLE")
@click.option("--device", type=click.Choice(torchbench.DEVICES), default="cuda", show_default=True)
@click.option(
    "--sizes",
    default=",".join(str(s) for s in torchbench.DEFAULT_SIZES),
    show_default=True,
    help="Matrix sizes, comma-separated.",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=torchbench.DEFAULT_ITERATIONS,
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="Print the timings as JSON.")
@_exits_on_error("bench")
def bench_command(
    *, source: str, binary: str, device: str, sizes: str, iterations: int, as_json: bool
) -> None:
    """Time matrix multiplication in the source and the -bin shell and compare."""
    size_list = torchbench.parse_sizes(sizes)
    runs = []
    for label, installable in (("source", source), ("bin", binary)):
        _entering(installable)
        runs.append(
            torchbench.run_bench(
                label, installable, sizes=size_list, iterations=iterations, device=device
            )
        )
    if as_json:
        click.echo(json.dumps(torchbench.bench_json(runs[0], runs[1]), indent=2))
    else:
        click.echo(torchbench.render_table(runs[0], runs[1], iterations))
