"""``simskip-refine IN OUT [--config FILE] [--set key=value ...]``: refine an embedding file.

Reads ``.npy``, ``.pt`` (one tensor) or ``.tsv``/``.txt`` (one row per line, optional leading
label column, kept), trains SimSkip with a tqdm bar over epochs (stderr), writes the refined
matrix to OUT (format by suffix, atomically) and prints a JSON summary (loss per epoch, seconds,
``mean_relative_displacement`` and ``scale``) on stdout. One line on stderr gives the mean
relative displacement ``||f(x) - x|| / ||x||`` of the written rows (stdout stays pure JSON).
Exit status: 0 ok, 2 bad input or config, 1 training diverged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import SimSkipConfig, read_config_mapping
from .controls import mean_relative_displacement
from .embedding_files import read_embeddings, write_atomic, write_embeddings
from .errors import ConfigError, SimSkipError, TrainingDivergedError, WeightsMismatchError
from .trainer import SimSkipTrainer
from .validation import prepare_embeddings

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simskip-refine",
        description="Refine embeddings with SimSkip (contrastive learning through a skip-connected encoder).",
    )
    parser.add_argument("input", type=Path, help="embeddings: .npy, .pt, .tsv or .txt (n rows x d columns)")
    parser.add_argument("output", type=Path, help="refined embeddings; format by suffix (.npy, .pt, .tsv, .txt)")
    parser.add_argument("--config", type=Path, help="JSON or TOML file of SimSkipConfig keys")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (parsed by its type); repeatable",
    )
    parser.add_argument("--summary", type=Path, help="also write the JSON summary to this file")
    parser.add_argument("--load-weights", type=Path, help="start from weights saved by --save-weights (.npz)")
    parser.add_argument("--save-weights", type=Path, help="save encoder and head weights (.npz, ordered names)")
    return parser


def _load_weights(path: Path) -> list[tuple[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return [(name, archive[name]) for name in archive.files]
    except (OSError, ValueError) as exc:
        raise WeightsMismatchError(f"{path}: cannot read weights: {exc}") from exc


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    write_atomic(path, lambda handle: handle.write((json.dumps(payload, indent=2) + "\n").encode("utf-8")))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Do the work of :func:`main`; raises :class:`SimSkipError` subclasses on bad input."""
    start = time.perf_counter()
    values = {"progress": True, **(read_config_mapping(args.config) if args.config else {})}
    try:
        config = SimSkipConfig.from_dict(values)
    except ConfigError as exc:
        raise ConfigError(f"{args.config}: {exc}" if args.config else str(exc)) from exc
    config = config.with_overrides(args.overrides)
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
        labels_path = args.output.with_name(args.output.name + ".labels.txt")
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``simskip-refine``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
        status = 0
    except TrainingDivergedError as exc:
        print(f"simskip-refine: error: {exc}", file=sys.stderr)
        summary, status = getattr(exc, "summary", {"error": str(exc), "loss_per_epoch": exc.losses}), 1
    except (SimSkipError, OSError) as exc:
        print(f"simskip-refine: error: {exc}", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    raise SystemExit(main())
