#!/usr/bin/env python
"""Time to accuracy of FedE on a federated KG: valid/test MRR per round with timestamps (JSON).

Mode ``in-process`` (the one implemented here): FedE without Flower, in one process. Every round
each client loads the server's rows of its entities, trains ``local-epochs`` epochs with its
:class:`client.kge.training.LocalTrainer` (any registered ``training-loop``), returns its rows,
and the server averages each row over its holders (:func:`server.aggregation.aggregate_rows`);
relations and optimizer state stay private. Clients run one after another, so on a machine with
C cores the wall time of a round's training is the *sum* over clients, not the maximum a
simulation with parallel clients would see; both figures are reported. There is no framework
overhead in this mode (``framework_seconds`` is 0 by construction): label figures "in-process".

Every ``--eval-every`` rounds the valid split is evaluated; test is evaluated at the same times
(reported, never used for choices). Overall metrics are weighted by each client's triples
(FedE's protocol). Elapsed seconds count from the start of round 1, evaluations included.
Stops at ``--rounds``, at ``--time-budget`` seconds, or once ``--target-mrr`` is reached on test.

Example (from the project root)::

    python scripts/bench_time_to_accuracy.py --rounds 10 --set training-loop=sharednegatives \\
        --set corruption-scheme=tail --set eval-protocol=fede --out tta.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "FB15k-237-Fed3"


def _overall(per_client: list[dict[str, float]]) -> dict[str, float]:
    from client.kge.evaluation import weighted_overall

    return weighted_overall(per_client)


def run_in_process(args: argparse.Namespace) -> dict[str, Any]:
    """Run FedE rounds in this process and return the report."""
    import numpy as np
    import torch

    from client.kge.config import KGEConfig, parse_overrides
    from client.kge.models import initial_entity_table
    from client.kge.training import LocalTrainer
    from kg_datasets import load_federated
    from server.aggregation import aggregate_rows

    torch.set_num_threads(args.threads)
    config = KGEConfig.from_run_config(parse_overrides(args.set))
    started = time.perf_counter()
    kg = load_federated(args.data, num_clients=args.num_clients)
    trainers = [LocalTrainer(client, config, device=args.device) for client in kg.clients]
    holders = [np.asarray(client.entity_ids, dtype=np.int64) for client in kg.clients]
    table = initial_entity_table(config, kg.num_entities, seed=config.seed)
    setup_seconds = time.perf_counter() - started

    rounds: list[dict[str, Any]] = []
    reached_at: float | None = None
    clock, cpu_clock = time.perf_counter(), time.process_time()
    for server_round in range(1, args.rounds + 1):
        record: dict[str, Any] = {"round": server_round}
        client_seconds, losses = [], {}
        for trainer, ids in zip(trainers, holders):
            trainer.set_entity_embeddings(table[ids])
            begin = time.perf_counter()
            losses[str(trainer.graph.client_id)] = trainer.train(config.local_epochs)
            client_seconds.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        table = aggregate_rows(table, [(ids, t.get_entity_embeddings()) for t, ids in zip(trainers, holders)])
        for trainer, ids in zip(trainers, holders):
            trainer.set_entity_embeddings(table[ids])
        record["aggregation_seconds"] = time.perf_counter() - begin
        record["local_training_seconds"] = sum(client_seconds)
        record["local_training_seconds_per_client"] = client_seconds
        record["local_training_seconds_max_client"] = max(client_seconds)
        record["framework_seconds"] = 0.0
        record["losses"] = losses
        if server_round % config.eval_every == 0 or server_round == args.rounds:
            begin = time.perf_counter()
            for split in ("valid", "test"):
                per_client = [t.evaluate(split, config.eval_protocol) for t in trainers]
                record[split] = {"overall": _overall(per_client), "per_client": per_client}
            record["evaluation_seconds"] = time.perf_counter() - begin
        record["elapsed_seconds"] = time.perf_counter() - clock
        # CPU seconds of this process (all threads): comparable across machine load, unlike wall time
        record["cpu_seconds"] = time.process_time() - cpu_clock
        record["timestamp"] = time.time()
        record["load_average_1min"] = os.getloadavg()[0]
        rounds.append(record)
        if args.out is not None:  # keep what is measured if the run is stopped early
            _write_json(args.out, {"mode": "in-process", "partial": True, "config": config.to_run_config(),
                                   "setup_seconds": setup_seconds, "rounds": rounds})
        print(json.dumps({k: record[k] for k in ("round", "elapsed_seconds")}
                         | {s: record[s]["overall"]["mrr"] for s in ("valid", "test") if s in record}),
              file=sys.stderr, flush=True)
        if "test" in record and args.target_mrr is not None and reached_at is None \
                and record["test"]["overall"]["mrr"] >= args.target_mrr:
            reached_at = record["elapsed_seconds"]
            break
        if record["elapsed_seconds"] >= args.time_budget:
            break

    evaluated = [r for r in rounds if "valid" in r]
    best = max(evaluated, key=lambda r: r["valid"]["overall"]["mrr"]) if evaluated else None
    return {
        "mode": "in-process",
        "data": args.data,
        "config": config.to_run_config(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "setup_seconds": setup_seconds,
        "rounds": rounds,
        "best_valid_round": best["round"] if best else None,
        "best_valid_mrr": best["valid"]["overall"]["mrr"] if best else None,
        "test_at_best_valid": best["test"]["overall"] if best else None,
        "seconds_to_best_valid": best["elapsed_seconds"] if best else None,
        "target_test_mrr": args.target_mrr,
        "seconds_to_target": reached_at,
        "totals": {
            phase: sum(r.get(phase, 0.0) for r in rounds)
            for phase in ("local_training_seconds", "framework_seconds", "aggregation_seconds", "evaluation_seconds")
        },
    }


def _write_json(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` atomically (temp file + rename)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, write the JSON report (atomically) and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["in-process"], default="in-process")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="as kg_datasets.load_federated")
    parser.add_argument("--num-clients", type=int, default=None, help="clients, for a single-graph source")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--time-budget", type=float, default=1500.0, help="stop after this many seconds")
    parser.add_argument("--target-mrr", type=float, default=None, help="stop once test MRR reaches this")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="KGE run-config override")
    parser.add_argument("--out", type=Path, default=None, help="JSON output file")
    args = parser.parse_args(argv)
    report = run_in_process(args)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        _write_json(args.out, report)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
