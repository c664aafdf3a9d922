#!/usr/bin/env python
"""Time the refinement phase's pieces on one client folder; prints one JSON object.

Measures, on the client's entity rows (random rows of the model's width: timing does not depend
on the values): one SimSkip round of ``--simskip-epochs`` epochs, a relation re-fit of
``--refit-epochs`` epochs on frozen rows, and the test ranking under both protocols.

    python scripts/bench_downstream.py ../shared/data/FB15k-237-Fed3/0 --model TransE \\
        --refit-epochs 1 --simskip-epochs 1 [--set num-negs-per-pos=256 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("client_folder", type=Path)
    parser.add_argument("--model", default="TransE")
    parser.add_argument("--refit-epochs", type=int, default=1)
    parser.add_argument("--simskip-epochs", type=int, default=1)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="KGE / simskip-* run-config value (repeatable)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from client.kge.models import entity_dim
    from client.kge.refinement import fit_round, initial_weights, load_run_configs
    from client.kge.refit import refit_relations
    from kg_datasets import load_client_folder
    from server.simulation import parse_set_options

    _, kge_config, refinement = load_run_configs({**parse_set_options(args.sets), "model": args.model,
                                                  "simskip-local-epochs": args.simskip_epochs})
    started = time.perf_counter()
    graph = load_client_folder(args.client_folder, client_id=0)
    load_seconds = time.perf_counter() - started
    width = entity_dim(kge_config)
    rows = np.random.default_rng(0).standard_normal((graph.num_entities, width)).astype(np.float32)
    started = time.perf_counter()
    fit_round(rows, initial_weights(width, refinement), refinement, client_id=0, server_round=1)
    simskip_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = refit_relations(graph, kge_config, rows, epochs=args.refit_epochs)
    total = time.perf_counter() - started
    print(json.dumps({
        "client_folder": str(args.client_folder),
        "model": args.model,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "num_entities": graph.num_entities,
        "num_train": int(graph.train.num_triples),
        "num_test": int(graph.test.num_triples),
        "load_seconds": round(load_seconds, 3),
        "simskip_epochs": args.simskip_epochs,
        "simskip_seconds": round(simskip_seconds, 3),
        "refit_epochs": args.refit_epochs,
        "refit_train_seconds": round(result.seconds, 3),
        "test_ranking_seconds_both_protocols": round(total - result.seconds, 3),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
