#!/usr/bin/env python
"""The privacy-utility table (issue 34 item 4): FedE plain, under secure aggregation and under local DP, with the
reconstruction attacks of ``scripts/attack_reconstruction.py``, several seeds each, resumable run by run.

Grid: models (default TransE, DistMult) x modes x seeds (default 0 1 2), every model's first seed before any
second one. A mode is one of (:data:`MODES`):

``plain``
    plain FedE; the attacks read each party's upload (``--view uploads``).
``secagg``
    ``--set secure-aggregation=true --view aggregate``: the attacks read only what the server obtains under
    SecAgg+ (the per-row mean over the holders and the holder counts). **The in-process stand-in**: the engine
    computes the plain mean, which equals SecAgg+'s within its quantization step 2c/2^22 per coordinate, so
    the training, hence the test MRR, is plain's by construction; Flower's own SecAgg+ (its MRR against
    plain FedE, bytes and seconds per round, dropped parties) is measured with ``simskip-sim``
    (``docs/how-to/secure-aggregation.md``). Values beyond +-c (SecAgg+'s clipping) are not simulated.
``dp``
    ``--set dp=local --set dp-clip=C --set dp-noise-multiplier=z`` for each ``--noise-multipliers`` z
    (mode ``dp-z<z>``); the attacks read each party's released (clipped, noised) upload. The noise RNG is
    not seeded by ``seed``: a rerun gives other numbers.

Each run is one ``attack_reconstruction.py`` (imported, run in this process) with the run-config ``seed`` and the
random-guess draw's ``--seed`` set to the run's seed, writing ``<out>/<model>/<mode>/seed<k>.json``. A run whose
JSON exists is skipped (written atomically, so it is complete), after checking that it was made with the same
options (``--threads`` and ``--device`` aside); a different one is an input error: remove it or use another
``--out``. Every run's options are checked before the first one starts.

Then ``<out>/summary.json`` (sorted keys) holds, per model and mode: ``test_mrr``, ``seconds_per_round``
(the attack run's ``train_seconds`` over its rounds trained: FedE's training and validation with the data's
loading and the final test, without the attacks), ``rounds_trained`` and ``wall_seconds`` (the whole attack
run, attacks included), each per seed with ``n``, ``mean`` and ``std`` (sample, ``null`` below 2 seeds); per
attack (``selected`` included), party and pair order the precision and recall at ``k`` = :data:`TABLE_K` and
the precision at the party's true pair count (equal to the recall there), per seed with mean and std; per
party the random baseline (expected precision, expected recall at ``k``, candidates, true pairs); under
``dp`` each party's epsilon (whole run) per seed with the delta, ``dp-clip`` and z; under ``secagg`` the
stand-in's note and quantization step; the runs' commands; the seeds done and missing. Bytes per round are
not measured in process (see the how-to above for SecAgg+'s).

Exit status: 0 every run done, 1 a run failed (the others still ran; the summary holds the finished ones),
2 bad input, 130 interrupted (finished runs are kept: rerun to resume).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import shlex
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

PROG = "privacy_table.py"
DEFAULT_DATA = "../shared/data/FB15k-237-Fed3"
DEFAULT_MODELS = ("TransE", "DistMult")
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_NOISE_MULTIPLIERS = (1.0, 4.0, 16.0)
DEFAULT_DP_CLIP = 1.0
#: The number of guesses the table reports (besides each party's true pair count); always passed to ``--k``.
TABLE_K = 100
SUMMARY_FILE = "summary.json"
#: Attack options left out when a finished run's command is compared with the one it would run now.
MACHINE_OPTIONS = ("--threads", "--device")
#: Where Flower's own SecAgg+ is measured.
SECAGG_DOC = "docs/how-to/secure-aggregation.md"
SECAGG_NOTE = (
    "in-process stand-in: the engine computes the plain per-row mean, equal to SecAgg+'s within its quantization "
    "step 2c/2^22, so the training and test MRR are plain FedE's by construction; the attacks read only the "
    "aggregated table (--view aggregate). Flower's SecAgg+ itself (MRR, bytes and seconds per round, dropped "
    f"parties): {SECAGG_DOC}"
)

EXAMPLES = """examples:
  python scripts/privacy_table.py --data UMLS --clients 3 --rounds 20 --models TransE --seeds 0 \\
      --set embedding-dim=64 --set local-epochs=1 --out results/privacy/umls-table
  python scripts/privacy_table.py --data ../shared/data/FB15k-237-Fed3 --rounds 100 \\
      --model-preset DistMult=fb15k237-distmult --set eval-every=5 --device cuda --out results/privacy/fed3
  python scripts/privacy_table.py --out results/privacy/fed3 --summary-only   # summary.json from finished runs
"""


class PrivacyTableError(RuntimeError):
    """A run failed or its outputs cannot be read (the file is named)."""


class Mode(NamedTuple):
    """One column of the table: ``name`` (the folder), ``family`` (:data:`MODES`), ``z`` (dp's noise multiplier)."""

    name: str
    family: str
    z: float | None = None


#: The mode families and what each passes to ``attack_reconstruction.py`` (besides ``--set dp-clip`` for dp).
MODES: dict[str, tuple[str, ...]] = {
    "plain": ("--view", "uploads"),
    "secagg": ("--view", "aggregate", "--set", "secure-aggregation=true"),
    "dp": ("--view", "uploads", "--set", "dp=local"),
}


@functools.cache
def attack_script() -> ModuleType:
    """``scripts/attack_reconstruction.py`` as a module (``scripts/`` is not a package), loaded once."""
    spec = importlib.util.spec_from_file_location(
        "attack_reconstruction", Path(__file__).with_name("attack_reconstruction.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expand_modes(families: Sequence[str], noise_multipliers: Sequence[float]) -> list[Mode]:
    """The table's columns: each family once, ``dp`` once per noise multiplier (``dp-z4``)."""
    modes: list[Mode] = []
    for family in families:
        if family == "dp":
            modes += [Mode(f"dp-z{z:g}", "dp", float(z)) for z in noise_multipliers]
        else:
            modes.append(Mode(family, family))
    return modes


def run_path(out: Path, model: str, mode: Mode, seed: int) -> Path:
    """``<out>/<model>/<mode>/seed<k>.json``."""
    return out / model / mode.name / f"seed{seed}.json"


def attack_argv(args: argparse.Namespace, model: str, mode: Mode, seed: int, out_file: Path) -> list[str]:
    """The ``attack_reconstruction.py`` arguments of one run."""
    argv = ["--data", str(args.data)]
    if args.clients is not None:
        argv += ["--clients", str(args.clients), "--partition", args.partition]
    argv += ["--rounds", str(args.rounds)]
    if args.observe_round is not None:
        argv += ["--observe-round", str(args.observe_round)]
    argv += ["--k", *map(str, sorted({TABLE_K, *args.k})), "--seed", str(seed), "--colluder", str(args.colluder)]
    if args.attacks:
        argv += ["--attacks", *args.attacks]
    preset = args.model_presets.get(model, args.preset)
    if preset is not None:
        argv += ["--preset", preset]
    for item in args.sets:
        argv += ["--set", item]
    argv += ["--set", f"model={model}", "--set", f"seed={seed}", *MODES[mode.family]]
    if mode.family == "dp":
        argv += ["--set", f"dp-clip={args.dp_clip:g}", "--set", f"dp-noise-multiplier={mode.z:g}"]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    argv += ["--device", args.device, "--out", str(out_file)]
    return argv


def comparable(words: Sequence[str]) -> list[str]:
    """An attack command's words without :data:`MACHINE_OPTIONS` and their values (nor ``--out``'s)."""
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in (*MACHINE_OPTIONS, "--out"):
            skip = True
        else:
            kept.append(word)
    return kept


def finished_report(path: Path, argv: Sequence[str]) -> dict[str, Any] | None:
    """The run's report when ``path`` holds it (``None``: not run yet).

    :raises PrivacyTableError: the file is no JSON report, or was made with other options.
    """
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
        words = shlex.split(report["command"])[2:]  # after "python scripts/attack_reconstruction.py"
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PrivacyTableError(f"{path}: not an attack_reconstruction.py report ({error})") from error
    if comparable(words) != comparable(argv):
        raise PrivacyTableError(
            f"{path}: made by another command ({report['command']}), not by this one "
            f"({shlex.join(comparable(argv))}); remove it or use another --out"
        )
    return report


# --- the summary -------------------------------------------------------------------------------------


def stats(per_seed: Mapping[int, float | None]) -> dict[str, Any]:
    """``per_seed`` (seed -> value; ``None`` left out of the statistics) with ``n``, ``mean`` and ``std``
    (sample standard deviation, ``null`` below 2 values)."""
    values = [v for v in per_seed.values() if v is not None]
    return {
        "per_seed": {str(seed): value for seed, value in per_seed.items()},
        "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
    }


def _at(metrics: Mapping[str, Any], key: str, k: int) -> float | None:
    """``metrics[key]`` at ``k`` guesses (``None`` when ``k`` was not asked)."""
    return metrics[key][metrics["k"].index(k)] if k in metrics["k"][:-1] else None


def _attack_cells(reports: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Per attack (``selected`` too), party and order: precision and recall at :data:`TABLE_K`, precision at
    the true count, each per seed with mean and std."""
    cells: dict[str, Any] = {}
    names: dict[str, None] = {}
    for report in reports.values():
        for party in report["parties"].values():
            names.update(dict.fromkeys(party["attacks"]))
            if "selected" in party:
                names["selected"] = None
    for name in names:
        per_party: dict[str, Any] = {}
        parties = {p for report in reports.values() for p in report["parties"]}
        for party in sorted(parties, key=lambda p: (len(p), p)):
            orders: dict[str, Any] = {}
            for order in ("ordered", "unordered"):
                found = {}
                for seed, report in reports.items():
                    entry = report["parties"].get(party, {})
                    found[seed] = entry.get("selected") if name == "selected" else entry.get("attacks", {}).get(name)
                found = {seed: value[order] for seed, value in found.items() if value is not None}
                if not found:
                    continue
                orders[order] = {
                    f"precision_at_{TABLE_K}": stats({s: _at(m, "precision", TABLE_K) for s, m in found.items()}),
                    f"recall_at_{TABLE_K}": stats({s: _at(m, "recall", TABLE_K) for s, m in found.items()}),
                    "precision_at_true_count": stats({s: m["precision"][-1] for s, m in found.items()}),
                }
            if name == "selected" and orders:
                orders["chosen"] = {
                    str(seed): report["parties"][party]["selected"]["attack"]
                    for seed, report in reports.items()
                    if "selected" in report["parties"].get(party, {})
                }
            if orders:
                per_party[party] = orders
        cells[name] = per_party
    return cells


def _random_cells(reports: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Per party and order, the random baseline (the same for every seed: the split is the data's)."""
    first = next(iter(reports.values()))
    cells: dict[str, Any] = {}
    for party, entry in first["parties"].items():
        cells[party] = {
            order: {
                "expected_precision": entry["random"][order]["expected_precision"],
                f"expected_recall_at_{TABLE_K}": _at(
                    {
                        "k": entry["random"][order]["empirical"]["k"],
                        "recall": entry["random"][order]["expected_recall"],
                    },
                    "recall",
                    TABLE_K,
                ),
                "candidates": entry["random"][order]["candidates"],
                "true_pairs": entry["true_pairs"][order],
            }
            for order in ("ordered", "unordered")
        }
    return cells


def _dp_cells(reports: Mapping[int, Mapping[str, Any]]) -> dict[str, Any] | None:
    """Under dp: its parameters and each party's whole-run epsilon per seed (``None`` for another mode)."""
    spent = {seed: report["dp"] for seed, report in reports.items() if report.get("dp")}
    if not spent:
        return None
    first = next(iter(spent.values()))
    parties = sorted({p for dp in spent.values() for p in dp["parties"]}, key=lambda p: (len(p), p))
    return {
        "clip": first["clip"],
        "noise_multiplier": first["noise_multiplier"],
        "delta": first["delta"],
        "accountant": first["accountant"],
        "protected": first["protected"],
        "releases": {p: first["parties"][p]["releases"] for p in parties if p in first["parties"]},
        "epsilon": {p: stats({s: dp["parties"].get(p, {}).get("epsilon") for s, dp in spent.items()}) for p in parties},
    }


def mode_summary(mode: Mode, reports: Mapping[int, Mapping[str, Any]], missing: Sequence[int]) -> dict[str, Any]:
    """One model's one mode, from its finished runs (seed -> report)."""
    entry: dict[str, Any] = {
        "family": mode.family,
        "noise_multiplier": mode.z,
        "seeds_done": sorted(reports),
        "seeds_missing": list(missing),
    }
    if not reports:
        return entry
    first = next(iter(reports.values()))
    entry.update(
        {
            "view": first.get("view", "uploads"),
            "test_mrr": stats({s: r["test_mrr"] for s, r in reports.items()}),
            "seconds_per_round": stats(
                {
                    s: r["train_seconds"] / r["rounds_trained"] if r["rounds_trained"] else None
                    for s, r in reports.items()
                }
            ),
            "rounds_trained": stats({s: r["rounds_trained"] for s, r in reports.items()}),
            "wall_seconds": stats({s: r["wall_seconds"] for s, r in reports.items()}),
            "observed_round": {str(s): r["observed_round"] for s, r in reports.items()},
            "attacks": _attack_cells(reports),
            "random": _random_cells(reports),
            "dp": _dp_cells(reports),
            "secure_aggregation": (
                {**first["secure_aggregation"], "note": SECAGG_NOTE} if first.get("secure_aggregation") else None
            ),
            "commands": {str(s): r["command"] for s, r in reports.items()},
        }
    )
    return entry


def build_summary(
    out: Path, models: Sequence[str], modes: Sequence[Mode], seeds: Sequence[int], command: str
) -> dict[str, Any]:
    """``summary.json``'s content from the finished runs under ``out`` (missing ones are listed)."""
    table: dict[str, Any] = {}
    data = None
    for model in models:
        table[model] = {}
        for mode in modes:
            reports, missing = {}, []
            for seed in seeds:
                path = run_path(out, model, mode, seed)
                if path.exists():
                    try:
                        reports[seed] = json.loads(path.read_text())
                    except (OSError, ValueError) as error:
                        raise PrivacyTableError(f"{path}: unreadable report ({error})") from error
                else:
                    missing.append(seed)
            table[model][mode.name] = mode_summary(mode, reports, missing)
            if reports and data is None:
                first = next(iter(reports.values()))
                data = {**first["data"], "rounds_budget": first["rounds_budget"], "colluder": first["colluder"]}
    return {
        "command": command,
        "data": data,
        "k": TABLE_K,
        "orders": {
            "ordered": "(h, t) pairs of train triples, h != t",
            "unordered": "{h, t} pairs of train triples, h != t",
        },
        "seconds_per_round": "attack run's train_seconds / rounds_trained: FedE training and validation, with "
        "loading the data and the final test; bytes are not measured in process",
        "modes": {mode.name: {"family": mode.family, "noise_multiplier": mode.z} for mode in modes},
        "secure_aggregation_note": SECAGG_NOTE,
        "models": table,
    }


# --- the command -------------------------------------------------------------------------------------


def _model_preset(text: str) -> tuple[str, str | None]:
    model, sep, name = text.partition("=")
    if not sep or not model or not name:
        raise argparse.ArgumentTypeError(f"expected MODEL=PRESET (PRESET none for no preset), got {text!r}")
    return model, None if name == "none" else name


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    from client.kge.config import add_set_option
    from simskip_core.cli_common import CommandParser, add_version, integer, path

    attack = attack_script()
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=EXAMPLES)
    add_version(parser)
    parser.add_argument("--out", type=path, required=True, help="the output folder: one JSON per run, summary.json")
    parser.add_argument(
        "--data", type=path, default=Path(DEFAULT_DATA), help=f"as the attack's (default {DEFAULT_DATA})"
    )
    parser.add_argument("--clients", type=integer(2), default=None, help="parties to partition a single graph into")
    parser.add_argument("--partition", choices=("relation", "triple"), default="relation", help="(default relation)")
    parser.add_argument(
        "--models", nargs="+", default=list(DEFAULT_MODELS), help="KGE models (default TransE DistMult)"
    )
    parser.add_argument(
        "--modes", nargs="+", choices=list(MODES), default=list(MODES), help="mode families (default all)"
    )
    parser.add_argument("--seeds", nargs="+", type=integer(0), default=list(DEFAULT_SEEDS), help="(default 0 1 2)")
    parser.add_argument(
        "--noise-multipliers",
        nargs="+",
        type=float,
        default=list(DEFAULT_NOISE_MULTIPLIERS),
        help="dp's noise multipliers z, one mode each (default 1 4 16)",
    )
    parser.add_argument("--dp-clip", type=float, default=DEFAULT_DP_CLIP, help="dp's dp-clip C (default 1)")
    parser.add_argument("--rounds", type=integer(1), default=20, help="FedE round budget (default 20)")
    parser.add_argument("--observe-round", default=None, help="as the attack's (default its own: last)")
    parser.add_argument(
        "--k", type=integer(1), nargs="+", default=[TABLE_K, 1000], help=f"guesses (always with {TABLE_K})"
    )
    parser.add_argument("--attacks", nargs="+", choices=sorted(attack.ATTACKS), default=None, help="(default all)")
    parser.add_argument("--colluder", type=integer(0), default=0, help="the colluding party (default 0)")
    parser.add_argument("--preset", default=None, help="run-config preset of every model (before --set)")
    parser.add_argument(
        "--model-preset",
        dest="model_presets",
        type=_model_preset,
        action="append",
        default=[],
        help="MODEL=PRESET: that model's preset instead of --preset (none: no preset); repeatable",
    )
    add_set_option(parser, dest="sets", help="a run-config value of every run (KEY=VALUE); repeatable")
    parser.add_argument("--threads", type=integer(1), default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--summary-only", action="store_true", help="run nothing: write summary.json from finished runs"
    )
    return parser


def _reserved(sets: Iterable[str]) -> list[str]:
    """``--set`` keys the table sets itself."""
    owned = {"model", "seed", "secure-aggregation", "dp", "dp-clip", "dp-noise-multiplier", "dp-target-epsilon"}
    return sorted({item.partition("=")[0].strip() for item in sets} & owned)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every missing run, then write ``summary.json``; returns the exit status."""
    from client.kge.run_folder import check_script_outputs, emit_json
    from simskip_core.cli_common import INPUT_ERRORS, run_main

    parser = build_parser()
    args = parser.parse_args(argv)
    args.model_presets = dict(args.model_presets)
    check_script_outputs(parser, inputs=[args.data], folders={"--out": args.out})
    if _reserved(args.sets):
        parser.error(
            f"--set {', '.join(_reserved(args.sets))}: set by the table itself (--models, --seeds, --modes, ...)"
        )
    unknown = sorted(set(args.model_presets) - set(args.models))
    if unknown:
        parser.error(f"--model-preset {unknown}: not among --models {args.models}")
    if any(z <= 0 for z in args.noise_multipliers) or args.dp_clip <= 0:
        parser.error("--noise-multipliers and --dp-clip must be > 0")
    modes = expand_modes(args.modes, args.noise_multipliers)
    command = shlex.join(["python", f"scripts/{PROG}", *(sys.argv[1:] if argv is None else argv)])
    runs = [(model, mode, seed) for seed in args.seeds for model in args.models for mode in modes]
    pending = []
    if not args.summary_only:
        attack = attack_script()
        for model, mode, seed in runs:
            path = run_path(args.out, model, mode, seed)
            run_argv = attack_argv(args, model, mode, seed, path)
            try:
                if finished_report(path, run_argv) is not None:
                    continue
            except PrivacyTableError as error:
                parser.error(str(error))
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                attack.prepare(run_argv)  # every run's options checked before the first one starts
            except SystemExit:
                parser.error(f"{model} {mode.name} seed {seed}: the attack's options were refused (above)")
            pending.append((model, mode, seed, run_argv))

    def work() -> int:
        failed = []
        for done, (model, mode, seed, run_argv) in enumerate(pending, 1):
            started = time.perf_counter()
            print(f"[privacy] run {done}/{len(pending)}: {model} {mode.name} seed {seed}", file=sys.stderr, flush=True)
            try:
                status = attack_script().main(run_argv)
            except SystemExit as stop:  # already checked: only a changed environment gets here
                status = stop.code if isinstance(stop.code, int) else 2
            if status == 130:  # Ctrl-C inside the run (its boundary reported it): stop, keep the finished runs
                print("[privacy] interrupted; finished runs are kept, rerun to resume", file=sys.stderr)
                return 130
            if status != 0:
                failed.append(f"{model} {mode.name} seed {seed}: exit status {status}")
                print(f"[privacy] FAILED {failed[-1]}", file=sys.stderr, flush=True)
            else:
                print(f"[privacy] done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        summary = build_summary(args.out, args.models, modes, args.seeds, command)
        emit_json(json.loads(json.dumps(summary, sort_keys=True)), args.out / SUMMARY_FILE)
        skipped = len(runs) - len(pending) if not args.summary_only else 0
        print(
            f"[privacy] {len(pending) - len(failed)} run(s) done, {skipped} skipped (finished before), "
            f"{len(failed)} failed; {args.out / SUMMARY_FILE}",
            file=sys.stderr,
        )
        for line in failed:
            print(f"[privacy] failed run: {line}", file=sys.stderr)
        return 1 if failed else 0

    return run_main(PROG, work, input_errors=(*INPUT_ERRORS, PrivacyTableError))


if __name__ == "__main__":
    sys.exit(main())
