"""`nixbuild config` and `nixbuild history`: what nixbuild would use, and what it did."""

from __future__ import annotations

from . import config as config_mod
from .ledger import LEDGER_FILENAME, Ledger, describe_run
from .runner import state_dir_of


def describe_config(job: str | None, config_path: str | None) -> str:
    cfg = config_mod.load({}, config_path=config_path, job=job)
    state_dir = state_dir_of(cfg)
    rows = [f"config file: {cfg.file or '(none found)'}"]
    if cfg.jobs:
        rows.append(f"jobs: {', '.join(cfg.jobs)}" + (f" (showing {cfg.job})" if cfg.job else ""))
    rows.append(f"state dir: {state_dir}")
    rows.append(f"ledger: {state_dir / LEDGER_FILENAME}")
    width = max(len(opt.name) for opt in config_mod.OPTIONS)
    for opt in config_mod.OPTIONS:
        value = cfg.values[opt.name]
        shown = (
            "(unset)"
            if value is None
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
        rows.append(f"{opt.name.ljust(width)}  {shown:<24} from {cfg.sources[opt.name]}")
    return "\n".join(rows)


def show_history(
    job: str | None, installable: str | None, limit: int, config_path: str | None
) -> str:
    cfg = config_mod.load({}, config_path=config_path)
    path = state_dir_of(cfg) / LEDGER_FILENAME
    if not path.exists():
        return f"no runs recorded yet ({path} does not exist)"
    with Ledger(path) as ledger:
        rows = ledger.history(job=job, installable=installable, limit=limit)
    if not rows:
        return "no matching runs"
    return "\n".join(describe_run(row) for row in rows)
