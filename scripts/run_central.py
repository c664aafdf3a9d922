#!/usr/bin/env python
"""The centralized check: one party holds a whole graph with its own train/valid/test split.

The graph (``--data``: a labelled or OpenKE folder such as ``../shared/data/FB15k-237``, or a
PyKEEN dataset name) is loaded as ONE party with the source's original split, not a re-split
(:func:`kg_datasets.load_federated` with ``resplit=False``), and with ``on_unseen="keep"``: every
entity and relation of train, valid and test is in the vocabulary and no valid or test triple is
dropped. That is the standard protocol of the published centralized numbers (LibKGE): for
FB15k-237 all 14,541 entities are candidates for every query, the ranking is filtered with the
train, valid and test triples, heads and tails are both predicted (realistic ranks, MRR and
Hits@1/3/10), over all 20,466 test triples; the 36 entities no train triple holds keep rows no
positive triple trains (they only move as uniformly sampled negatives, as in LibKGE).

Training is the in-process runner of :mod:`client.kge.centralized` (``run_isolation`` with one
party): a round is ``local-epochs`` epochs, valid MRR every ``eval-every`` rounds, early stopping
after ``patience`` validations without a better one, then the best-valid round's weights are
tested. The run folder ``--out`` gets, each written atomically:

``config.json``
    the command, the data (its counts), the preset, the ``--set`` values and the full KGE config.
``metrics.jsonl``
    one line per finished round: train loss, valid MRR (``null`` in a round without validation)
    and the round's seconds; rewritten after every round.
``final_metrics.json``
    test MRR and Hits@1/3/10 (standard protocol), best round, rounds trained, the stop reason,
    wall seconds, peak RSS, load average before and after, torch threads, the command.
``clients/0/``
    the best round's embeddings (``entity_embeddings.npy``, ``entities.tsv``,
    ``relation_embeddings.npz``, ``relations.tsv``).

``checkpoint/`` holds the state after the last finished round while the run lasts: the same
command run again resumes after that round (a changed model-defining setting or other data is
refused, as the grid runner's resume does); it is removed once ``final_metrics.json`` is written.
A folder holding ``final_metrics.json`` is finished: the command reports it and trains nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simskip_core.cli_common import CommandParser, add_version, integer, path, run_main

PROG = "run_central.py"
#: What ``config.json`` names as its writer: a folder whose ``config.json`` says otherwise is not ours.
WRITER = "scripts/run_central.py"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final_metrics.json"
#: What ``--export`` copies: the run's small text files, never its embeddings.
EXPORTED = (CONFIG_FILE, METRICS_FILE, FINAL_FILE)
#: The setting of the in-process runner: one party training alone.
SETTING = "isolation"
#: What the evaluation reports (the only protocol this check accepts).
PROTOCOL = "standard"

EXAMPLES = """examples:
  python scripts/run_central.py --data ../shared/data/FB15k-237 --out runs/central/distmult \\
      --set model=DistMult --set loss=crossentropy --rounds 200 --threads 2
  python scripts/run_central.py --data Nations --out runs/central/nations --rounds 5
"""


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser (:class:`simskip_core.cli_common.CommandParser`)."""
    from client.kge.config import add_set_option
    from server.run_options import add_preset_option

    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=EXAMPLES)
    add_version(parser)
    parser.add_argument(
        "--data",
        type=path,
        required=True,
        help="one graph: a labelled folder (train.txt, valid.txt, test.txt), an OpenKE folder or a PyKEEN "
        "dataset name; its own split is kept",
    )
    parser.add_argument(
        "--out",
        type=path,
        required=True,
        help="the run folder (created; the same command on a folder it wrote resumes or reports that run)",
    )
    add_preset_option(parser)
    add_set_option(parser, dest="sets", help="a KGE run-config value (KEY=VALUE), applied after --preset; repeatable")
    parser.add_argument(
        "--rounds", type=integer(1), default=100, help="round budget; a round is local-epochs epochs (default 100)"
    )
    parser.add_argument(
        "--export",
        type=path,
        default=None,
        help="also copy the small text files (config.json, metrics.jsonl, final_metrics.json) of the finished run "
        "here, e.g. results/baselines/central/<model>/ (the embeddings stay in --out)",
    )
    parser.add_argument("--threads", type=integer(1), default=None, help="torch threads (default: torch's own)")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N (default auto)"
    )
    return parser


def parse_and_validate(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any], Any]:
    """Parse and check every option before any data is read.

    :return: ``(args, run_config, kge_config)``: the run config is the preset, then ``--set``,
        then the run's own keys (setting, clients, rounds); the KGE config is read from it.
    :raises SystemExit: 2 with one line ``run_central.py: error: ...`` naming the flag.
    """
    from client.kge.config import ConfigError
    from client.kge.settings import in_process_local_dp
    from server.run_options import kge_run_config
    from simskip_core.cli_common import RUN_CONFIG_FLAGS
    from simskip_core.outputs import UnsafeOutputError, check_new_folder

    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # never the data, never the current folder or above it (the project's one output rule)
        check_new_folder(args.out, inputs=[args.data], taken=(), what="--out")
        if args.export is not None:
            check_new_folder(args.export, inputs=[args.data, args.out], taken=(), what="--export")
    except UnsafeOutputError as err:
        parser.error(str(err))
    if args.export is not None and (args.export / FINAL_FILE).exists():
        ours = args.out / FINAL_FILE
        if not ours.exists() or ours.read_bytes() != (args.export / FINAL_FILE).read_bytes():
            parser.error(f"--export {args.export} holds another run's {FINAL_FILE}: remove it or choose another folder")
    try:
        sets, config = kge_run_config(args.preset, args.sets)
        # the Flower-free commands' one rule: this run has neither SecAgg+ nor a DP path, so both are refused
        in_process_local_dp(sets, command="run_central.py", honours_dp=False)
    except (ConfigError, ValueError) as err:
        parser.error(f"{RUN_CONFIG_FLAGS}: {err}")
    if config.eval_protocol != PROTOCOL:
        parser.error(
            f"{RUN_CONFIG_FLAGS}: eval-protocol must be {PROTOCOL!r} here (the centralized check reports the "
            f"standard protocol: both sides, every entity a candidate), got {config.eval_protocol!r}"
        )
    if args.device not in ("auto", "cpu", "cuda") and not (
        args.device.startswith("cuda:") and args.device[5:].isdigit()
    ):
        parser.error(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
    run_config = {**sets, "setting": SETTING, "num-clients": 1, "num-server-rounds": args.rounds}
    args.set_values = sets
    _check_folder(parser, args, run_config)
    return args, run_config, config


def _data_id(data: Path) -> str:
    """The data as recorded: a resolved path, or a PyKEEN dataset name as given."""
    return str(data.resolve()) if data.exists() else str(data)


def _check_folder(parser: argparse.ArgumentParser, args: argparse.Namespace, run_config: Mapping[str, Any]) -> None:
    """``--out`` is missing, empty, or a run of this command on the same data with the same
    model-defining values (then it is resumed or reported); anything else is refused."""
    from server.checkpoint import model_defining_changes

    out = args.out
    if not out.is_dir() or not any(out.iterdir()):
        return
    recorded = _read_json(out / CONFIG_FILE)
    if recorded is None or recorded.get("writer") != WRITER:
        found = sorted(p.name for p in out.iterdir())
        parser.error(
            f"--out {out} holds files this command did not write ({', '.join(found[:5])}"
            f"{' ...' if len(found) > 5 else ''}); choose a new folder"
        )
    changed = []
    if recorded.get("data", {}).get("source") != _data_id(args.data):
        changed.append(f"--data: the run used {recorded.get('data', {}).get('source')}, now {_data_id(args.data)}")
    changed += [  # a key added since the run began counts with the value the run used (its old default)
        f"{key}: the run used {before!r}, now {now!r}"
        for key, before, now in model_defining_changes(recorded.get("model_defining", {}), run_config)
    ]
    if changed:
        parser.error(
            f"--out {out} holds a run of another configuration ({'; '.join(changed)}); resume it with its own "
            "values or choose a new folder"
        )


def _read_json(file: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _machine() -> dict[str, Any]:
    import torch

    return {
        "device": f"cuda:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _peak_rss_mib() -> float:
    """This process's peak resident set size (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def metrics_rows(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``metrics.jsonl``'s rows from the runner's history: per round the train loss (the last
    epoch's), the valid MRR (``None`` without validation), the valid metrics and the seconds."""
    rows = []
    for entry in history:
        losses = [values[-1] for values in entry.get("losses", {}).values() if values]
        valid = entry.get("valid", {}).get("overall")
        rows.append(
            {
                "round": entry["round"],
                "train_loss": losses[0] if losses else None,
                "valid_mrr": valid["mrr"] if valid else None,
                "valid": valid,
                "seconds": entry.get("seconds"),
            }
        )
    return rows


class RecordingCheckpoint:
    """The run's :class:`client.kge.in_process_rounds.RoundCheckpoint`: ``inner`` (the grid runner's
    :class:`server.checkpoint.FolderCheckpoint`) keeps the state; after each save the history it
    holds is written to ``metrics.jsonl`` (atomically, the whole file: a line killed mid-write is
    written again after the next round), and the last state is kept for the stop reason.

    :param inner: the checkpoint that saves and loads.
    :param metrics_file: ``<out>/metrics.jsonl``.
    """

    def __init__(self, inner: Any, metrics_file: Path) -> None:
        self.inner = inner
        self.metrics_file = metrics_file
        self.last_state: Mapping[str, Any] | None = None

    def load(self) -> tuple[int, Mapping[str, Any], Mapping[str, Any]] | None:
        saved = self.inner.load()
        if saved is not None:
            self.last_state = saved[2]
        return saved

    def save(self, round_number: int, arrays: Mapping[str, Any], state: Mapping[str, Any]) -> None:
        from client.kge.run_folder import write_jsonl

        self.inner.save(round_number, arrays, state)
        self.last_state = state
        write_jsonl(self.metrics_file, metrics_rows(state["history"]))


def _stop_reason(state: Mapping[str, Any] | None, config: Any, rounds: int) -> str:
    if state is not None and state.get("stopped_early"):
        return f"early stopping: {config.patience} validations in a row without a better valid MRR"
    return f"round budget: --rounds {rounds}"


def _load_graph(data: Path) -> Any:
    """One party holding ``data``'s own split with every entity and relation kept.

    :raises kg_datasets.KGDataError: ``data`` is a federation (client folders, a FedE pickle).
    """
    from kg_datasets import KGDataError, KGSplit, load_source
    from kg_datasets.sources import federate

    loaded = load_source(data)
    if not isinstance(loaded, KGSplit):  # client folders or a FedE pickle: already split over clients
        raise KGDataError(
            f"--data {data}: a federation of {len(loaded.clients)} clients; the centralized check takes one graph "
            "(a folder with train.txt/valid.txt/test.txt, an OpenKE folder or a PyKEEN dataset name)"
        )
    return federate(loaded, resplit=False, on_unseen="keep")


def _data_record(data: Path, kg: Any) -> dict[str, Any]:
    client = kg.clients[0]
    return {
        "source": _data_id(data),
        "name": kg.name,
        "split": kg.records.get("split"),
        "entities": client.num_entities,
        "relations": client.num_relations,
        "train": int(client.train.num_triples),
        "valid": int(client.valid.num_triples),
        "test": int(client.test.num_triples),
        "kept_unseen": dict(client.kept_unseen),
    }


def export(out: Path, to: Path) -> None:
    """Copy the finished run's small text files (:data:`EXPORTED`) from ``out`` into ``to`` (atomic writes)."""
    from client.kge.run_folder import atomic_write_text

    to.mkdir(parents=True, exist_ok=True)
    for name in EXPORTED:
        atomic_write_text(to / name, (out / name).read_text(encoding="utf-8"))
    print(f"[central] copied {', '.join(EXPORTED)} to {to}", flush=True)


def run(args: argparse.Namespace, run_config: Mapping[str, Any], config: Any, command: str) -> int:
    """Train (or resume), test, and write the run folder; returns the exit status."""
    import torch

    from client.kge.centralized import run_isolation
    from client.kge.run_folder import atomic_write_text
    from kg_datasets.triples import labels_in_id_order
    from server.checkpoint import FolderCheckpoint, has_checkpoint, model_defining_values, remove_checkpoint

    out: Path = args.out.resolve()
    finished = _read_json(out / FINAL_FILE)
    if finished is not None:
        test = finished["test"]
        print(
            f"[central] {out} is finished (test MRR {test['mrr']:.4f}, best round {finished['best_round']}); "
            "nothing to do",
            flush=True,
        )
        if args.export is not None:
            export(out, args.export)
        return 0
    load_before = _load_average()
    started = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    kg = _load_graph(args.data)
    data = _data_record(args.data, kg)
    print(
        f"[central] {data['name']} ({data['split']} split, one party): {data['entities']} entities, "
        f"{data['relations']} relations, {data['train']} / {data['valid']} / {data['test']} triples "
        f"(kept with an entity or relation unseen in train: {data['kept_unseen'] or 'none'})",
        flush=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    if not has_checkpoint(out):  # a fresh start: rows of an attempt stopped before its first round
        (out / METRICS_FILE).unlink(missing_ok=True)
    record = {
        "writer": WRITER,
        "command": command,
        "data": data,
        "preset": args.preset,
        "set": dict(args.set_values),
        "rounds": args.rounds,
        "run_config": dict(run_config),
        "model_defining": model_defining_values(run_config),
        "config": config.to_run_config(),
    }
    atomic_write_text(out / CONFIG_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    checkpoint = RecordingCheckpoint(
        FolderCheckpoint(out, run_config, labels_in_id_order(kg.entity_to_id)), out / METRICS_FILE
    )
    result = run_isolation(
        kg,
        config,
        args.rounds,
        device=args.device,
        progress=lambda line: print(line, flush=True),
        out_dir=out,
        checkpoint=checkpoint,
    )
    wall = time.perf_counter() - started
    resumed_after = result["resumed_after_round"]
    earlier = sum(e.get("seconds") or 0.0 for e in result["history"] if resumed_after and e["round"] <= resumed_after)
    machine = _machine()
    final = {
        "command": command,
        "data": data,
        "protocol": {
            "name": PROTOCOL,
            "predicted": ["head", "tail"],
            "candidates": data["entities"],
            "filter": "train + valid + test",
            "rank": "realistic (mean of the optimistic and pessimistic rank)",
        },
        "preset": args.preset,
        "set": dict(args.set_values),
        "config": config.to_run_config(),
        "test": result["test"]["overall"],
        "best_valid_mrr": result["best_valid_mrr"],
        "best_round": result["best_round"],
        "rounds_budget": args.rounds,
        "rounds_trained": result["rounds_trained"],
        "stop_reason": _stop_reason(checkpoint.last_state, config, args.rounds),
        "stopping": result.get("stopping"),  # the runner's own record of its stopping rule, where it gives one
        "resumed_after_round": resumed_after,
        "train_seconds": round(result["train_seconds"], 2),
        "wall_seconds": round(wall, 2),
        "wall_seconds_all_attempts": round(wall + earlier, 2),
        "peak_rss_mib": _peak_rss_mib(),
        "peak_rss_of": "this process (after a resume: the last attempt only)",
        "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if torch.cuda.is_available()
        else None,
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        **machine,
    }
    atomic_write_text(out / FINAL_FILE, json.dumps(final, indent=2, sort_keys=True) + "\n")
    remove_checkpoint(out)  # final_metrics.json and clients/0/ hold what the run needs now
    test = final["test"]
    print(
        f"[central] test (standard, {test['num_triples']} triples, {data['entities']} candidates): "
        f"MRR {test['mrr']:.4f}, Hits@1 {test['hits@1']:.4f}, Hits@3 {test['hits@3']:.4f}, "
        f"Hits@10 {test['hits@10']:.4f}; best round {final['best_round']} of {final['rounds_trained']} "
        f"({final['stop_reason']}); {final['wall_seconds']} s, peak RSS {final['peak_rss_mib']} MiB",
        flush=True,
    )
    if args.export is not None:
        export(out, args.export)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 usage or data error, 1 any other failure)."""
    given = list(sys.argv[1:] if argv is None else argv)
    args, run_config, config = parse_and_validate(given)
    command = shlex.join(["python", "scripts/run_central.py", *given])
    return run_main(PROG, lambda: run(args, run_config, config, command))


if __name__ == "__main__":
    sys.exit(main())
