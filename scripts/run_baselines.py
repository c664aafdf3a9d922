#!/usr/bin/env python
"""KGE-only baseline runs (no SimSkip), several KGE seeds each, resumable run by run.

Grid: datasets x seeds x models x settings (default ``../shared/data/FB15k-237-Fed3`` x seeds 0 1 2 x
{TransE, RotatE, DistMult, ComplEx} x {isolation, fede, collection}), in that order: every model's
first seed before any second one. Each run trains with the Flower-free runners of
:mod:`client.kge.centralized` through ``scripts/run_experiments.py``'s in-process KGE step
(:func:`kge_in_process`: same trainer, evaluator, early stopping and per-round checkpoint as the
grid's cells), the run-config key ``seed`` set to the run's seed.

Two folders per run, ``<split>/<model>/<setting>/seed<k>/`` under each of (``<model>-<variant>`` with
``--variant``, another recipe of the same model):

``--work`` (default ``runs/baselines``, not committed)
    The whole run folder: ``config.json``, ``data/``, the best round's embeddings (``clients/``,
    ``entity_embeddings.npy``), the runner's ``final_metrics.json`` (with its history), and while it
    runs ``checkpoint/`` (removed once the run is exported) and ``run.json`` (the attempts so far).
``--out`` (e.g. ``results/baselines``, committed)
    Small text files only, written once the run finished, ``run.json`` last:

    - ``final_metrics.json``: the Flower run folder's keys (``setting``, ``best_round``,
      ``rounds_run``, ``stopped_early``, ``best_valid_overall``, ``test`` / ``test_overall`` under the
      run's ``eval-protocol``, ``clients``, ``missing_clients``) plus ``rounds_trained``,
      ``rounds_budget``, ``stop_reason`` (the runner's when it records one, else ``patience`` when it
      stopped before the budget and ``round budget`` otherwise), ``stopping`` (the runner's record of
      its stopping rule, with per-party best rounds under ``per-party``), ``test_protocols`` (per protocol
      of :data:`client.kge.protocols.EVAL_PROTOCOLS`: ``overall`` and per-client test metrics of the
      best round's rows, evaluated from the written embeddings; the run's own protocol must agree with
      the runner's test, or the run fails), and every other key the runner returns except its history
      (``config``, ``train_seconds``, ``resumed_after_round``, ...);
    - ``metrics.jsonl``: one line per round: ``round``, ``seconds`` (training and validation),
      ``train`` (per party: the round's last epoch loss), ``valid`` (per party) and ``valid_overall``
      in validated rounds, and any other key the runner records per round;
    - ``run.json``: ``status`` (``done``), ``command`` (the exact invocation) and ``single_run_command``
      (the same options for this run alone), ``dataset``, ``split``, ``model``, ``setting``, ``seed``,
      ``preset``, ``sets`` (the run-config values given), ``config`` (the resolved KGE config),
      ``wall_seconds`` (every attempt's training, plus the final two-protocol test), ``peak_rss_mb``
      (the process's peak resident memory during the run's attempts, the largest of them; with
      ``peak_rss_scope`` ``run`` the peak was reset at each attempt's start, so only memory an earlier
      run of the same process still held counts besides this run's; ``process``: no reset was
      possible, the peak is the process's since it began), the load
      averages and machine at the first start and at the end, and ``attempts``.

A run whose ``--out`` ``run.json`` says ``done`` with the same values is skipped (other values: the
command fails, naming the folder, and nothing is overwritten). An interrupted run resumes after its last
finished round (``--work``'s checkpoint, checked against the run config); one that finished training
but not its export (the runner's ``final_metrics.json`` is in ``--work``) goes straight to the export.

``--preset`` applies one preset to every run; ``{model}`` in its name is replaced by the model's name
in lower case (``--preset fb15k237-{model}``: ``fb15k237-distmult`` for DistMult). Every name is
checked before anything runs. ``scripts/baselines_summary.py`` tabulates ``--out``.

Example (FedE, three seeds, the per-model recipes)::

    python scripts/run_baselines.py --out results/baselines --models DistMult --settings fede \\
        --seeds 0 1 2 --rounds 300 --preset fb15k237-{model} --set stopping=per-party
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from client.kge.config import PAPER_MODELS, ConfigError, add_set_option, parse_set_options
from client.kge.in_process_rounds import ENDED_BY_BUDGET
from client.kge.presets import preset

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS = ("../shared/data/FB15k-237-Fed3",)
DEFAULT_SETTINGS = ("isolation", "fede", "collection")
DEFAULT_SEEDS = (0, 1, 2)
#: Default round budget: large, so that early stopping ends the runs, not the budget.
DEFAULT_ROUNDS = 300
RUN_FILE = "run.json"
FINAL_METRICS = "final_metrics.json"
METRICS_JSONL = "metrics.jsonl"
#: The placeholder of ``--preset`` replaced by each model's lower-case name.
MODEL_PLACEHOLDER = "{model}"
#: Largest difference allowed between the runner's test MRR and the same protocol's MRR re-evaluated
#: from the written embeddings (both evaluate the best round's weights, so they agree to float error).
REPRODUCE_TOLERANCE = 1e-4


class BaselineError(RuntimeError):
    """A baseline run failed or its outputs do not agree (the folder is named)."""


@functools.cache
def sibling(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (``scripts/`` is not a package), loaded once: ``run_experiments``
    (the in-process KGE step) and ``baselines_summary`` (the stop-reason rule)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_subpath(dataset: str, model: str, setting: str, seed: int, variant: str | None = None) -> Path:
    """``<split folder name>/<model>[-<variant>]/<setting>/seed<k>``: a run's place under ``--out`` and
    ``--work`` (a variant is another recipe of the same model: its own row in the tables)."""
    return Path(Path(dataset).name) / row_name(model, variant) / setting / f"seed{seed}"


def row_name(model: str, variant: str | None) -> str:
    """``DistMult`` or, with variant ``reciprocal``, ``DistMult-reciprocal``: the model's folder and table row."""
    return model if variant is None else f"{model}-{variant}"


def preset_name(pattern: str | None, model: str) -> str | None:
    """``pattern`` with :data:`MODEL_PLACEHOLDER` replaced by ``model`` in lower case (``None``: no preset)."""
    return None if pattern is None else pattern.replace(MODEL_PLACEHOLDER, model.lower())


# ----------------------------------------------------------------------------- memory and load
def reset_peak_rss() -> str:
    """Reset this process's peak resident set size where Linux allows it (``/proc/self/clear_refs``).

    :returns: ``"run"`` when the peak now starts afresh, ``"process"`` when it is still the process's.
    """
    import gc

    gc.collect()  # what earlier runs left unreferenced is not counted again
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return "process"
    return "run"


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (``VmHWM``; else ``ru_maxrss``)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ----------------------------------------------------------------------------- the export
def test_all_protocols(work: Path) -> dict[str, dict[str, Any]]:
    """Test metrics of the best round's rows in ``work`` under every protocol of
    :data:`client.kge.protocols.EVAL_PROTOCOLS`: ``{protocol: {"overall", "clients": {id: metrics}}}``.

    Each party's model is its written entity rows (its own, or the global table's) with its written
    relation tensors, as the refinement's ``as-trained`` protocol scores them.

    :raises BaselineError: when a party has no relation tensors that fit its model.
    """
    from client.kge.config import KGEConfig
    from client.kge.evaluation import evaluate_client_protocols, weighted_overall
    from client.kge.protocols import EVAL_PROTOCOLS, as_trained_trainer
    from server.downstream import load_client_inputs

    config = json.loads((work / "config.json").read_text(encoding="utf-8"))
    kge = KGEConfig.from_run_config(config["kge"])
    per_client: dict[str, dict[str, dict[str, float]]] = {}
    for name, inputs in load_client_inputs(work, config["run_config"]).items():
        if inputs["relation_state"] is None:
            raise BaselineError(f"{work / 'clients' / name}: no relation_embeddings.npz to test party {name} with")
        trainer = as_trained_trainer(inputs["graph"], kge, inputs["relation_state"])
        trainer.set_entity_embeddings(inputs["rows"])
        per_client[name] = evaluate_client_protocols(
            trainer.model, inputs["graph"], split="test", protocols=EVAL_PROTOCOLS, batch_size=kge.eval_batch_size
        )
    return {
        protocol: {
            "overall": weighted_overall([per_client[name][protocol] for name in per_client]),
            "clients": {name: per_client[name][protocol] for name in per_client},
        }
        for protocol in EVAL_PROTOCOLS
    }


def export_final_metrics(result: Mapping[str, Any], tests: Mapping[str, Any], where: Path) -> dict[str, Any]:
    """The committed ``final_metrics.json`` of a run (see the module docstring).

    :param result: the in-process runner's result (``final_metrics.json`` in ``--work``).
    :param tests: :func:`test_all_protocols`' metrics.
    :param where: the run's ``--work`` folder (named in errors).
    :raises BaselineError: when the rows written do not reproduce the runner's own test MRR.
    """
    protocol = result.get("config", {}).get("eval-protocol", "standard")
    runner_mrr = float(result["test"]["overall"]["mrr"])
    rows_mrr = float(tests[protocol]["overall"]["mrr"])
    if abs(runner_mrr - rows_mrr) > REPRODUCE_TOLERANCE:
        raise BaselineError(
            f"{where}: the written embeddings give test MRR {rows_mrr:.6f} under {protocol!r}, the runner reported "
            f"{runner_mrr:.6f}: the rows written are not the best round's"
        )
    kept = {key: value for key, value in result.items() if key not in ("history", "test", "best_valid_mrr")}
    reason = sibling("baselines_summary").stop_reason(result)
    return {
        **kept,
        "best_round": result["best_round"],
        "rounds_run": result["rounds_trained"],
        "stopped_early": reason != ENDED_BY_BUDGET,
        "stop_reason": reason,
        "best_valid_overall": {"mrr": result["best_valid_mrr"]},
        "eval_protocol": protocol,
        "test": result["test"]["clients"],
        "test_overall": result["test"]["overall"],
        "test_protocols": dict(tests),
        "clients": sorted(result["test"]["clients"]),
        "missing_clients": [],
    }


def export_metrics_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The committed ``metrics.jsonl`` rows of a run, one per round of the runner's history."""
    rows = []
    for entry in result["history"]:
        row = {key: value for key, value in entry.items() if key not in ("losses", "valid")}
        row["train"] = {party: {"train-loss": losses[-1]} for party, losses in entry["losses"].items() if losses}
        if "valid" in entry:
            row["valid"], row["valid_overall"] = entry["valid"]["clients"], entry["valid"]["overall"]
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- one run
def _same_values(state: Mapping[str, Any], run_sets: Mapping[str, Any], rounds: int, folder: Path, fix: str) -> None:
    """Raise :class:`BaselineError` when ``state`` (a non-empty ``run.json``) records other ``sets`` or
    ``rounds_budget``, or lacks one of them (a run of unknown values is not this run)."""
    if not state:
        return  # nothing there yet
    earlier = {key: state.get(key) for key in ("sets", "rounds_budget")}  # a key missing: unknown values
    if earlier != {"sets": dict(run_sets), "rounds_budget": rounds}:
        raise BaselineError(
            f"{folder} holds a run with other values ({earlier}, now sets {dict(run_sets)}, rounds {rounds}); {fix}"
        )


def run_one(
    out: Path,
    work: Path,
    dataset: str,
    model: str,
    setting: str,
    seed: int,
    *,
    rounds: int,
    sets: Mapping[str, Any],
    preset_used: str | None,
    num_clients: int | None,
    command: str,
    single_run_command: str,
    variant: str | None = None,
) -> dict[str, Any]:
    """Run (or resume, or skip) one baseline run; returns its ``run.json`` content.

    :param out: / work: the ``--out`` and ``--work`` roots (resolved).
    :param dataset: a data folder (resolved) or a PyKEEN dataset name.
    :param sets: the run-config values of every run (the preset's and ``--set``'s); ``seed`` is added.
    :param preset_used: the preset's name, recorded in ``run.json``.
    :param command: / single_run_command: recorded in ``run.json``.
    :param variant: the recipe's variant name (:func:`row_name`), recorded in ``run.json``.
    :raises BaselineError: when the run's folder under ``out`` or ``work`` holds a run of other values.
    """
    from client.kge.run_folder import write_jsonl
    from server.checkpoint import remove_checkpoint

    runner = sibling("run_experiments")
    sub = run_subpath(dataset, model, setting, seed, variant)
    done_file = out / sub / RUN_FILE
    run_sets = {**sets, "seed": seed}
    state = runner.read_json(done_file) or {}
    if state.get("status") == "done":
        # a finished run of other values is not this run: never report it as this one, never overwrite it
        _same_values(state, run_sets, rounds, out / sub, "another --variant or --out")
        print(f"[baselines] {sub}: done, skipped", flush=True)
        return state
    folder = work / sub
    folder.mkdir(parents=True, exist_ok=True)
    state = runner.read_json(folder / RUN_FILE) or {}
    # its checkpoint or finished result belongs to other values: never resume or export it as this run
    _same_values(state, run_sets, rounds, folder, "remove that folder or choose another --work")
    state.update(
        {
            "status": "running",
            "dataset": dataset,
            "split": Path(dataset).name,
            "model": model,
            "variant": variant,
            "setting": setting,
            "seed": seed,
            "preset": preset_used,
            "sets": run_sets,
            "rounds_budget": rounds,
            "command": command,
            "single_run_command": single_run_command,
        }
    )
    state.setdefault("machine_at_start", runner.machine_facts())
    attempt: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "peak_rss_scope": reset_peak_rss(),
    }
    state.setdefault("attempts", []).append(attempt)
    runner.write_json(folder / RUN_FILE, state)
    started = time.perf_counter()
    trained_now = not (folder / FINAL_METRICS).is_file()
    if trained_now:
        runner.kge_in_process(folder, dataset, model, setting, rounds, run_sets, num_clients)
    remove_checkpoint(folder)  # the runner's final_metrics.json and the embeddings hold what it held
    result = json.loads((folder / FINAL_METRICS).read_text(encoding="utf-8"))
    tests = test_all_protocols(folder)
    final = export_final_metrics(result, tests, folder)
    seconds = time.perf_counter() - started
    attempt.update(
        {
            "seconds": round(seconds, 1),
            "trained": trained_now,
            "resumed_after_round": result.get("resumed_after_round") if trained_now else None,
            "peak_rss_mb": peak_rss_mb(),
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        }
    )
    # only a finishing attempt records its seconds: the rounds of the attempts killed before it count with
    # the seconds the runner's history records for them (all of them when this attempt trained none)
    history_seconds = sum(entry.get("seconds", 0.0) for entry in result["history"])
    killed_seconds = runner.kge_run_seconds(result, 0.0) if trained_now else history_seconds
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    state.update(
        {
            "status": "done",
            "config": config["kge"],
            "num_entities": config.get("num_entities"),
            "wall_seconds": round(seconds + killed_seconds, 1),
            "peak_rss_mb": max(a["peak_rss_mb"] for a in state["attempts"] if "peak_rss_mb" in a),
            "peak_rss_scope": "run" if all(a["peak_rss_scope"] == "run" for a in state["attempts"]) else "process",
            "machine_at_end": runner.machine_facts(),
            "rounds_trained": result["rounds_trained"],
            "best_round": result["best_round"],
            "stop_reason": final["stop_reason"],
        }
    )
    target = out / sub
    target.mkdir(parents=True, exist_ok=True)
    runner.write_json(target / FINAL_METRICS, final)
    write_jsonl(target / METRICS_JSONL, export_metrics_rows(result))
    runner.write_json(folder / RUN_FILE, state)
    runner.write_json(done_file, state)  # last: it marks the run as done
    std, fede = (tests[p]["overall"]["mrr"] for p in ("standard", "fede"))
    print(
        f"[baselines] {sub}: done: test MRR {std:.4f} standard / {fede:.4f} FedE protocol, best round "
        f"{result['best_round']} of {result['rounds_trained']} ({final['stop_reason']}), {state['wall_seconds']} s",
        flush=True,
    )
    return state


# ----------------------------------------------------------------------------- the command
def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="committed results (small files only), e.g. results/baselines"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("runs/baselines"),
        help="the whole run folders: data, embeddings, checkpoints (default runs/baselines)",
    )
    parser.add_argument("--models", nargs="+", default=list(PAPER_MODELS))
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=list(DEFAULT_DATASETS),
        help="data folders (relative to the project root) or PyKEEN names (Nations, UMLS, Kinships)",
    )
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), choices=list(DEFAULT_SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS), help="KGE seeds (run-config seed)")
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, help=f"round budget of every run (default {DEFAULT_ROUNDS})"
    )
    parser.add_argument("--clients", type=int, default=3, help="clients for a PyKEEN dataset name (default 3)")
    parser.add_argument(
        "--preset",
        default=None,
        help=f"preset of every run (client/kge/presets.py PRESETS), applied before --set; {MODEL_PLACEHOLDER} "
        "is replaced by the model's name in lower case (e.g. fb15k237-{model})",
    )
    parser.add_argument(
        "--variant",
        default=None,
        type=_variant,
        help="a name for another recipe of the same models (lower-case letters and digits): its runs go to "
        "<model>-<variant>/ and form their own rows, beside the first recipe's (e.g. reciprocal)",
    )
    add_set_option(parser, dest="sets", help="run-config value for every run (KGE keys), repeatable")
    return parser


def _variant(value: str) -> str:
    if not (value.isascii() and value.isalnum() and value == value.lower()):
        raise argparse.ArgumentTypeError(f"--variant must be lower-case letters and digits, got {value!r}")
    return value


def _single_run_command(args: argparse.Namespace, dataset: str, model: str, setting: str, seed: int) -> str:
    """The command line that runs only this run, with the same options."""
    words = ["python", "scripts/run_baselines.py", "--out", str(args.out), "--work", str(args.work)]
    words += ["--datasets", dataset, "--models", model, "--settings", setting, "--seeds", str(seed)]
    words += ["--rounds", str(args.rounds), "--clients", str(args.clients)]
    if args.preset is not None:
        words += ["--preset", args.preset]
    if args.variant is not None:
        words += ["--variant", args.variant]
    for item in args.sets:
        words += ["--set", item]
    return shlex.join(words)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every baseline run; returns the exit status (1 when a run failed; the others still ran)."""
    from client.kge.run_folder import check_script_outputs

    parser = build_parser()
    args = parser.parse_args(argv)
    runner = sibling("run_experiments")
    datasets = [runner.resolve_dataset(d) for d in args.datasets]
    check_script_outputs(parser, inputs=datasets, folders={"--out": args.out, "--work": args.work})
    out, work = args.out.resolve(), args.work.resolve()
    if work == out or out in work.parents or work in out.parents:  # neither need exist yet
        parser.error(
            f"--work {args.work} and --out {args.out} overlap: --out is committed and holds small files only, "
            "the embeddings and checkpoints of --work must stay outside it"
        )
    try:
        sets = parse_set_options(args.sets)
        presets = {model: preset_name(args.preset, model) for model in args.models}
        preset_values = {model: preset(name) for model, name in presets.items()}
    except (ConfigError, ValueError) as error:
        parser.error(str(error))
    if "seed" in sets:
        parser.error("--set seed=... conflicts with --seeds (each run's seed is one of --seeds)")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    command = shlex.join(["python", "scripts/run_baselines.py", *(sys.argv[1:] if argv is None else argv)])
    # every step's code is loaded now, once: a module edited while the runs go on must not be half-imported
    import client.kge.centralized  # noqa: F401
    import server.checkpoint
    import server.downstream  # noqa: F401

    failed = []
    for given, dataset in zip(args.datasets, datasets):
        for seed in args.seeds:
            for model in args.models:
                for setting in args.settings:
                    try:
                        run_one(
                            out,
                            work,
                            dataset,
                            model,
                            setting,
                            seed,
                            rounds=args.rounds,
                            sets={**preset_values[model], **sets},
                            preset_used=presets[model],
                            num_clients=args.clients,
                            command=command,
                            single_run_command=_single_run_command(args, given, model, setting, seed),
                            variant=args.variant,
                        )
                    except KeyboardInterrupt:
                        print("[baselines] interrupted; finished runs are kept, rerun to resume", file=sys.stderr)
                        return 130
                    except Exception as error:  # noqa: BLE001 - one failed run must not stop the others
                        failed.append(f"{dataset} {model} {setting} seed {seed}: {type(error).__name__}: {error}")
                        print(f"[baselines] FAILED {failed[-1]}", file=sys.stderr, flush=True)
    for line in failed:
        print(f"[baselines] failed run: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
