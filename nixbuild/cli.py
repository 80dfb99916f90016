"""Command-line surface. Parses, builds a request, calls the supervisor, maps to an exit code.

No logic lives here beyond turning options into values: see runner.py for how a request
is prepared and supervisor.py for the loop. Errors are raised deep and become exit codes
only in ``main`` ("raise deep, exit at the edge").
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import click

from . import __version__
from .errors import ExitCode, NixbuildError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = """\b
Exit codes:
  0    built (the summary says whether the -bin fallback was used)
  1    failed for a deterministic reason after the policy ran out
  2    usage or configuration error
  3    preflight refused (nix missing, not enough memory or disk)
  75   transient failures (network, disk, timeout, deadline) used up the retries;
       try again later
  130  interrupted by SIGINT, 143 by SIGTERM, 129 by SIGHUP (the terminal closed)
"""


class WholeNumber(click.IntRange):
    """click's integer (optionally in a range), in ASCII digits only.

    int() also reads '٣' (Arabic-Indic digits) and '1_000', and fails on thousands of
    digits with a message about Python's limits; nixbuild's own parser reads neither.
    """

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            from .config import is_whole_number, whole_number

            if not is_whole_number(value):
                self.fail(f"{value!r} is not a valid integer.", param, ctx)
            try:
                value = whole_number(value)
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        return super().convert(value, param, ctx)


# `-n` of history and service logs: at least one, and few enough for SQLite and a terminal.
HOW_MANY = WholeNumber(1, 100_000)


def run_options(func: F) -> F:
    """Options shared by build, develop, run and demo. Each has an env twin NIXBUILD_<NAME>."""
    options = [
        click.option(
            "--cores",
            type=WholeNumber(),
            help="nix `cores`: compiler jobs per build [min(8, CPUs)]",
        ),
        click.option("--max-jobs", type=WholeNumber(), help="nix `max-jobs`: builds at once [1]"),
        click.option("--job", help="a named job from the config file ([jobs.NAME])"),
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False),
            help="config file [./nixbuild.toml, else ~/.config/nixbuild/config.toml]",
        ),
        click.option("--log-dir", help="where run directories go [./logs]"),
        click.option(
            "--out-link",
            help="GC root for the result [./result; develop: a profile in the state dir]",
        ),
        click.option(
            "--fallback", help="prebuilt installable to fall back to (e.g. nixpkgs#…torch-bin)"
        ),
        click.option(
            "--no-fallback", is_flag=True, default=None, help="never fall back to a -bin variant"
        ),
        click.option(
            "--max-attempts", type=WholeNumber(), help="attempts in all, fallback included [6]"
        ),
        click.option(
            "--deadline", help="start no attempt after, and stop at, this time of day (HH:MM)"
        ),
        click.option("--max-duration", help="stop the whole run after this long (45m, 2h30m)"),
        click.option(
            "--stall-timeout", help="stop an attempt silent and without progress this long"
        ),
        click.option(
            "--gc", is_flag=True, default=None, help="garbage-collect the store when the disk fills"
        ),
        click.option(
            "--fresh", is_flag=True, help="ignore what past runs learned (adaptive start)"
        ),
        click.option(
            "-q", "--quiet", is_flag=True, default=None, help="only progress and the result"
        ),
        click.option(
            "--variant",
            type=click.Choice(["source", "bin", "auto"]),
            help="source [default], the prebuilt -bin fallback, or auto (by the machine)",
        ),
        click.option("--on-success", metavar="CMD", help="shell command run when the run succeeds"),
        click.option("--on-failure", metavar="CMD", help="shell command run when the run fails"),
        click.option("--json", "json", metavar="PATH", help="write the run summary (JSON) here"),
        click.option("--junit", metavar="PATH", help="write a JUnit XML report here"),
        click.option(
            "--ci-format",
            type=click.Choice(["github", "gitlab", "buildkite", "plain"]),
            help="CI output flavour [detected from GITHUB_ACTIONS, GITLAB_CI, …]",
        ),
        click.option(
            "--fail-on-fallback",
            is_flag=True,
            default=None,
            help="exit 1 when only the -bin fallback could be built",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


class LazyGroup(click.Group):
    """A group whose commands from other modules are imported only when run.

    `nixbuild --help` and every build would otherwise import the classifier's rule table,
    sh (and with it asyncio), the systemd and torch modules: a quarter of a second.
    """

    # name → (module, attribute, one-line help shown in `nixbuild --help`)
    lazy: ClassVar[dict[str, tuple[str, str, str]]] = {
        "classify": ("cli_classify", "classify_command", "Say why a saved Nix build log failed."),
        "service": ("cli_service", "service_group", "The nightly systemd user service and timer."),
        "doctor": ("cli_service", "doctor_command", "Machine and Nix facts, and the plan."),
        "init": ("cli_torch", "init_command", "Write a PyTorch CUDA project (source and -bin)."),
        "verify": ("cli_torch", "verify_command", "Check PyTorch and CUDA inside a dev shell."),
        "bench": ("cli_torch", "bench_command", "Time matmul in the source and the -bin shell."),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, attr, _ = self.lazy[cmd_name]
            module = importlib.import_module(f"{__package__}.{module_name}")
            command = getattr(module, attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy:
                rows.append((name, self.lazy[name][2]))
            elif (command := super().get_command(ctx, name)) is not None:
                rows.append((name, command.get_short_help_str(limit=formatter.width)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(__version__, prog_name="nixbuild")
def cli() -> None:
    """Run long Nix builds unattended: bounded parallelism, a diagnosis for every
    failure, retries with backoff and lower parallelism, and the -bin fallback."""


def _split_installable(
    installable: str | None, nix_args: Sequence[str]
) -> tuple[str | None, tuple[str, ...]]:
    # `nixbuild build -- --impure` leaves click no way to tell the installable from nix args.
    if installable is not None and installable.startswith("-"):
        return None, (installable, *nix_args)
    return installable, tuple(nix_args)


@cli.command(epilog=EXIT_CODES_HELP, context_settings={"ignore_unknown_options": False})
@click.argument("installable", required=False)
@click.argument("nix_args", nargs=-1, type=click.UNPROCESSED)
@run_options
def build(installable: str | None, nix_args: tuple[str, ...], **opts: Any) -> int:
    """Supervised `nix build INSTALLABLE` [.#default].

    Extra nix arguments go after `--` and pass through untouched:
    `nixbuild build .#torch -- --impure --show-trace`.
    """
    from .runner import run_supervised

    installable, extra = _split_installable(installable, nix_args)
    return run_supervised("build", installable, extra, (), opts)


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("installable", required=False)
@click.argument("nix_args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--command", "-c", "command", help="run this shell command inside the dev shell once built"
)
@run_options
def develop(
    installable: str | None, nix_args: tuple[str, ...], command: str | None, **opts: Any
) -> int:
    """Realise and pin the dev shell of INSTALLABLE [.#default], unattended.

    Nothing interactive starts: the shell's closure is built and kept as a profile (a GC
    root), so entering it later with `nix develop PROFILE` is instant. With --command, that
    command runs inside the shell once it is built (via bash -c).
    """
    from .runner import run_supervised

    installable, extra = _split_installable(installable, nix_args)
    cmd = ("bash", "-c", command) if command else ()
    return run_supervised("develop", installable, extra, cmd, opts)


@cli.command(epilog=EXIT_CODES_HELP, context_settings={"ignore_unknown_options": True})
@click.argument("nix_command", nargs=-1, type=click.UNPROCESSED, required=True)
@run_options
def run(nix_command: tuple[str, ...], **opts: Any) -> int:
    """Supervise a nix command line as written in a CI script.

    `nixbuild run -- nix build -L .#checks.x86_64-linux.foo` keeps your arguments and adds
    bounded cores/max-jobs, the JSON log format and supervision. Accepted: `nix build …`,
    `nix develop … --command CMD…` (the shell is built under supervision, then CMD runs
    once) and `nix-build …`. Anything nixbuild cannot honour is refused (exit 2).
    """
    from .runner import run_supervised
    from .wrapcmd import parse_wrapped

    if opts.get("fallback"):
        raise click.UsageError("--fallback is not supported with `run`: use `nixbuild build`")
    wrapped = parse_wrapped(nix_command)
    for notice in wrapped.notices:
        click.echo(f"nixbuild: {notice}", err=True)
    return run_supervised("build", None, (), (), opts, wrapped=wrapped)


@cli.command(epilog=EXIT_CODES_HELP)
@run_options
def demo(**opts: Any) -> int:
    """Build the embedded demo flake under supervision (no network, no nixpkgs)."""
    from .demorun import run_demo

    return run_demo(opts)


@cli.command("config")
@click.option("--job", help="show the values for this job")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="config file to read"
)
def show_config(job: str | None, config_path: str | None) -> int:
    """Print the effective configuration and where each value came from."""
    from .showinfo import describe_config

    click.echo(describe_config(job, config_path))
    return 0


@cli.command()
@click.option("--job", help="only runs of this job")
@click.option("--installable", help="only runs of this installable")
@click.option(
    "-n",
    "--limit",
    type=HOW_MANY,
    default=20,
    show_default=True,
    help="how many runs",
)
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="config file to read"
)
def history(job: str | None, installable: str | None, limit: int, config_path: str | None) -> int:
    """List past runs from the ledger, newest first."""
    from .showinfo import show_history

    click.echo(show_history(job, installable, limit, config_path))
    return 0


def _escaped(text: str) -> str:
    """``repr``-style, with the bytes that are not UTF-8 as ``\\xff`` (Python keeps them as
    lone surrogates, which fail only later, when written to a file or a log)."""
    body = "".join(
        f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff" else repr(c)[1:-1] for c in text
    )
    return f"'{body}'"


def _refuse_non_utf8(argv: Sequence[str], environ: Mapping[str, str]) -> None:
    """Exit 2 before anything is built or written when an argument or a NIXBUILD_* value is
    not valid UTF-8: run directories, logs, the ledger and the reports all need UTF-8."""
    bad = [(f"argument {i}", arg) for i, arg in enumerate(argv, 1)]
    bad += [
        (f"environment variable {k}", v) for k, v in environ.items() if k.startswith("NIXBUILD_")
    ]
    for what, text in bad:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            click.echo(
                f"nixbuild: error: {what} ({_escaped(text)}) is not valid UTF-8: "
                "nixbuild needs UTF-8 paths and arguments",
                err=True,
            )
            sys.exit(ExitCode.USAGE)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    _refuse_non_utf8(argv, os.environ)
    try:
        result = cli.main(args=argv, prog_name="nixbuild", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("nixbuild: interrupted", err=True)
        sys.exit(ExitCode.SIGINT)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.USAGE if exc.exit_code == 2 else exc.exit_code)
    except NixbuildError as exc:
        click.echo(f"nixbuild: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("nixbuild: interrupted", err=True)
        sys.exit(ExitCode.SIGINT)
    sys.exit(int(result) if isinstance(result, int) else 0)
