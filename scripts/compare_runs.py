#!/usr/bin/env python
"""Are two run folders the same run? Compares ``final_metrics.json``, ``metrics.jsonl`` and
``results.json`` of two run folders, leaving out what differs between two runs of the same code and
seed (timings, memory, timestamps, paths and the run folder's own name), and prints one JSON
document: per file the number of differences and the first few.

Used to check that a refactoring changed no result: run the same command (same seed) on the old
and the new checkout, then::

    python scripts/compare_runs.py RUN_DIR_OLD RUN_DIR_NEW --out results/refactor/equivalence.json

Exit status 0 when every file matches value for value (floats compared exactly), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from client.kge.run_folder import read_jsonl

FILES = ("final_metrics.json", "metrics.jsonl", "results.json")
#: Keys whose values differ between two runs of the same code and seed.
VOLATILE_KEYS = frozenset(
    {
        "finished_at",
        "started_at",
        "interrupted_at",
        "title",
        "run_dir",
        "run-dir",
        "client-data-root",
        "client-output-root",
    }
)


def volatile(key: str) -> bool:
    """A timing, memory or location key: left out of the comparison."""
    return key in VOLATILE_KEYS or "seconds" in key or "rss" in key


def stripped(value: Any) -> Any:
    """``value`` without its volatile keys (recursively)."""
    if isinstance(value, dict):
        return {k: stripped(v) for k, v in value.items() if not volatile(k)}
    if isinstance(value, list):
        return [stripped(v) for v in value]
    return value


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Every place where ``a`` and ``b`` differ, as ``path: a != b`` lines."""
    if type(a) is not type(b):
        return [f"{path}: type {type(a).__name__} != {type(b).__name__}"]
    if isinstance(a, dict):
        found = [f"{path}/{k}: only in {'first' if k in a else 'second'}" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            found += differences(a[k], b[k], f"{path}/{k}")
        return found
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        found = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found += differences(x, y, f"{path}[{i}]")
        return found
    return [] if a == b else [f"{path}: {str(a)[:60]} != {str(b)[:60]}"]


def load(path: Path) -> Any:
    """A JSON file, or a JSON-lines file as a list (:func:`client.kge.run_folder.read_jsonl`)."""
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    return json.loads(path.read_text(encoding="utf-8"))


def compare(first: Path, second: Path, files: tuple[str, ...] = FILES) -> dict[str, Any]:
    """Per file: ``differences`` (count) and ``first_differences``; a file missing in both is skipped."""
    report: dict[str, Any] = {"first": str(first), "second": str(second), "files": {}}
    for name in files:
        a, b = first / name, second / name
        if not a.exists() and not b.exists():
            continue
        if not (a.exists() and b.exists()):
            report["files"][name] = {
                "differences": 1,
                "first_differences": [f"only in {'first' if a.exists() else 'second'}"],
            }
            continue
        found = differences(stripped(load(a)), stripped(load(b)))
        report["files"][name] = {"differences": len(found), "first_differences": found[:10]}
    report["identical"] = all(entry["differences"] == 0 for entry in report["files"].values())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    report = compare(args.first, args.second)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if report["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
