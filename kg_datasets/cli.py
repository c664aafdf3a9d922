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

from kg_datasets.build import FEDERATION_ON_UNSEEN_POLICIES
from kg_datasets.errors import PARAMETER_FLAGS
from kg_datasets.model import KGSplit
from kg_datasets.partition import PARTITIONERS
from kg_datasets.sources import federate, load_federated, load_source
from kg_datasets.stats import federated_stats, format_federated_stats, format_split_stats, split_stats
from kg_datasets.writer import check_federated_output
from simskip_core.cli_common import CommandParser, add_version, integer, run_main
from simskip_core.outputs import MARKER_FILE

#: ``numpy.random.RandomState`` takes seeds in 0..2**32 - 1.
MAX_SEED = 2**32 - 1

STATS_EXAMPLES = """examples:
  simskip-data stats UMLS
  simskip-data stats UMLS --clients 3 --json
  simskip-data stats ../shared/data/FB15k-237-Fed3
"""
PARTITION_EXAMPLES = """examples:
  simskip-data partition UMLS out/umls-fed3 --clients 3
  simskip-data partition ../shared/data/FB15k-237 out/fb-fed10 --clients 10 --partition triple --seed 1
"""


def _add_source_options(parser: argparse.ArgumentParser, *, clients_required: bool) -> None:
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="PyKEEN dataset name, labelled folder, OpenKE folder, client folders (0/, 1/, ...) or FedE .pkl",
    )
    parser.add_argument(
        "--clients",
        type=integer(1),
        required=clients_required,
        default=None,
        help="clients to partition a single-graph source into (>= 1)",
    )
    parser.add_argument(
        "--partition",
        choices=sorted(PARTITIONERS),
        default="relation",
        help="relation: FedE disjoint relations; triple: FedR-style random triples (default: relation)",
    )
    parser.add_argument("--seed", type=integer(0, MAX_SEED), default=0, help="partition seed (default: 0)")
    parser.add_argument(
        "--on-unseen",
        choices=FEDERATION_ON_UNSEEN_POLICIES,
        default="error",
        help="valid/test triples unseen in their client's train: error or drop (default: error)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    """The ``simskip-data`` argument parser."""
    parser = CommandParser(
        prog="simskip-data",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog="examples:\n"
        + "".join(line for text in (STATS_EXAMPLES, PARTITION_EXAMPLES) for line in text.splitlines(True)[1:]),
    )
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{stats,partition}")
    stats = sub.add_parser(
        "stats",
        help="print per-client statistics of a source",
        description="Print the statistics of a source (per client when it is, or is made, federated).",
        epilog=STATS_EXAMPLES,
    )
    _add_source_options(stats, clients_required=False)
    part = sub.add_parser(
        "partition",
        help="partition a source and write per-client folders",
        description="Partition a source over clients and write one folder per client (0/, 1/, ...).",
        epilog=PARTITION_EXAMPLES,
    )
    _add_source_options(part, clients_required=False)
    part.add_argument("out", metavar="OUT", help="output folder (gets 0/, 1/, ... and the global vocabularies)")
    part.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output folder that simskip wrote (it holds .simskip-output.json; the files removed "
        "are listed on stderr); any other folder, the source and the current folder are never replaced",
    )
    part.add_argument("--allow-split-leaks", action="store_true", help=ALLOW_SPLIT_LEAKS_HELP)
    return parser


def parse_and_validate(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check every option of ``simskip-data`` without reading any data.

    :raises SystemExit: 2 with one line ``simskip-data ...: error: ...`` naming the flag; 0 after
        ``--help`` / ``--version``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.source.strip():
        parser.error("SOURCE must not be empty (a PyKEEN dataset name or a path)")
    if args.command == "partition" and not args.out.strip():
        parser.error("OUT must not be empty")
    return args


#: Help of ``--allow-split-leaks`` (partition).
ALLOW_SPLIT_LEAKS_HELP = (
    "accept a federated source whose clients have valid/test triples also in their train (an error "
    "otherwise: such a leak inflates every metric); the counts are kept in the output's "
    ".simskip-output.json (records.split_leaks) and in the JSON (records)"
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_stats(args: argparse.Namespace) -> dict:
    loaded = load_source(args.source)
    if args.clients is None and isinstance(loaded, KGSplit):
        return {"kind": "graph", **split_stats(loaded)}
    # stats reports leaks between a client's splits (counted in "overlaps"), it does not refuse them
    kg = federate(
        loaded,
        num_clients=args.clients,
        partition=args.partition,
        seed=args.seed,
        on_unseen=args.on_unseen,
        allow_split_leaks=True,
    )
    return {"kind": "federated", **federated_stats(kg)}


def _run_partition(args: argparse.Namespace) -> dict:
    check_federated_output(args.out, inputs=[args.source], overwrite=args.overwrite)  # before any data is read
    kg = load_federated(
        args.source,
        num_clients=args.clients,
        partition=args.partition,
        seed=args.seed,
        on_unseen=args.on_unseen,
        allow_split_leaks=args.allow_split_leaks,
    )
    out = kg.write(args.out, overwrite=args.overwrite, inputs=[args.source], command="simskip-data partition")
    # the data files (the manifest, which records when it was written, is named on its own)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MARKER_FILE)
    return {
        "kind": "federated",
        **federated_stats(kg),
        "written": str(out),
        "manifest": str(out / MARKER_FILE),
        "partition": args.partition,
        "seed": args.seed,
        "files": {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 usage or data error, 1 any other failure)."""
    args = parse_and_validate(argv)

    def work() -> int:
        start = time.perf_counter()
        result = _run_stats(args) if args.command == "stats" else _run_partition(args)
        result["seconds"] = round(time.perf_counter() - start, 3)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(format_split_stats(result) if result["kind"] == "graph" else format_federated_stats(result))
            if "written" in result:
                print(f"wrote {len(result['files'])} files to {result['written']}")
            print(f"({result['seconds']:.1f} s)")
        return 0

    return run_main("simskip-data", work, parameters=PARAMETER_FLAGS)


if __name__ == "__main__":
    sys.exit(main())
