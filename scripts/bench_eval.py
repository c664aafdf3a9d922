#!/usr/bin/env python
"""Evaluation speed on a federated KG: filtered ranking of every client's test set (JSON).

For each model (untrained: the ranking cost does not depend on the weights) every client's test
split is ranked with :func:`client.kge.evaluation.evaluate_client_protocols`, both protocols in
one pass (the way the clients evaluate), and, unless ``--combined-only``, each protocol alone.
Reported per model and per protocol run: wall seconds, CPU seconds of this process (all threads;
comparable across machine load, unlike wall), triples per wall second, the 1-minute load average
before and after, and the overall metrics (weighted by test size) as a sanity check. With
``--pykeen-baseline N`` PyKEEN's own ``RankBasedEvaluator.evaluate`` is timed on client 0's first
N test triples next to this project's evaluator on the same triples (the "before", and a check
that both give the same MRR).

Before timing, each model runs once on a small slice (``warmup_seconds``): it pays the one-time
``torch.compile`` of the fused kernels (see :mod:`client.kge.candidate_scoring`), a cost each
process has once, not per evaluation. ``SIMSKIP_FUSED_KERNELS=never`` times the eager path.

The report also holds the command, the CPU model, the load averages (1, 5, 15 min) at the start
and the end, the kernels module measured (file and SHA-256; ``--kernels-file`` times another copy
of it, e.g. as of the commit before a change, with this same script and everything else as
installed) and every ``DeprecationWarning`` raised while building, compiling and evaluating.

Example (from the project root)::

    python scripts/bench_eval.py --out eval.json
    python scripts/bench_eval.py --threads 2 --out eval-2threads.json   # on a quiet machine
    SIMSKIP_FUSED_KERNELS=never python scripts/bench_eval.py --models TransE --combined-only
    # the same benchmark with the kernels module as it was before a change
    git show HEAD:client/kge/candidate_scoring.py > /tmp/candidate_scoring_before.py
    python scripts/bench_eval.py --kernels-file /tmp/candidate_scoring_before.py --combined-only --out before.json
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import resource
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from server.sim_resources import cpu_model

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "FB15k-237-Fed3"
#: The module holding the fused evaluation kernels, whose source the report identifies.
KERNEL_MODULE = "client.kge.candidate_scoring"


def _use_kernels_file(path: Path | None) -> None:
    """Use the module at ``path`` as :data:`KERNEL_MODULE` (``None``: the installed one), e.g. a
    copy of the kernels as of the commit before a change; everything else stays as installed.
    Call it before anything imports the kernels module.

    :raises FileNotFoundError: when ``path`` is not a file.
    :raises RuntimeError: when the kernels module is already imported.
    """
    if path is None:
        return
    if not path.is_file():
        raise FileNotFoundError(f"--kernels-file {path}: no such file")
    if KERNEL_MODULE in sys.modules:
        raise RuntimeError(f"--kernels-file {path}: {KERNEL_MODULE} was imported before")
    package_name, _, attribute = KERNEL_MODULE.rpartition(".")
    package = importlib.import_module(package_name)
    spec = importlib.util.spec_from_file_location(KERNEL_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[KERNEL_MODULE] = module
    spec.loader.exec_module(module)
    setattr(package, attribute, module)


def _kernels_source() -> dict[str, Any]:
    """The kernels module that is measured: its file and the SHA-256 of its source."""
    module = importlib.import_module(KERNEL_MODULE)
    source = Path(module.__file__)
    return {"file": str(source), "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}


def _load_averages() -> list[float]:
    """The 1, 5 and 15 minute load averages (as ``uptime`` prints them)."""
    return [round(value, 2) for value in os.getloadavg()]


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed_evaluation(
    models: list[Any], clients: list[Any], protocols: tuple[str, ...], batch_size: int
) -> dict[str, Any]:
    """Rank every client's test split with its model; wall/CPU seconds and overall metrics."""
    from client.kge.evaluation import evaluate_client_protocols, weighted_overall

    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), _cpu_seconds()
    per_client = [
        evaluate_client_protocols(model, client, split="test", protocols=protocols, batch_size=batch_size)
        for model, client in zip(models, clients)
    ]
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    triples = sum(int(client.test.mapped_triples.shape[0]) for client in clients)
    return {
        "protocols": list(protocols),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "num_triples": triples,
        "triples_per_second": triples / wall,
        "load_average_1min_before": load_before,
        "load_average_1min_after": os.getloadavg()[0],
        "overall": {name: weighted_overall([metrics[name] for metrics in per_client]) for name in protocols},
    }


def _pykeen_baseline(model: Any, client: Any, num_triples: int, batch_size: int) -> dict[str, Any]:
    """PyKEEN's own ``RankBasedEvaluator.evaluate`` (standard protocol) on the first test triples of
    ``client``, timed, next to this project's evaluator on the same triples (same MRR expected)."""
    import torch
    from pykeen.evaluation import RankBasedEvaluator

    from client.kge.evaluation import evaluate_protocols

    test = client.test.mapped_triples[:num_triples]
    filters = [client.train.mapped_triples, client.valid.mapped_triples, client.test.mapped_triples]
    wall, cpu = time.perf_counter(), _cpu_seconds()
    with torch.no_grad():
        results = RankBasedEvaluator(filtered=True).evaluate(
            model, test, batch_size=batch_size, use_tqdm=False, additional_filter_triples=filters
        )
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    ours_wall, ours_cpu = time.perf_counter(), _cpu_seconds()
    ours = evaluate_protocols(model, test, filter_triples=filters, protocols=("standard",))["standard"]
    ours_wall, ours_cpu = time.perf_counter() - ours_wall, _cpu_seconds() - ours_cpu
    return {
        "client": str(client.client_id),
        "num_triples": int(test.shape[0]),
        "pykeen_wall_seconds": wall,
        "pykeen_cpu_seconds": cpu,
        "pykeen_mrr": float(results.get_metric("both.realistic.inverse_harmonic_mean_rank")),
        "ours_wall_seconds": ours_wall,
        "ours_cpu_seconds": ours_cpu,
        "ours_mrr": ours["mrr"],
        "load_average_1min": os.getloadavg()[0],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Benchmark each model; return the report."""
    import torch

    from client.kge.candidate_scoring import fused_kernels_mode
    from client.kge.config import PAPER_MODELS, KGEConfig
    from client.kge.evaluation import DEFAULT_BATCH_SIZE, evaluate_protocols
    from client.kge.models import build_model, seeded
    from kg_datasets import load_federated

    names = args.models or list(PAPER_MODELS)  # imported here: after --kernels-file is applied
    torch.set_num_threads(args.threads)
    kg = load_federated(args.data, num_clients=args.num_clients)
    clients = list(kg.clients)
    report: dict[str, Any] = {
        "data": str(args.data),
        "num_clients": len(clients),
        "test_triples": sum(int(c.test.mapped_triples.shape[0]) for c in clients),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "fused_kernels": fused_kernels_mode(),
        "torch_version": torch.__version__,
        "batch_size": args.batch_size,
        "embedding_dim": args.embedding_dim,
        "models": {},
    }
    runs = [("standard", "fede")] if args.combined_only else [("standard", "fede"), ("standard",), ("fede",)]
    for name in names:
        config = KGEConfig(model=name, embedding_dim=args.embedding_dim)
        with seeded(0):
            models = [build_model(config, client.train) for client in clients]
        begin = time.perf_counter()
        # a full-width batch of client 0's valid triples: the same shapes (and compiles) as the timed runs
        evaluate_protocols(
            models[0],
            clients[0].valid.mapped_triples[: args.batch_size or DEFAULT_BATCH_SIZE],
            batch_size=args.batch_size,
        )
        entry: dict[str, Any] = {"warmup_seconds": time.perf_counter() - begin, "runs": {}}
        for protocols in runs:
            entry["runs"]["+".join(protocols)] = measured = _timed_evaluation(
                models, clients, protocols, args.batch_size
            )
            print(
                json.dumps(
                    {
                        "model": name,
                        "protocols": protocols,
                        "wall_seconds": round(measured["wall_seconds"], 2),
                        "cpu_seconds": round(measured["cpu_seconds"], 2),
                        "load": round(measured["load_average_1min_before"], 2),
                    }
                ),
                file=sys.stderr,
                flush=True,
            )
        if args.pykeen_baseline > 0:
            entry["pykeen_baseline"] = _pykeen_baseline(
                models[0], clients[0], args.pykeen_baseline, args.batch_size or DEFAULT_BATCH_SIZE
            )
        report["models"][name] = entry
        if args.out is not None:  # keep what is measured if a later model is interrupted
            _write_json(args.out, report | {"partial": True})
    return report


def _write_json(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` atomically (the run folder's writer: temp file, fsync, rename)."""
    from client.kge.run_folder import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def _measured(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """:func:`run`, recording the command, the machine, the kernels' source, the load before and
    after, and every ``DeprecationWarning`` raised on the way (each once per message and place)."""
    kernels = _kernels_source()
    header = {
        "command": shlex.join(["python", "scripts/bench_eval.py", *argv]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": cpu_model(), "platform": platform.platform(), "python": platform.python_version()},
    }
    load_start = _load_averages()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        report = run(args)
    seen = {
        (str(w.message), f"{Path(w.filename).name}:{w.lineno}")
        for w in caught
        if issubclass(w.category, DeprecationWarning)
    }
    return {
        **header,
        **report,
        "kernels": kernels,
        "load_average_start": load_start,
        "load_average_end": _load_averages(),
        "deprecation_warnings": [{"message": message, "raised_at": where} for message, where in sorted(seen)],
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, write the JSON report (atomically) and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="as kg_datasets.load_federated")
    parser.add_argument("--num-clients", type=int, default=None, help="clients, for a single-graph source")
    parser.add_argument("--models", nargs="+", default=None, help="PyKEEN model names (default: the paper's four)")
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="test triples scored at once (default: the evaluator's)"
    )
    # 1 by default: with 2 threads on a loaded 2-core machine the compiled kernels' OpenMP threads
    # wait on each other (measured: TransE 40 s wall at load 3.5, 16.6 s with 1 thread)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--combined-only", action="store_true", help="time only both protocols in one pass")
    parser.add_argument(
        "--pykeen-baseline",
        type=int,
        default=0,
        metavar="N",
        help="also time PyKEEN's own evaluator (standard protocol) on client 0's first N test "
        "triples, next to ours on the same triples (slow: ~35 ms per triple on Fed3)",
    )
    parser.add_argument(
        "--kernels-file",
        type=Path,
        default=None,
        help=f"use this file as {KERNEL_MODULE} (e.g. a copy as of the commit before a kernel change: "
        "git show HEAD:client/kge/candidate_scoring.py > /tmp/before/candidate_scoring.py)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON output file")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    _use_kernels_file(args.kernels_file)  # before anything imports the kernels module
    from client.kge.run_folder import check_script_outputs  # the project's one output rule

    check_script_outputs(parser, inputs=[args.data], files={"--out": args.out})
    report = _measured(args, argv)
    if args.out is not None:
        _write_json(args.out, report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
