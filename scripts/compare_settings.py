"""Compare the settings at one budget without Flower: untrained, isolation, FedE, collection (JSON).

Usage (from the project root)::

    python scripts/compare_settings.py --dataset Kinships --clients 3 --rounds 20 \\
        --set model=DistMult --set eval-every=5 --out results.json

FedE here is :func:`client.kge.centralized.run_fede_in_process` (the same protocol as the Flower
apps, in one process); it is the quick learning check, and the Flower run should land close to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from client.kge.config import add_set_option
from client.kge.run_folder import atomic_write_text

__all__ = ["main"]

SETTINGS = ("isolation", "fede", "collection")


def main(argv: list[str] | None = None) -> int:
    """Run the settings and print (and optionally write) one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="dataset name or folder (kg_datasets.load_federated)")
    parser.add_argument("--clients", type=int, default=None, help="clients, for a single-graph source")
    parser.add_argument("--partition-seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, required=True, help="round budget of every setting")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {SETTINGS}")
    parser.add_argument("--device", default=None)
    add_set_option(parser, help="KGE run-config override")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (atomically)")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from client.kge import centralized
    from client.kge.config import KGEConfig, parse_set_options
    from kg_datasets import load_federated

    settings = [name.strip() for name in args.settings.split(",") if name.strip()]
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {SETTINGS}")
    config = KGEConfig.from_run_config(parse_set_options(args.set))
    kg = load_federated(args.dataset, num_clients=args.clients, seed=args.partition_seed)

    runners = {
        "isolation": centralized.run_isolation,
        "fede": centralized.run_fede_in_process,
        "collection": centralized.run_collection,
    }
    report: dict[str, Any] = {
        "dataset": args.dataset,
        "clients": kg.num_clients,
        "rounds": args.rounds,
        "config": config.to_run_config(),
        "untrained": centralized.untrained_metrics(kg, config)["overall"],
    }
    for name in settings:
        started = time.perf_counter()
        result = runners[name](kg, config, args.rounds, device=args.device)
        report[name] = {
            "test": result["test"]["overall"],
            "test_per_client": result["test"]["clients"],
            "best_round": result["best_round"],
            "rounds_trained": result["rounds_trained"],
            "best_valid_mrr": result["best_valid_mrr"],
            "seconds": time.perf_counter() - started,
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
