"""``simskip-refine IN OUT [--config FILE] [--set key=value ...]``: refine an embedding file.

Reads ``.npy``, ``.pt`` (one tensor) or ``.tsv``/``.txt`` (one row per line, optional leading
label column, kept), trains SimSkip with a tqdm bar over epochs (stderr), writes the refined
matrix to OUT (format by suffix, atomically) and prints a JSON summary (loss per epoch, seconds,
``mean_relative_displacement`` and ``scale``) on stdout. One line on stderr gives the mean
relative displacement ``||f(x) - x|| / ||x||`` of the written rows (stdout stays pure JSON).
An existing OUTPUT (or ``--summary`` / ``--save-weights`` file, or labels side file) is refused
before any training unless ``--overwrite`` is given; then it is replaced atomically. An output
that is an input is refused even with ``--overwrite`` (:mod:`simskip_core.outputs`).
Exit status: 0 ok, 2 bad input or config, 1 training diverged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cli_common import INPUT_ERRORS, CommandParser, add_version, report, run_main
from .cli_common import path as path_arg
from .config import SimSkipConfig, read_config_mapping
from .controls import mean_relative_displacement
from .embedding_files import SUFFIXES, labels_side_file, read_embeddings, write_atomic, write_embeddings
from .errors import ConfigError, SimSkipError, TrainingDivergedError, WeightsMismatchError
from .outputs import UnsafeOutputError, check_file_outputs
from .trainer import SimSkipTrainer
from .validation import prepare_embeddings

__all__ = ["build_parser", "main", "parse_and_validate"]


EXAMPLES = """examples:
  simskip-refine entities.npy refined.npy
  simskip-refine entities.tsv refined.tsv --set epochs=20 --set seed=1 --summary summary.json
  simskip-refine X.pt X_refined.pt --config simskip.toml --save-weights encoder.npz
  simskip-refine entities.npy refined.npy --overwrite   # replace refined.npy from an earlier run
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``simskip-refine`` argument parser."""
    parser = CommandParser(
        prog="simskip-refine",
        description="Refine embeddings with SimSkip (contrastive learning through a skip-connected encoder).\n\n"
        "Exit status: 0 ok, 2 bad option, input or config, 1 training diverged.",
        epilog=EXAMPLES,
    )
    add_version(parser)
    parser.add_argument(
        "input", metavar="INPUT", type=path_arg, help="embeddings: .npy, .pt, .tsv or .txt (n rows x d columns)"
    )
    parser.add_argument(
        "output", metavar="OUTPUT", type=path_arg, help="refined embeddings; format by suffix (.npy, .pt, .tsv, .txt)"
    )
    parser.add_argument("--config", type=path_arg, help="JSON or TOML file of SimSkipConfig keys")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (parsed by its type); repeatable",
    )
    parser.add_argument("--summary", type=path_arg, help="also write the JSON summary to this file")
    parser.add_argument("--load-weights", type=path_arg, help="start from weights saved by --save-weights (.npz)")
    parser.add_argument("--save-weights", type=path_arg, help="save encoder and head weights (.npz, ordered names)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files (OUTPUT, --summary, --save-weights, the labels file); "
        "without it an existing one is an error. Never an input.",
    )
    return parser


def _check_file(parser: argparse.ArgumentParser, flag: str, path: Path) -> None:
    if not path.is_file():
        parser.error(f"{flag}: {path}: {'a folder, not a file' if path.is_dir() else 'no such file'}")


def _check_writable(parser: argparse.ArgumentParser, flag: str, path: Path) -> None:
    if path.is_dir():
        parser.error(f"{flag}: {path} is a folder (give a file name)")
    parent = path.parent
    if not parent.is_dir():
        parser.error(f"{flag}: folder {parent} of {path.name} does not exist")


def parse_and_validate(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check every option of ``simskip-refine`` before any training: the files it reads
    exist, the file types are known, the folders it writes to exist, and the config (``--config``,
    then ``--set``) is valid.

    :raises SystemExit: 2 with one line ``simskip-refine: error: ...`` naming the option; 0 after
        ``--help`` / ``--version``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, path in (("INPUT", args.input), ("OUTPUT", args.output)):
        if path.suffix.lower() not in SUFFIXES:
            parser.error(
                f"{flag}: unknown file type {path.suffix or '(none)'!r} of {path}; use one of {list(SUFFIXES)}"
            )
    _check_file(parser, "INPUT", args.input)
    _check_writable(parser, "OUTPUT", args.output)
    for flag, path in (("--config", args.config), ("--load-weights", args.load_weights)):
        if path is not None:
            _check_file(parser, flag, path)
    for flag, path in (("--summary", args.summary), ("--save-weights", args.save_weights)):
        if path is not None:
            _check_writable(parser, flag, path)
    try:
        config = _file_config(args)
    except (SimSkipError, OSError, ValueError) as exc:
        parser.error(f"--config: {exc}")
    try:
        config.with_overrides(args.overrides)
    except (SimSkipError, ValueError) as exc:
        parser.error(f"--set: {exc}")
    return args


def _file_config(args: argparse.Namespace) -> SimSkipConfig:
    """The config of ``--config`` (the defaults without it), before the ``--set`` overrides."""
    values = {"progress": True, **(read_config_mapping(args.config) if args.config else {})}
    try:
        return SimSkipConfig.from_dict(values)
    except ConfigError as exc:
        raise ConfigError(f"{args.config}: {exc}" if args.config else str(exc)) from exc


def _config(args: argparse.Namespace) -> SimSkipConfig:
    """The run's config: ``--config``'s keys, then the ``--set`` overrides."""
    return _file_config(args).with_overrides(args.overrides)


def _load_weights(path: Path) -> list[tuple[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return [(name, archive[name]) for name in archive.files]
    except (OSError, ValueError) as exc:
        raise WeightsMismatchError(f"{path}: cannot read weights: {exc}") from exc


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    write_atomic(path, lambda handle: handle.write((json.dumps(payload, indent=2) + "\n").encode("utf-8")))


def check_existing_outputs(outputs: dict[str, Path | None], *, overwrite: bool) -> None:
    """Refuse an output file that exists already, unless ``overwrite`` (``--overwrite``) was given.

    :param outputs: what the user typed (``"OUTPUT"``, ``"--summary"``, ...) -> the path (``None``: not asked for).
    :param overwrite: whether replacing existing files was asked for.
    :raises UnsafeOutputError: (an input error, exit 2) naming the first existing file and the flag.
    """
    if overwrite:
        return
    for name, path in outputs.items():
        if path is not None and (path.expanduser().exists() or path.expanduser().is_symlink()):
            raise UnsafeOutputError(f"{name} {path} exists; pass --overwrite to replace it")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Do the work of :func:`main`; raises :class:`SimSkipError` subclasses on bad input."""
    start = time.perf_counter()
    outputs = {
        "OUTPUT": args.output,
        "--summary": args.summary,
        "--save-weights": args.save_weights,
        "the labels file": labels_side_file(args.output, args.input),
    }
    # before any training: no output may be an input or another output, nor an existing file
    # without --overwrite
    check_file_outputs(outputs, [args.input, args.config, args.load_weights], suffixes={"OUTPUT": SUFFIXES})
    check_existing_outputs(outputs, overwrite=args.overwrite)
    config = _config(args)
    table = read_embeddings(args.input)
    prepared = prepare_embeddings(table.values, name=str(args.input))
    trainer = SimSkipTrainer(prepared.values.shape[1], config)
    if args.load_weights:
        trainer.set_weights(_load_weights(args.load_weights))
    summary: dict[str, Any] = {
        "input": str(args.input),
        "output": str(args.output),
        "rows": int(prepared.values.shape[0]),
        "columns": int(prepared.values.shape[1]),
        "device": str(trainer.device),
        "config": config.to_dict(),
    }
    fit_start = time.perf_counter()
    try:
        summary["loss_per_epoch"] = trainer.fit(table.values)
    except TrainingDivergedError as exc:
        summary.update(loss_per_epoch=exc.losses, error=str(exc))
        exc.summary = summary
        raise
    fit_seconds = time.perf_counter() - fit_start
    refined = trainer.transform(table.values)
    summary["scale"] = trainer.scale
    summary["mean_relative_displacement"] = mean_relative_displacement(table.values, refined)
    text_output = args.output.suffix.lower() in {".tsv", ".txt"}
    write_embeddings(args.output, refined, table.labels if text_output else None)
    if table.labels is not None and not text_output:
        # A binary matrix cannot carry labels: keep them next to it rather than drop them.
        labels_path = labels_side_file(args.output, args.input)
        write_atomic(labels_path, lambda handle: handle.write(("\n".join(table.labels) + "\n").encode("utf-8")))
        summary["labels_file"] = str(labels_path)
    if args.save_weights:
        weights = trainer.get_weights()
        write_atomic(args.save_weights, lambda handle: np.savez(handle, **dict(weights)))
        summary["weights_file"] = str(args.save_weights)
    summary["seconds"] = {
        "fit": fit_seconds,
        "per_epoch": trainer.epoch_seconds,
        "total": time.perf_counter() - start,
    }
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``simskip-refine``; returns the exit status (0 ok, 2 bad input, 1 diverged)."""
    args = parse_and_validate(argv)

    def work() -> int:
        try:
            summary = run(args)
            status = 0
        except TrainingDivergedError as exc:
            report("simskip-refine", str(exc))
            summary, status = getattr(exc, "summary", {"error": str(exc), "loss_per_epoch": exc.losses}), 1
        if "mean_relative_displacement" in summary:
            print(
                f"simskip-refine: mean relative displacement ||f(x) - x|| / ||x|| = "
                f"{summary['mean_relative_displacement']:.6g} ({summary['output']})",
                file=sys.stderr,
            )
        if args.summary:
            _write_json(args.summary, summary)
        print(json.dumps(summary, indent=2))
        return status

    return run_main("simskip-refine", work, input_errors=(*INPUT_ERRORS, SimSkipError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())
