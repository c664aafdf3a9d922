#!/usr/bin/env python
"""Bytes and seconds per FedE round with and without secure aggregation, measured through ``simskip-sim``.

For every graph of ``--data`` the same federation runs twice in Flower's simulation (``simskip-sim``
in a child process: Ray, the real ServerApp and ClientApps, messages serialized): once plain FedE
and once with ``secure-aggregation = true`` (SecAgg+, ``docs/how-to/secure-aggregation.md``), for
``--rounds`` KGE rounds with ``simskip-rounds = 0`` (only the KGE phase), the same seed and the same
settings otherwise (``--set KEY=VALUE`` goes to both runs). From each run folder it reads
``config.json`` (the union size N, the row width d, the parties and their entity counts),
``metrics.jsonl`` (per round: ``bytes_received``, ``bytes_sent``, ``seconds``,
``train_phase_seconds``; :class:`server.records.RoundReport`) and ``final_metrics.json`` (test and
validation MRR), and writes one JSON document (``--out``, atomically), per graph and mode:

* per round: the bytes the server received in the training phase (total, and per party the mean
  over the parties whose update was used: the run folder records the round's total only) and sent,
  its seconds (whole round, training phase, validation); the mean over the rounds after the first
  (round 1 also builds the models);
* plain FedE: each party's upload by its entity count, ``n_k x d x`` the wire dtype's bytes
  (``transfer-dtype``), and whether those add up to the measured total of every round;
* secure: ``server.secure_aggregation.upload_bytes(N, d)``, the size of one party's masked vector,
  beside the measured bytes per party (every reply of the four SecAgg+ stages: the masked vector,
  the public keys and the key shares) and each party's masked vector as the run folder records it
  (``secagg_bytes`` in ``metrics.jsonl``; ``masked_vector_matches_formula``), and the round's
  ``secagg_clipped`` values;
* test and validation MRR of both runs and their absolute difference.

The command, the machine and the load average before and after are recorded. Every child process
is stopped by PID (:func:`client.pids.stop_process`, with its descendants) when it ends, fails,
times out, or on Ctrl-C / SIGTERM. Runs go to ``--work-dir`` (kept), or to a temporary folder that
is removed after a successful run and kept (its path in the error) after a failed one.

    nice -n 10 python scripts/bench_secagg.py --rounds 2 --out results/privacy/secagg-cost.json
    python scripts/bench_secagg.py --data ../shared/data/FB15k-237-Fed3 --out fed3-secagg.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from simskip_core.cli_common import CommandParser, integer, number, path, run_main

PROG = "bench_secagg.py"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ("Nations", "Kinships", "UMLS")
DEFAULT_OUT = Path("results/privacy/secagg-cost.json")

#: The two runs of a graph: mode -> the run-config values that make it (the only difference between them).
MODES: dict[str, dict[str, Any]] = {
    "plain": {"secure-aggregation": False},
    "secure": {"secure-aggregation": True},
}

#: Run-config keys that differ between the two runs by construction (their folders, the mode).
PER_RUN_KEYS = frozenset({"run-dir", "client-data-root", "client-output-root", *MODES["secure"]})


class BenchError(RuntimeError):
    """A run failed, or a run folder lacks what the summary reads; the message names the graph, the
    mode and the file or log."""


# ------------------------------------------------------------------------------ runs
def graph_label(data: str) -> str:
    """The name a graph is reported under: a dataset name as given, a folder by its own name."""
    return Path(data).name if _is_folder(data) else data


def _is_folder(data: str) -> bool:
    return any(c in data for c in "/\\~") or Path(data).expanduser().is_dir()


def _set_value(value: Any) -> str:
    """A run-config value as ``--set`` takes it (TOML-ish: strings quoted, booleans lower case)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def sim_command(
    data: str, run_dir: Path, rounds: int, clients: int, overrides: Mapping[str, Any], mode: str
) -> list[str]:
    """The ``simskip-sim`` argv of one run.

    :param data: a PyKEEN dataset name or a data folder (a folder brings its own parties: no ``--clients``).
    :param run_dir: the run folder (must not exist yet).
    :param rounds: KGE rounds (``--rounds``).
    :param clients: parties of a named dataset.
    :param overrides: run-config values for both modes (``--set``); the mode's own go last.
    :param mode: a key of :data:`MODES`.
    """
    argv = [sys.executable, "-m", "server.simulation", "--dataset", data, "--rounds", str(rounds)]
    if not _is_folder(data):
        argv += ["--clients", str(clients)]
    argv += ["--run-dir", str(run_dir), "--quiet"]
    for key, value in {"simskip-rounds": 0, **overrides, **MODES[mode]}.items():
        argv += ["--set", f"{key}={_set_value(value)}"]
    return argv


def run_child(argv: Sequence[str], log_path: Path, timeout: float, what: str) -> float:
    """Run ``argv`` to its end with its output in ``log_path``; stop it and its descendants by PID
    however this ends (done, error, timeout, Ctrl-C, SIGTERM). Returns its wall seconds.

    :param what: the run's name for the error message.
    :raises BenchError: naming ``what`` and the log when it exits non-zero or outlives ``timeout``.
    """
    from client.pids import stop_process
    from server import signals

    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.perf_counter()
    process = None
    with log_path.open("wb") as log:
        try:
            with signals.deferred():  # no signal between the fork and `process` being set
                process = subprocess.Popen(
                    list(argv), cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise BenchError(
                    f"{what}: simskip-sim ran past --timeout {timeout:g} s (stopped); see {log_path}"
                ) from None
        finally:
            stop_process(process, timeout=30)
    if code != 0:
        raise BenchError(f"{what}: simskip-sim exited with status {code}; see {log_path}")
    return time.perf_counter() - started


# ------------------------------------------------------------------------------ summary
def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise BenchError(f"{what}: cannot read {path}: {err}") from err


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def summarize_run(run_dir: Path, what: str) -> dict[str, Any]:
    """One run folder's figures: the union size, the parties, per round bytes and seconds, the means
    over the rounds after the first, and the final test and validation MRR.

    :param run_dir: a finished ``simskip-sim`` run folder.
    :param what: the run's name for the error message.
    :raises BenchError: naming the file when ``config.json``, ``metrics.jsonl`` or ``final_metrics.json``
        is missing, malformed or holds no round.
    """
    from client.kge.run_folder import JsonlFormatError, read_jsonl

    config = _read_json(run_dir / "config.json", what)
    final = _read_json(run_dir / "final_metrics.json", what)
    metrics_path = run_dir / "metrics.jsonl"
    try:
        num_entities, width = int(config["num_entities"]), int(config["entity_dim"])
        clients = {name: int(info["num_entities"]) for name, info in config["clients"].items()}
        transfer_dtype = str(config["federation"]["transfer_dtype"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise BenchError(f"{what}: {run_dir / 'config.json'} lacks {err}") from err
    try:
        test_mrr, valid_mrr = float(final["test_overall"]["mrr"]), float(final["best_valid_overall"]["mrr"])
    except (KeyError, TypeError, ValueError) as err:
        raise BenchError(f"{what}: {run_dir / 'final_metrics.json'} lacks {err}") from err
    try:
        rows = read_jsonl(metrics_path)
    except (OSError, JsonlFormatError) as err:
        raise BenchError(f"{what}: cannot read {metrics_path}: {err}") from err
    rounds = []
    for line, row in enumerate(rows, start=1):
        try:
            rounds.append(_round_record(row))
        except (KeyError, TypeError, ValueError) as err:
            raise BenchError(f"{what}: {metrics_path} row {line} lacks {err}") from err
    rounds.sort(key=lambda r: r["round"])
    if not rounds:
        raise BenchError(f"{what}: {metrics_path} holds no round")
    later = rounds[1:]
    import numpy as np

    item = np.dtype(transfer_dtype).itemsize
    by_size = {name: count * width * item for name, count in sorted(clients.items())}
    return {
        "run_dir": str(run_dir),
        "num_entities": num_entities,
        "entity_dim": width,
        "transfer_dtype": transfer_dtype,
        "parties": {name: {"num_entities": count} for name, count in sorted(clients.items())},
        "run_config": config.get("run_config", {}),
        "kge": config.get("kge", {}),
        "rounds": rounds,
        "mean_after_first_round": {
            "rounds": [r["round"] for r in later],
            "seconds": _mean([r["seconds"] for r in later]),
            "train_phase_seconds": _mean([r["train_phase_seconds"] for r in later]),
            "bytes_received": _mean([r["bytes_received"] for r in later]),
            "bytes_received_per_party": _mean([r["bytes_received_per_party"] for r in later]),
            "bytes_sent": _mean([r["bytes_sent"] for r in later]),
        },
        "rows_upload_bytes_by_size": by_size,
        "rows_upload_bytes_by_size_total": sum(by_size.values()),
        "test_mrr": test_mrr,
        "valid_mrr": valid_mrr,
        "best_round": final.get("best_round"),
        "rounds_run": final.get("rounds_run", len(rounds)),
        "secagg_clipped": sum(int(r.get("secagg_clipped") or 0) for r in rounds),
    }


def _round_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """One ``metrics.jsonl`` row's bytes and seconds (``bytes_received_per_party``: the total over the
    parties whose update was used, divided by their number)."""
    answered = sorted(row.get("train") or {})
    received = int(row["bytes_received"])
    record: dict[str, Any] = {
        "round": int(row["round"]),
        "seconds": float(row["seconds"]),
        "train_phase_seconds": float(row["train_phase_seconds"]),
        "evaluation_seconds": float(row.get("evaluation_seconds", 0.0)),
        "bytes_received": received,
        "parties_aggregated": answered,
        "bytes_received_per_party": received / len(answered) if answered else None,
        "bytes_sent": int(row["bytes_sent"]),
    }
    if row.get("failures"):
        record["failures"] = list(row["failures"])
    if "secagg_clipped" in row:
        record["secagg_clipped"] = int(row["secagg_clipped"])
    if "secagg_bytes" in row:  # per party: its masked vector and all its replies (run folders since 2026-12-07)
        record["secagg_bytes"] = {name: dict(sizes) for name, sizes in sorted(row["secagg_bytes"].items())}
    return record


def summarize_graph(label: str, data: str, plain: dict[str, Any], secure: dict[str, Any]) -> dict[str, Any]:
    """A graph's two runs side by side: N, d, the parties, the formula's masked vector against the
    measured bytes, the byte ratio, the seconds and the test MRR difference.

    :param plain: / secure: :func:`summarize_run` of each mode.
    :raises BenchError: when the two runs differ in N, d, their parties or a setting other than
        :data:`PER_RUN_KEYS` (they would not measure the same federation).
    """
    from server.secure_aggregation import quantization_step, upload_bytes

    for key in ("num_entities", "entity_dim", "parties", "kge"):
        if plain[key] != secure[key]:
            raise BenchError(f"{label}: the plain and secure runs differ in {key}: {plain[key]} vs {secure[key]}")
    differ = sorted(
        key
        for key in set(plain["run_config"]) | set(secure["run_config"])
        if key not in PER_RUN_KEYS and plain["run_config"].get(key) != secure["run_config"].get(key)
    )
    if differ:
        raise BenchError(f"{label}: the plain and secure runs differ in the run-config keys {differ}")
    num_entities, width = plain["num_entities"], plain["entity_dim"]
    formula = upload_bytes(num_entities, width)
    plain_party = (
        plain["mean_after_first_round"]["bytes_received_per_party"] or plain["rounds"][0]["bytes_received_per_party"]
    )
    secure_party = (
        secure["mean_after_first_round"]["bytes_received_per_party"] or secure["rounds"][0]["bytes_received_per_party"]
    )
    clipping = float(secure["run_config"].get("secagg-clipping-range", 8.0))
    measured = sorted(
        {sizes["masked_vector"] for r in secure["rounds"] for sizes in r.get("secagg_bytes", {}).values()}
    )
    return {
        "graph": label,
        "data": data,
        "num_entities": num_entities,
        "entity_dim": width,
        "num_parties": len(plain["parties"]),
        "parties": plain["parties"],
        "masked_vector_bytes_formula": formula,
        "masked_vector_formula": "server.secure_aggregation.upload_bytes(N, d) = 8 (N (d + 1) + 1 + 48) + 4 x 128",
        # every party's masked vector in every round as the run folder records it (empty: not recorded)
        "masked_vector_bytes_measured": measured,
        "masked_vector_matches_formula": measured == [formula] if measured else None,
        "plain_upload_bytes_per_party": plain_party,
        # the measured plain total of every full round is the parties' rows: n_k x d x the wire dtype's bytes
        "plain_upload_matches_entity_counts": all(
            r["bytes_received"] == plain["rows_upload_bytes_by_size_total"]
            for r in plain["rounds"]
            if not r.get("failures")
        ),
        "secure_reply_bytes_per_party": secure_party,
        "secure_reply_bytes_beyond_masked_vector_per_party": None
        if secure_party is None
        else round(secure_party - formula, 1),
        "bytes_ratio_secure_to_plain": None if not plain_party or secure_party is None else secure_party / plain_party,
        "seconds_per_round_after_first": {
            "plain": plain["mean_after_first_round"]["seconds"],
            "secure": secure["mean_after_first_round"]["seconds"],
        },
        "test_mrr": {"plain": plain["test_mrr"], "secure": secure["test_mrr"]},
        "valid_mrr": {"plain": plain["valid_mrr"], "secure": secure["valid_mrr"]},
        "test_mrr_abs_difference": abs(secure["test_mrr"] - plain["test_mrr"]),
        "secagg_clipping_range": clipping,
        "quantization_step": quantization_step(clipping),
        "modes": {"plain": plain, "secure": secure},
    }


# ------------------------------------------------------------------------------ command
def build_parser() -> argparse.ArgumentParser:
    """The script's argument parser."""
    from client.kge.config import add_set_option

    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        nargs="+",
        default=list(DEFAULT_DATA),
        help="PyKEEN dataset names or data folders (default: Nations Kinships UMLS)",
    )
    parser.add_argument("--rounds", type=integer(1), default=2, help="KGE rounds of every run (default 2)")
    parser.add_argument("--clients", type=integer(2), default=3, help="parties of a named dataset (default 3)")
    add_set_option(parser, dest="sets", help="run-config override for both runs, e.g. --set local-epochs=1")
    parser.add_argument(
        "--timeout",
        type=number(above=0.0),
        default=900.0,
        help="seconds one simskip-sim run may take before it is stopped (default 900)",
    )
    parser.add_argument(
        "--work-dir", type=path, default=None, help="where the run folders and logs go (default: a temporary folder)"
    )
    parser.add_argument("--out", type=path, default=DEFAULT_OUT, help=f"the JSON report (default {DEFAULT_OUT})")
    return parser


def _versions() -> dict[str, str]:
    found = {}
    for name in ("flwr", "torch", "pykeen"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run every graph plain and secure, write the JSON report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    from client.kge.config import parse_set_options
    from client.kge.run_folder import check_script_outputs
    from server import signals

    folders = [d for d in args.data if _is_folder(d)]
    for folder in folders:
        if not Path(folder).expanduser().is_dir():
            parser.error(f"--data: {folder} is not a folder (a PyKEEN dataset name has no '/')")
    check_script_outputs(parser, inputs=folders, files={"--out": args.out}, folders={"--work-dir": args.work_dir})
    try:
        overrides = parse_set_options(args.sets)
    except ValueError as err:
        parser.error(f"--set: {err}")
    clash = sorted(set(overrides) & {*MODES["secure"], "num-server-rounds", "run-dir"})
    if clash:
        parser.error(f"--set {clash[0]}: set by the script itself (the mode, --rounds, the run folder)")
    from server.run_options import check_run_config

    for mode in MODES:  # as simskip-sim checks it, before any run starts
        try:
            check_run_config(
                {
                    "setting": "fede",
                    "num-server-rounds": args.rounds,
                    "simskip-rounds": 0,
                    **overrides,
                    **MODES[mode],
                    "min-clients": args.clients,
                }
            )
        except ValueError as err:
            parser.error(f"--set ({mode} run): {err}")
    labels = [graph_label(d) for d in args.data]
    if len(set(labels)) != len(labels):
        parser.error(f"--data: two graphs share a name: {labels}")

    def interrupt(signum: int) -> BaseException:
        return KeyboardInterrupt(f"signal {signum}")

    with signals.installed(PROG, interrupt):
        return run_main(PROG, lambda: _run(args, argv, overrides, labels))


def _run(args: argparse.Namespace, argv: list[str], overrides: dict[str, Any], labels: list[str]) -> int:
    from client.kge.run_folder import emit_json
    from server.sim_resources import cpu_model

    load_before = [round(x, 2) for x in os.getloadavg()]
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    started = time.perf_counter()
    temporary = args.work_dir is None
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="bench-secagg-"))).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    graphs = []
    for data, label in zip(args.data, labels, strict=True):
        runs = {}
        source = str(Path(data).expanduser().resolve()) if _is_folder(data) else data
        for mode in MODES:
            what = f"{label} ({mode})"
            run_dir = work / f"{label}-{mode}"
            if run_dir.exists():
                raise BenchError(f"{what}: {run_dir} exists already (an earlier run; give another --work-dir)")
            command = sim_command(source, run_dir, args.rounds, args.clients, overrides, mode)
            print(f"[{PROG}] {what}: {shlex.join(command[1:])}", file=sys.stderr, flush=True)
            wall = run_child(command, work / f"{label}-{mode}.log", args.timeout, what)
            runs[mode] = summarize_run(run_dir, what) | {"wall_seconds": round(wall, 2)}
            print(f"[{PROG}] {what}: {wall:.1f} s", file=sys.stderr, flush=True)
        graphs.append(summarize_graph(label, data, runs["plain"], runs["secure"]))
    report = {
        "command": "python scripts/bench_secagg.py " + shlex.join(argv),
        "started_at": started_at,
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": _versions(),
        "rounds": args.rounds,
        "overrides": overrides,
        "about": {
            "bytes_received": "the entity-row payloads the server received in a round's training phase "
            "(metrics.jsonl); secure: every reply of SecAgg+'s four stages (masked vector, public keys, shares)",
            "bytes_received_per_party": "the round's total divided by the parties whose update was used "
            "(the run folder records the total only)",
            "mean_after_first_round": "round 1 also builds the models",
        },
        "graphs": graphs,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    emit_json(report, args.out)
    print(f"[{PROG}] wrote {args.out}", file=sys.stderr, flush=True)
    if temporary:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
