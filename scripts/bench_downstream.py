#!/usr/bin/env python
"""Time the downstream phase on a finished run folder, one protocol at a time; writes one JSON object.

For every downstream protocol label given (default: every registered one), all rows
(unrefined, the refined candidates, perturbed) of every client, one seed, with the run's KGE
config and the refinement keys given by ``--set``: wall seconds of the whole phase, per client,
and per row (training and valid checks; the test ranking once at the end). The refined rows are
the run folder's ``refined/<client>/<variant>.npy`` when present (as ``simskip-sim`` or
``--refine-only`` left them), else the SimSkip phase runs first (its time reported apart).

    python scripts/bench_downstream.py RUN_DIR --protocols relation-refit adapter \\
        --set refit-epochs=3 --out results/bench_downstream.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from client.kge.config import add_set_option


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and write (or print) the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run folder (simskip-sim writes one)")
    parser.add_argument("--protocols", nargs="+", default=None, help="downstream protocols (default: all)")
    add_set_option(parser, dest="sets", help="refinement run-config value (repeatable), e.g. refit-epochs=3")
    parser.add_argument("--out", type=Path, default=None, help="JSON output file (default: stdout)")
    args = parser.parse_args(argv)
    from client.kge.run_folder import check_script_outputs  # the project's one output rule

    check_script_outputs(parser, inputs=[args.run_dir], files={"--out": args.out})

    import numpy as np
    import torch

    from client.kge.comparison import evaluate_client_rows
    from client.kge.config import KGEConfig, parse_set_options
    from client.kge.protocols import DOWNSTREAM_PROTOCOLS, protocol_labels, relations_fit
    from client.kge.refinement import RefinementConfig, run_refinement
    from client.kge.run_folder import emit_json
    from server.downstream import load_client_inputs

    recorded = json.loads((args.run_dir / "config.json").read_text(encoding="utf-8"))
    run_config = {**recorded.get("run_config", {}), **parse_set_options(args.sets), "downstream-seeds": 1}
    kge_config = KGEConfig.from_run_config(recorded.get("kge", {}))
    inputs = load_client_inputs(args.run_dir, run_config)
    base = RefinementConfig.from_run_config(run_config)
    refined: dict[str, dict[str, np.ndarray]] = {}
    simskip_seconds = None
    stored = {name: args.run_dir / "refined" / name for name in inputs}
    if all((folder / f"{variant}.npy").is_file() for folder in stored.values() for variant in base.variants()):
        refined = {name: {v: np.load(stored[name] / f"{v}.npy") for v in base.variants()} for name in inputs}
    else:
        started = time.perf_counter()
        refined = run_refinement({name: item["rows"] for name, item in inputs.items()}, base).refined
        simskip_seconds = round(time.perf_counter() - started, 3)
    report = {
        "run_dir": str(args.run_dir),
        "model": kge_config.model,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "load_average_before": list(os.getloadavg()),
        "refinement": base.to_run_config(),
        "simskip_seconds": simskip_seconds,
        "protocols": {},
    }
    names = args.protocols or list(DOWNSTREAM_PROTOCOLS)
    for name in names:
        for label in protocol_labels([name], base.refit_init):
            config = RefinementConfig.from_run_config(
                {**run_config, "downstream-protocols": name, "refit-init": label.partition(":")[2] or "trained"}
            )
            started = time.perf_counter()
            per_client = {}
            for client, item in inputs.items():
                began = time.perf_counter()
                record, _ = evaluate_client_rows(
                    item["graph"],
                    kge_config,
                    item["rows"],
                    refined[client],
                    config,
                    relation_state=item["relation_state"]
                    if relations_fit(item["graph"], kge_config, item["relation_state"])
                    else None,
                    log=lambda line: print(line, file=sys.stderr, flush=True),
                )
                rows = record["protocols"].get(label, {}).get("seeds", {}).get("0", {})
                per_client[client] = {
                    "seconds": round(time.perf_counter() - began, 3),
                    "rows": {row: {"seconds": r["seconds"], "epochs": r["epochs"]} for row, r in rows.items()},
                    "candidates": len(config.candidates()),
                }
            report["protocols"][label] = {"seconds": round(time.perf_counter() - started, 3), "clients": per_client}
            print(
                f"[bench-downstream] {label}: {report['protocols'][label]['seconds']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    report["load_average_after"] = list(os.getloadavg())
    emit_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
