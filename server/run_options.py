"""The run options every command shares: ``--set`` values (:func:`client.kge.config.parse_set_options`), ``--preset``, the run folder's name, the
run-config check before anything starts, and the common exit path of a command.

Used by ``simskip-sim`` (:mod:`server.simulation`), ``simskip-server`` (:mod:`server.cli`) and
``--refine-only`` (:mod:`server.downstream`); it imports none of them, so they import one way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from client.kge.config import PRESETS, parse_set_options, preset

__all__ = ["add_preset_option", "check_run_config", "default_run_dir", "run_command", "run_config_overrides"]


def run_config_overrides(preset_name: str | None, items: Sequence[str]) -> dict[str, Any]:
    """The command line's run-config values: preset ``preset_name`` first, then the ``--set`` items.

    :raises client.kge.config.ConfigError: for an unknown preset.
    :raises ValueError: for an item without ``=``.
    """
    return {**preset(preset_name), **parse_set_options(items)}


def add_preset_option(parser: argparse.ArgumentParser) -> None:
    """The commands' ``--preset`` option (:data:`client.kge.config.PRESETS`)."""
    parser.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="named run-config values applied before --set (small-graph: the quick start's "
        "schedule; fede-paper: FedE's published schedule; client/kge/config.py)",
    )


def default_run_dir() -> Path:
    """``runs/<UTC timestamp>`` under the current directory."""
    return Path("runs") / dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")


def check_run_config(run_config: dict[str, Any]) -> None:
    """Fail before any process starts when a key is unknown (any phase), a value is bad or a named choice
    is not one of its choices (:func:`client.kge.run_config.check_choices`)."""
    from client.kge.run_config import check_choices, load_run_configs  # heavy (torch, pykeen): not for --help

    load_run_configs(run_config)
    check_choices(run_config)


def run_command(prog: str, run: Callable[[], Path]) -> int:
    """The boundary of a command that runs ``run()`` (returning the run folder); returns the exit status.

    0 after printing ``[prog] done in N s: RUN_DIR``; 130 on Ctrl-C; 1 on any other exception,
    reported as ``[prog] error: Type: message`` on stderr. ``SystemExit`` passes through.
    """
    started = time.time()
    try:
        run_dir = run()
    except KeyboardInterrupt:
        print(f"[{prog}] interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the command's boundary: report and exit non-zero
        print(f"[{prog}] error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"[{prog}] done in {time.time() - started:.1f} s: {run_dir}", flush=True)
    return 0
