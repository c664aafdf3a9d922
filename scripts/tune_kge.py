#!/usr/bin/env python
"""Choose local-training defaults on VALID: a small grid of FedE runs, one JSON document.

Every setting of the grid (``--grid key=v1,v2 ...``, the product of the lists, on top of
``--set`` values and the KGE defaults) runs FedE in-process
(:func:`client.kge.centralized.run_fede_in_process`: the Flower apps' protocol without the
framework) on one federated dataset with validation after every round and early stopping, and is
scored by its best valid MRR (the run's ``eval-protocol``). The chosen setting is the one with
the best valid MRR among those within ``--tolerance`` of the best, the fastest of them (train
seconds to the best round); ties keep grid order. With ``--target-valid M`` the rule is time to
accuracy instead: among the settings whose valid MRR reaches M, the one with the fewest train
seconds to the first round that does. Only the chosen setting is then tested, so no
test number feeds the choice (``test`` of the others is not computed).

    python scripts/tune_kge.py --dataset UMLS --rounds 40 \\
        --grid learning-rate=0.001,0.01 batch-size=128,512 --out results/tune/umls.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

from client.kge.config import add_set_option

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _grid(items: list[str]) -> list[dict[str, object]]:
    from client.kge.config import parse_set_options

    keys, values = [], []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not text:
            raise SystemExit(f"--grid {item!r}: expected key=v1,v2")
        keys.append(key)
        values.append([parse_set_options([f"{key}={v}"])[key] for v in text.split(",")])
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)] or [{}]


def main(argv: list[str] | None = None) -> int:
    """Run the grid and write (or print) the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="UMLS", help="PyKEEN dataset name or data folder (default UMLS)")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=40, help="round budget of every setting")
    parser.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2", help="run-config keys to vary")
    add_set_option(parser, dest="sets", help="fixed run-config values (repeatable)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.005,
        help="valid MRR within this of the best counts as as good (default 0.005)",
    )
    parser.add_argument(
        "--target-valid",
        type=float,
        default=None,
        metavar="MRR",
        help="choose the fewest train seconds to this valid MRR instead (time to accuracy)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from client.kge.run_folder import check_script_outputs  # the project's one output rule

    check_script_outputs(parser, inputs=[args.dataset], files={"--out": args.out})

    import torch

    from client.kge.centralized import run_fede_in_process
    from client.kge.config import KGEConfig, parse_set_options
    from client.kge.run_folder import emit_json
    from kg_datasets import load_federated

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    fixed = {"eval-every": 1, **parse_set_options(args.sets)}
    kg = load_federated(args.dataset, num_clients=args.clients, seed=0)
    rows = []
    for setting in _grid(args.grid):
        config = KGEConfig.from_run_config({**fixed, **setting})
        started = time.perf_counter()
        result = run_fede_in_process(kg, config, args.rounds, progress=lambda line: None)
        history = [h for h in result["history"] if "valid" in h]
        curve = [round(h["valid"]["overall"]["mrr"], 4) for h in history]
        per_round = result["train_seconds"] / max(1, result["rounds_trained"])
        row = {
            "setting": setting,
            "best_valid_mrr": round(result["best_valid_mrr"], 4),
            "best_round": result["best_round"],
            "rounds_trained": result["rounds_trained"],
            "stopped_early": result["rounds_trained"] < args.rounds,
            "train_seconds": round(result["train_seconds"], 2),
            "train_seconds_to_best": round(per_round * result["best_round"], 2),
            "wall_seconds": round(time.perf_counter() - started, 2),
            "valid_curve": curve,
        }
        if args.target_valid is not None:
            reached = [h["round"] for h in history if h["valid"]["overall"]["mrr"] >= args.target_valid]
            row["round_at_target"] = reached[0] if reached else None
            row["train_seconds_to_target"] = round(per_round * reached[0], 2) if reached else None
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    reaching = [r for r in rows if r.get("train_seconds_to_target") is not None]
    if reaching:
        chosen = min(reaching, key=lambda r: r["train_seconds_to_target"])
        rule = f"fewest train seconds to valid MRR {args.target_valid}"
    else:
        if args.target_valid is not None:
            print(f"no setting reached valid MRR {args.target_valid}; choosing by best valid MRR", file=sys.stderr)
        best = max(r["best_valid_mrr"] for r in rows)
        near = [r for r in rows if r["best_valid_mrr"] >= best - args.tolerance]
        chosen = min(near, key=lambda r: r["train_seconds_to_best"])
        rule = f"best valid MRR within {args.tolerance} of the grid's best, then fewest train seconds to the best round"
    config = KGEConfig.from_run_config({**fixed, **chosen["setting"]})
    tested = run_fede_in_process(kg, config, args.rounds, progress=lambda line: None)
    report = {
        "dataset": args.dataset,
        "clients": args.clients,
        "rounds": args.rounds,
        "fixed": fixed,
        "grid": args.grid,
        "tolerance": args.tolerance,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "rows": rows,
        "chosen": chosen["setting"],
        "rule": rule,
        "target_valid": args.target_valid,
        "chosen_test": {"overall": tested["test"]["overall"], "best_round": tested["best_round"]},
        "load_average_after": list(os.getloadavg()),
    }
    emit_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
