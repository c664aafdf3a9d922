"""``simskip-data``: statistics of a KG source, and writing a federated partition to disk.

Examples::

    simskip-data stats ../shared/data/FB15k-237-Fed3
    simskip-data stats UMLS --clients 3 --json
    simskip-data partition ../shared/data/FB15k-237 out/fb-fed10 --clients 10 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kg_datasets.build import ON_UNSEEN_POLICIES
from kg_datasets.errors import KGDataError
from kg_datasets.model import KGSplit
from kg_datasets.partition import PARTITIONERS
from kg_datasets.sources import federate, load_federated, load_source
from kg_datasets.stats import federated_stats, format_federated_stats, format_split_stats, split_stats


def _add_source_options(parser: argparse.ArgumentParser, *, clients_required: bool) -> None:
    parser.add_argument(
        "source", help="PyKEEN dataset name, labelled folder, OpenKE folder, client folders (0/, 1/, ...) or FedE .pkl"
    )
    parser.add_argument(
        "--clients",
        type=int,
        required=clients_required,
        default=None,
        help="clients to partition a single-graph source into",
    )
    parser.add_argument(
        "--partition",
        choices=sorted(PARTITIONERS),
        default="relation",
        help="relation: FedE disjoint relations; triple: FedR-style random triples (default: relation)",
    )
    parser.add_argument("--seed", type=int, default=0, help="partition seed (default: 0)")
    parser.add_argument(
        "--on-unseen",
        choices=ON_UNSEEN_POLICIES,
        default="error",
        help="valid/test triples unseen in their client's train: error or drop (default: error)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simskip-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    stats = sub.add_parser("stats", help="print per-client statistics of a source")
    _add_source_options(stats, clients_required=False)
    part = sub.add_parser("partition", help="partition a source and write per-client folders")
    _add_source_options(part, clients_required=False)
    part.add_argument("out", help="output folder (gets 0/, 1/, ... and the global vocabularies)")
    part.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    return parser


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_stats(args: argparse.Namespace) -> dict:
    loaded = load_source(args.source)
    if args.clients is None and isinstance(loaded, KGSplit):
        return {"kind": "graph", **split_stats(loaded)}
    kg = federate(loaded, num_clients=args.clients, partition=args.partition, seed=args.seed, on_unseen=args.on_unseen)
    return {"kind": "federated", **federated_stats(kg)}


def _run_partition(args: argparse.Namespace) -> dict:
    kg = load_federated(
        args.source, num_clients=args.clients, partition=args.partition, seed=args.seed, on_unseen=args.on_unseen
    )
    out = kg.write(args.out, overwrite=args.overwrite)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return {
        "kind": "federated",
        **federated_stats(kg),
        "written": str(out),
        "partition": args.partition,
        "seed": args.seed,
        "files": {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 data error)."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        result = _run_stats(args) if args.command == "stats" else _run_partition(args)
    except KGDataError as exc:
        print(f"simskip-data: error: {exc}", file=sys.stderr)
        return 2
    result["seconds"] = round(time.perf_counter() - start, 3)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_split_stats(result) if result["kind"] == "graph" else format_federated_stats(result))
        if "written" in result:
            print(f"wrote {len(result['files'])} files to {result['written']}")
        print(f"({result['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
