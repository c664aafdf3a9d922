"""The run options every command shares: ``--set`` values (:func:`client.kge.config.parse_set_options`), ``--preset``, the run folder's name and
its check (:func:`check_new_run_dir`, the output rule of :mod:`simskip_core.outputs`), the run-config check
before anything starts, and the common exit path of a command.

Used by ``simskip-sim`` (:mod:`server.simulation`), ``simskip-server`` (:mod:`server.cli`) and
``--refine-only`` (:mod:`server.downstream`); it imports none of them, so they import one way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from client.kge.config import parse_set_options
from client.kge.presets import PRESETS, preset
from simskip_core.cli_common import INPUT_ERRORS, run_main

__all__ = [
    "add_preset_option",
    "check_new_run_dir",
    "check_run_config",
    "default_run_dir",
    "run_command",
    "run_config_overrides",
]


def run_config_overrides(preset_name: str | None, items: Sequence[str]) -> dict[str, Any]:
    """The command line's run-config values: preset ``preset_name`` first, then the ``--set`` items.

    :raises client.kge.config.ConfigError: for an unknown preset.
    :raises ValueError: for an item without ``=``.
    """
    return {**preset(preset_name), **parse_set_options(items)}


def kge_run_config(preset_name: str | None, items: Sequence[str]) -> tuple[dict[str, Any], Any]:
    """The preset's values, then the ``--set`` items, with every named choice checked, and the KGE
    config read from them: ``(run config, client.kge.config.KGEConfig)``.

    :raises client.kge.config.ConfigError: / ValueError: naming the key and the value.
    """
    from client.kge.config import KGEConfig  # heavy (torch, pykeen): not for --help
    from client.kge.run_config import check_choices

    sets = run_config_overrides(preset_name, items)
    check_choices(sets)
    return sets, KGEConfig.from_run_config(sets)


def add_preset_option(parser: argparse.ArgumentParser) -> None:
    """The commands' ``--preset`` option (:data:`client.kge.presets.PRESETS`)."""
    parser.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="named run-config values applied before --set (small-graph: the quick start's "
        "schedule; fede-paper: FedE's published schedule; client/kge/presets.py)",
    )


def default_run_dir() -> Path:
    """``runs/<UTC timestamp>`` under the current directory."""
    return Path("runs") / dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")


def check_new_run_dir(run_dir: Path, *, inputs: Sequence[str | Path | None] = ()) -> Path:
    """Check the folder of a fresh run before anything is read or started (it is made only when the
    run is about to start): not an input, not inside or around one, not the current folder or an
    ancestor, and not holding an earlier run (:data:`client.kge.run_folder.RUN_RECORDS`).

    :param run_dir: the run folder (``--run-dir``).
    :param inputs: what the run reads (a dataset folder, certificate files); names that are no
        existing path (a PyKEEN dataset name) are skipped.
    :return: the resolved folder.
    :raises simskip_core.outputs.UnsafeOutputError: (an input error) naming the folder and the reason.
    """
    from client.kge.run_folder import RUN_RECORDS
    from simskip_core.outputs import check_new_folder

    return check_new_folder(
        run_dir,
        inputs=inputs,
        taken=RUN_RECORDS,
        what="--run-dir",
        hint="that is an earlier run: continue it with --resume RUN_DIR, or choose a new --run-dir",
    )


def check_run_config(run_config: dict[str, Any]) -> None:
    """Fail before any process starts when a key is unknown (any phase), a value is bad or a named choice
    is not one of its choices (:func:`client.kge.run_config.check_choices`)."""
    from client.kge.run_config import check_choices, load_run_configs  # heavy (torch, pykeen): not for --help
    from server.strategy import check_stopping  # the Flower engine's stopping rules

    settings, kge, _ = load_run_configs(run_config)
    check_choices(run_config)
    check_stopping(kge.stopping, settings.setting)


def run_command(
    prog: str,
    run: Callable[[], Path],
    input_errors: Sequence[type[BaseException]] = INPUT_ERRORS,
    parameters: Mapping[str, str] | None = None,
) -> int:
    """The boundary of a command that runs ``run()`` (returning the run folder); returns the exit status.

    0 after printing ``[prog] done in N s: RUN_DIR``; otherwise the convention of
    :func:`simskip_core.cli_common.run_main`: one line ``prog: error: message`` on stderr, exit 2 for
    ``input_errors`` (bad input), 1 for any other exception, 130 on Ctrl-C. ``SystemExit`` passes through.

    :param parameters: library parameter -> flag, rewritten in the error message
        (:func:`simskip_core.cli_common.flag_names`).
    """
    started = time.time()

    def work() -> int:
        run_dir = run()
        print(f"[{prog}] done in {time.time() - started:.1f} s: {run_dir}", flush=True)
        return 0

    return run_main(prog, work, input_errors=input_errors, parameters=parameters)
