#!/usr/bin/env python
"""Robust aggregation against a poisoning party: honest clients' MRR under each rule; one JSON document.

FedE in-process (:func:`client.kge.centralized.run_fede_in_process`: the Flower apps' rounds
without transport) on one federated dataset, for every aggregation rule (``--rules``) and every
attack (``--attacks``), with the same seed, budget and early stopping. Client ``--attacker``
trains as usual but returns, every round, instead of its trained rows:

``none``
    its trained rows (the clean run: what each rule costs without an attack);
``random``
    large random rows: N(0, (``--scale`` x RMS of the rows it was sent)^2) per coordinate;
``sign-flip``
    its update reversed and scaled: ``sent - scale x (trained - sent)``.

Reported per run: the honest clients' (every client but the attacker) valid MRR at the best
round and test MRR of the best round (each client weighted by its triples), the best round, the
seconds of the rounds (local training and aggregation, ``train_seconds``) and in all. The best
round is chosen by the overall valid MRR, attacker included, as the server would: it cannot tell
who is honest.

    python scripts/bench_poisoning.py --dataset Kinships --clients 5 --rounds 40 --trim 0.2 \\
        --set embedding-dim=64 --set num-negs-per-pos=64 --set local-epochs=1 --set batch-size=128 \\
        --set learning-rate=0.03 --out results/poisoning/kinships.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from client.kge.config import add_set_option

ATTACKS = ("none", "random", "sign-flip")


def poisoner(attack: str, attacker: int, scale: float, seed: int):
    """The update hook of :func:`client.kge.centralized.run_fede_in_process` for ``attack``."""
    rng = np.random.default_rng(seed)

    def hook(client: int, server_round: int, sent: np.ndarray, trained: np.ndarray) -> np.ndarray:
        if client != attacker or attack == "none":
            return trained
        if attack == "random":
            rms = float(np.sqrt(np.mean(np.square(sent)))) or 1.0
            return rng.normal(0.0, scale * rms, size=trained.shape).astype(np.float32)
        return (sent - scale * (trained - sent)).astype(np.float32)

    return hook


def honest_mean(per_client: dict[str, dict[str, float]], attacker: str, key: str = "mrr") -> float:
    """``key`` averaged over the honest clients, each weighted by its ``num_triples``."""
    from client.kge.evaluation import weighted_overall

    return weighted_overall([m for name, m in per_client.items() if name != attacker])[key]


def main(argv: list[str] | None = None) -> int:
    """Run every (rule, attack) and write (or print) the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="Kinships", help="PyKEEN dataset name or data folder (default Kinships)")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30, help="round budget of every run")
    parser.add_argument("--rules", nargs="+", default=["mean", "median", "trimmed-mean"])
    parser.add_argument(
        "--trim", type=float, default=0.34, help="aggregation-trim of trimmed-mean (0.34: 1 of 3 each side)"
    )
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--attacker", type=int, default=0, help="index of the poisoning client")
    parser.add_argument("--scale", type=float, default=10.0, help="attack strength (see above)")
    add_set_option(parser, dest="sets", help="KGE run-config values (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from client.kge.run_folder import check_script_outputs  # the project's one output rule

    check_script_outputs(parser, inputs=[args.dataset], files={"--out": args.out})

    import torch

    from client.kge.aggregation import check_rule
    from client.kge.centralized import run_fede_in_process
    from client.kge.config import KGEConfig, parse_set_options
    from client.kge.run_folder import emit_json
    from kg_datasets import load_federated

    for rule in args.rules:
        check_rule(rule, args.trim)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    config = KGEConfig.from_run_config({"eval-every": 1, **parse_set_options(args.sets)})
    kg = load_federated(args.dataset, num_clients=args.clients, seed=0)
    attacker = str(kg.clients[args.attacker].client_id)
    runs: list[dict[str, Any]] = []

    def report(done: bool) -> dict[str, Any]:
        return {
            "dataset": args.dataset,
            "clients": args.clients,
            "rounds": args.rounds,
            "attacker": attacker,
            "scale": args.scale,
            "trim": args.trim,
            "kge": config.to_run_config(),
            "torch_threads": torch.get_num_threads(),
            "holders_per_entity": np.bincount(np.bincount(np.concatenate([c.entity_ids for c in kg.clients]))).tolist(),
            "load_average_before": load_before,
            "runs": runs,
            "load_average_after": list(os.getloadavg()),
            **({} if done else {"partial": True}),
        }

    for attack in args.attacks:
        for rule in args.rules:
            started = time.perf_counter()
            result = run_fede_in_process(
                kg,
                config,
                args.rounds,
                progress=lambda line: None,
                aggregation=rule,
                aggregation_trim=args.trim,
                update_hook=poisoner(attack, args.attacker, args.scale, config.seed),
            )
            best = next(h for h in result["history"] if h["round"] == result["best_round"])
            row = {
                "attack": attack,
                "rule": rule,
                "best_round": result["best_round"],
                "rounds_trained": result["rounds_trained"],
                "honest_valid_mrr": round(honest_mean(best["valid"]["clients"], attacker), 4),
                "honest_test_mrr": round(honest_mean(result["test"]["clients"], attacker), 4),
                "honest_test_hits@10": round(honest_mean(result["test"]["clients"], attacker, "hits@10"), 4),
                "attacker_test_mrr": round(float(result["test"]["clients"][attacker]["mrr"]), 4),
                "train_seconds": round(float(result["train_seconds"]), 2),
                "wall_seconds": round(time.perf_counter() - started, 2),
            }
            runs.append(row)
            print(
                f"{attack:>9} {rule:>12}: honest valid {row['honest_valid_mrr']:.4f} test {row['honest_test_mrr']:.4f} "
                f"(best round {row['best_round']}), {row['wall_seconds']:.1f}s",
                file=sys.stderr,
                flush=True,
            )
            if args.out is not None:  # what is measured survives a stop
                emit_json(report(False), args.out)
    emit_json(report(True), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
