"""Seconds per local epoch of :class:`~client.kge.training.LocalTrainer` on one client (JSON out).

Usage (from the project root)::

    python scripts/bench_epoch.py --data ../shared/data/FB15k-237-Fed3 --client 0 --epochs 1

Any KGE run-config key can be overridden with ``--set key=value`` (e.g. ``--set model=RotatE``).
The figures are the wall and CPU time of ``LocalTrainer.train`` only (data loading and model
construction are timed separately), plus the process's peak RSS and the 1-minute load average
(wall time is only meaningful on a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

from client.kge.config import add_set_option

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset name or folder (as kg_datasets.load_federated)")
    parser.add_argument("--num-clients", type=int, default=None, help="clients, for a single-graph source")
    parser.add_argument("--client", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    add_set_option(parser, help="KGE run-config override")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from client.kge.config import KGEConfig, parse_set_options
    from client.kge.training import LocalTrainer
    from kg_datasets import load_federated

    config = KGEConfig.from_run_config(parse_set_options(args.set))

    started = time.perf_counter()
    kg = load_federated(args.data, num_clients=args.num_clients)
    client = kg.clients[args.client]
    load_seconds = time.perf_counter() - started

    started = time.perf_counter()
    trainer = LocalTrainer(client, config, device=args.device)
    build_seconds = time.perf_counter() - started

    epoch_seconds, epoch_cpu_seconds, losses = [], [], []
    for _ in range(args.epochs):
        started, cpu_started = time.perf_counter(), time.process_time()
        losses += trainer.train(1)
        epoch_seconds.append(time.perf_counter() - started)
        epoch_cpu_seconds.append(time.process_time() - cpu_started)

    report = {
        "data": str(args.data),
        "client": args.client,
        "train_triples": int(client.train.num_triples),
        "num_entities": int(client.num_entities),
        "config": config.to_run_config(),
        "device": str(trainer.device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_seconds": load_seconds,
        "build_seconds": build_seconds,
        "epoch_seconds": epoch_seconds,
        "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None,
        # CPU seconds of this process (all threads): robust to other load on a shared machine
        "epoch_cpu_seconds": epoch_cpu_seconds,
        "losses": losses,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_average_1min": os.getloadavg()[0],
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
