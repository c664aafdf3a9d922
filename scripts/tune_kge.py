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

With ``--optuna N`` the settings are sampled instead (:func:`run_search`): N Optuna trials over
a search space given on the command line (``--space KEY=KIND:ARGS ...``, :func:`parse_space`;
kinds :data:`SPACE_KINDS`), a TPE sampler seeded by ``--sampler-seed``, and a pruner
(:data:`PRUNERS`) that reads each trial's overall valid MRR after every validation round and
stops the trials whose curve falls behind. The chosen trial is the COMPLETE one with the best
valid MRR (ties: the earliest); its test metrics are the only ones written (each run tests its
best round at its end, :func:`client.kge.centralized.run_fede_in_process`; the search keeps that
number in memory and never hands it to the sampler or the pruner).

    python scripts/tune_kge.py --dataset UMLS --rounds 40 --optuna 12 --sampler-seed 0 \\
        --space learning-rate=loguniform:1e-4:1e-1 batch-size=choice:128,256,512 \\
        --out results/tune/umls-optuna.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from client.kge.config import ConfigError, add_set_option
from client.kge.settings import SettingsError, in_process_local_dp

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from kg_datasets import FederatedKG

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


# --- the Optuna mode ------------------------------------------------------------------------------


class Dimension(NamedTuple):
    """One key of a search space (a named tuple: ``scripts/`` modules are loaded outside
    ``sys.modules`` by the tests, where a dataclass cannot resolve its annotations).

    :param key: the run-config key (a KGE key: what the in-process FedE run reads).
    :param kind: one of :data:`SPACE_KINDS`.
    :param low: / high: the range of a numeric kind (inclusive).
    :param choices: a ``choice``'s values as written; ``values``: the same parsed as ``--set`` parses them.
    """

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[str, ...] = ()
    values: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value of this key (the sampler's pick)."""
        if self.kind == "choice":
            return self.values[self.choices.index(trial.suggest_categorical(self.key, list(self.choices)))]
        if self.kind in ("int", "logint"):
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.kind == "logint")
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.kind == "loguniform")

    def corners(self) -> tuple[Any, ...]:
        """The values checked before any trial: every choice, or both ends of the range (in the
        type the sampler gives, so an int key with a float range fails here)."""
        if self.kind == "choice":
            return self.values
        if self.kind in ("int", "logint"):
            return (int(self.low), int(self.high))
        return (float(self.low), float(self.high))

    def param(self, text: str) -> Any:
        """``text`` (read as ``--set`` reads it) as this dimension's Optuna parameter: the choice's
        text for a choice, the number for a range (:func:`enqueue_params`).

        :raises ConfigError: for a value outside the choices or the range."""
        from client.kge.config import parse_set_options

        value = parse_set_options([f"{self.key}={text}"])[self.key]
        if self.kind == "choice":
            if value not in self.values:
                raise ConfigError(f"{self.key}={text} is not one of the choices {list(self.choices)}")
            return self.choices[self.values.index(value)]
        number = int(value) if self.kind in ("int", "logint") else float(value)
        if not float(self.low) <= number <= float(self.high):
            raise ConfigError(f"{self.key}={text} is outside the range [{self.low}, {self.high}]")
        return number

    def describe(self) -> dict[str, Any]:
        """The dimension as JSON."""
        if self.kind == "choice":
            return {"key": self.key, "kind": self.kind, "choices": list(self.values)}
        return {"key": self.key, "kind": self.kind, "low": self.low, "high": self.high}


def _range(kind: str, *, integer: bool, log: bool) -> Callable[[str, str], Dimension]:
    def make(key: str, args: str) -> Dimension:
        from client.kge.config import parse_set_options

        ends = args.split(":")
        if len(ends) != 2:
            raise ConfigError(f"--space {key}={kind}:{args}: expected {kind}:LOW:HIGH")
        low, high = (parse_set_options([f"{key}={end}"])[key] for end in ends)
        wanted = (int,) if integer else (int, float)
        for end in (low, high):
            if isinstance(end, bool) or not isinstance(end, wanted):
                what = "an integer" if integer else "a number"
                raise ConfigError(f"--space {key}={kind}:{args}: {end!r} is not {what}")
        if not low < high:
            raise ConfigError(f"--space {key}={kind}:{args}: LOW must be below HIGH")
        if log and not low > 0:
            raise ConfigError(f"--space {key}={kind}:{args}: a log scale needs LOW > 0")
        return Dimension(key, kind, low=low, high=high)

    return make


def _choice(key: str, args: str) -> Dimension:
    from client.kge.config import parse_set_options

    texts = tuple(text.strip() for text in args.split(","))
    if any(not text for text in texts) or len(set(texts)) != len(texts):
        raise ConfigError(f"--space {key}=choice:{args}: expected distinct values v1,v2,...")
    return Dimension(key, "choice", choices=texts, values=tuple(parse_set_options([f"{key}={t}"])[key] for t in texts))


#: ``KIND -> (key, ARGS) -> Dimension``: the kinds of ``--space KEY=KIND:ARGS``.
SPACE_KINDS: Mapping[str, Callable[[str, str], Dimension]] = {
    "uniform": _range("uniform", integer=False, log=False),
    "loguniform": _range("loguniform", integer=False, log=True),
    "int": _range("int", integer=True, log=False),
    "logint": _range("logint", integer=True, log=True),
    "choice": _choice,
}


def parse_space(items: Sequence[str], fixed: Mapping[str, Any] | None = None) -> list[Dimension]:
    """``["learning-rate=loguniform:1e-4:1e-1", "batch-size=choice:128,256"]`` -> the search space.

    Every key must be a registered KGE run-config key (what the in-process FedE run reads) given
    once and not also in ``fixed``; every choice and both ends of every range are checked as a
    run config on top of ``fixed`` (types and ranges of :class:`client.kge.config.KGEConfig`, the
    named choices of :func:`client.kge.run_config.check_choices`), so a bad space fails here,
    before any trial, naming the key.

    :param items: ``KEY=KIND:ARGS`` with KIND one of :data:`SPACE_KINDS` (``uniform:LOW:HIGH``,
        ``loguniform:LOW:HIGH``, ``int:LOW:HIGH``, ``logint:LOW:HIGH``, ``choice:V1,V2,...``;
        values are read as ``--set`` reads them).
    :param fixed: the run-config values every trial shares (``--set``).
    :raises ConfigError: naming the item or key and what is wrong with it.
    """
    from client.kge.config import KGEConfig
    from client.kge.run_config import REGISTRY, check_choices

    fixed = dict(fixed or {})
    kge_keys = sorted(name for name, key in REGISTRY.items() if key.owner == "kge")
    space: list[Dimension] = []
    for item in items:
        key, sep, spec = item.partition("=")
        key = key.strip()
        kind, colon, args = spec.partition(":")
        if not sep or not key or not colon:
            raise ConfigError(f"--space {item!r}: expected KEY=KIND:ARGS with KIND one of {sorted(SPACE_KINDS)}")
        if key not in REGISTRY:
            raise ConfigError(f"--space {item!r}: unknown run-config key {key!r}; the KGE keys are {kge_keys}")
        if REGISTRY[key].owner != "kge":
            raise ConfigError(
                f"--space {item!r}: {key!r} is a {REGISTRY[key].owner} key, which the in-process FedE run "
                f"does not read; the KGE keys are {kge_keys}"
            )
        if key in fixed:
            raise ConfigError(f"--space {item!r}: {key!r} is also fixed by --set")
        if any(dimension.key == key for dimension in space):
            raise ConfigError(f"--space {item!r}: {key!r} is given twice")
        if kind not in SPACE_KINDS:
            raise ConfigError(f"--space {item!r}: unknown kind {kind!r}; kinds are {sorted(SPACE_KINDS)}")
        dimension = SPACE_KINDS[kind](key, args)
        if REGISTRY[key].type is int and kind in ("uniform", "loguniform"):
            raise ConfigError(f"--space {item!r}: {key} must be int, and {kind} samples floats (use int or logint)")
        for value in dimension.corners():
            try:
                check_choices({key: value})
                KGEConfig.from_run_config({**fixed, key: value})
            except ConfigError as exc:
                raise ConfigError(f"--space {item!r}: {exc}") from None
        space.append(dimension)
    if not space:
        raise ConfigError("--optuna needs a search space (--space KEY=KIND:ARGS ...)")
    return space


def enqueue_params(items: Sequence[str], space: Sequence[Dimension]) -> dict[str, Any]:
    """``["loss=crossentropy", "learning-rate=1.05e-3", ...]`` -> one trial's Optuna parameters
    (``--enqueue``: a setting the search runs first, e.g. another model's recipe, before the sampler's
    own; it competes under the same rule). Every key of the space must be given, once.

    :raises ConfigError: naming the key that is unknown, missing, repeated or out of its space."""
    by_key = {dimension.key: dimension for dimension in space}
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in by_key:
            raise ConfigError(f"--enqueue {item!r}: expected KEY=VALUE with KEY one of the space's {sorted(by_key)}")
        if key in params:
            raise ConfigError(f"--enqueue {item!r}: {key!r} is given twice")
        try:
            params[key] = by_key[key].param(text.strip())
        except ConfigError as exc:
            raise ConfigError(f"--enqueue {item!r}: {exc}") from None
    missing = sorted(set(by_key) - set(params))
    if missing:
        raise ConfigError(f"--enqueue {' '.join(items)!r}: give a value for every key of the space; missing {missing}")
    return params


def _median(args: argparse.Namespace) -> tuple[optuna.pruners.BasePruner, dict[str, Any]]:
    import optuna

    settings = {
        "n_startup_trials": args.prune_startup,
        "n_warmup_steps": args.prune_warmup,
        "n_min_trials": args.prune_min_trials,
    }
    return optuna.pruners.MedianPruner(**settings), {"name": "median", **settings}


def _hyperband(args: argparse.Namespace) -> tuple[optuna.pruners.BasePruner, dict[str, Any]]:
    import optuna

    settings = {"min_resource": max(1, args.prune_warmup), "max_resource": args.rounds, "reduction_factor": 3}
    return optuna.pruners.HyperbandPruner(**settings), {"name": "hyperband", **settings}


def _no_pruner(args: argparse.Namespace) -> tuple[optuna.pruners.BasePruner, dict[str, Any]]:
    import optuna

    return optuna.pruners.NopPruner(), {"name": "none"}


#: ``--pruner NAME -> args -> (pruner, its settings as JSON)``. A pruner's step is the round number
#: of a validation round; its value the overall valid MRR after that round.
PRUNERS: dict[str, Callable[[argparse.Namespace], tuple[optuna.pruners.BasePruner, dict[str, Any]]]] = {
    "median": _median,
    "hyperband": _hyperband,
    "none": _no_pruner,
}


def make_study(
    *,
    sampler_seed: int,
    tpe_startup: int,
    pruner: optuna.pruners.BasePruner,
    storage: Path | None = None,
    study_name: str = "tune_kge",
) -> optuna.Study:
    """A maximizing study with a seeded TPE sampler (``tpe_startup`` random trials first); with
    ``storage`` an SQLite file that a later call with the same name resumes.

    Optuna does not store a sampler's random state, so a resumed study's sampler is seeded with
    ``sampler_seed`` plus the number of trials the study already holds: seeded afresh with
    ``sampler_seed`` it would redraw the first process's random start (a Fed3 ComplEx search spent a
    trial re-running trial 0's setting that way)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=tpe_startup),
        pruner=pruner,
        storage=f"sqlite:///{storage}" if storage is not None else None,
        study_name=study_name,
        load_if_exists=storage is not None,
    )
    if study.trials:
        study.sampler = optuna.samplers.TPESampler(seed=sampler_seed + len(study.trials), n_startup_trials=tpe_startup)
    return study


#: A trial's record kept in its user attributes (what the JSON reports and a resumed study reads).
_RECORD_KEYS = (
    "setting",
    "valid_curve",
    "train_seconds",
    "wall_seconds",
    "rounds_trained",
    "best_round",
    "stop_reason",
)


def run_search(
    study: optuna.Study,
    kg: FederatedKG,
    space: Sequence[Dimension],
    fixed: Mapping[str, Any],
    rounds: int,
    n_trials: int,
    *,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[int, dict[str, Any]]:
    """Run trials until the study holds ``n_trials`` finished ones (a resumed study runs the rest).

    A trial samples a setting (:meth:`Dimension.suggest`), runs FedE in-process for up to
    ``rounds`` rounds on top of ``fixed`` and reports the overall valid MRR after every validation
    round (``trial.report``; pruned when ``trial.should_prune()``). Its value is its best valid
    MRR. A trial that raises is recorded as FAIL with the error, and the search goes on.

    A ``KeyboardInterrupt`` (Ctrl-C, or ``timeout -s INT`` ending a time-capped search) ends the search
    the search: the running trial notes it (``stop_reason`` :data:`INTERRUPTED_BY_OPERATOR`, so a resumed
    study runs it again), Optuna records it as FAIL, and what finished before it is returned as usual.

    :param on_trial: called with each finished trial's record (:func:`trial_records`).
    :returns: the test report of each COMPLETE trial of this call (trial number -> ``{"overall",
        "best_round"}``), kept in memory only: the caller writes the chosen trial's; and whether the
        search was interrupted.
    """
    import optuna

    from client.kge.centralized import run_fede_in_process
    from client.kge.config import KGEConfig
    from client.kge.in_process_rounds import ENDED_BY_BUDGET

    tested: dict[int, dict[str, Any]] = {}

    def objective(trial: optuna.Trial) -> float:
        setting = {dimension.key: dimension.suggest(trial) for dimension in space}
        trial.set_user_attr("setting", setting)
        curve: list[list[float]] = []
        started = time.perf_counter()

        def note(**values: Any) -> None:
            for name, value in values.items():
                trial.set_user_attr(name, value)
            trial.set_user_attr("wall_seconds", round(time.perf_counter() - started, 2))

        def on_round(info: Mapping[str, Any]) -> None:
            note(rounds_trained=info["round"], train_seconds=round(info["train_seconds"], 2))
            if info["valid_mrr"] is None:
                return
            curve.append([info["round"], round(info["valid_mrr"], 4)])
            note(valid_curve=curve)
            trial.report(info["valid_mrr"], info["round"])
            if not info["stop"] and info["round"] < rounds and trial.should_prune():
                note(stop_reason=f"pruned after round {info['round']} (valid MRR {info['valid_mrr']:.4f})")
                raise optuna.TrialPruned()

        try:
            config = KGEConfig.from_run_config({**fixed, **setting})
            result = run_fede_in_process(kg, config, rounds, progress=lambda line: None, on_round=on_round)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            note(stop_reason=INTERRUPTED_BY_OPERATOR)
            raise
        except Exception as exc:
            note(stop_reason=f"failed: {type(exc).__name__}: {exc}")
            raise
        stopped = result["stopping"]["ended_by"] != ENDED_BY_BUDGET
        note(
            best_round=result["best_round"],
            stop_reason=(
                f"early stopping ({config.patience} validations without a better valid MRR)"
                if stopped
                else f"round budget ({rounds} rounds)"
            ),
        )
        tested[trial.number] = {"overall": result["test"]["overall"], "best_round": result["best_round"]}
        return float(result["best_valid_mrr"])

    def finished(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if on_trial is not None:
            on_trial(next(row for row in trial_records(study) if row["number"] == trial.number))

    done = sum(
        1
        for t in study.trials
        if t.state.is_finished() and not str(t.user_attrs.get("stop_reason", "")).startswith("interrupted")
    )
    interrupted = False
    if n_trials > done:
        try:
            study.optimize(objective, n_trials=n_trials - done, catch=(Exception,), callbacks=[finished])
        except KeyboardInterrupt:  # the running trial noted it (objective) and Optuna told it FAIL
            interrupted = True
    return tested, interrupted


#: The ``stop_reason`` of the trial a Ctrl-C or ``timeout -s INT`` ended (a resumed study runs it again).
INTERRUPTED_BY_OPERATOR = "interrupted (the search was stopped)"

#: How a search's setting is chosen (and a recipe's, over several searches: :func:`best_recorded_trial`).
CHOICE_RULE = "the COMPLETE trial with the best valid MRR (ties: the earliest trial)"


def best_recorded_trial(searches: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
    """:data:`CHOICE_RULE` over the written JSON of one or more Optuna searches (ties: the earlier
    search, then the earlier trial), from what the JSON holds (values rounded to 4 digits).

    :returns: ``(search, trial)`` (the trial's row of ``search["trials"]``), ``None`` when no trial
        completed.
    """
    best: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None
    for search in searches:
        for trial in sorted(search["trials"], key=lambda row: row["number"]):
            if trial["state"] == "COMPLETE" and (best is None or trial["value"] > best[1]["value"]):
                best = (search, trial)
    return best


def trial_records(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial of ``study`` as JSON: number, state (COMPLETE / PRUNED / FAIL / RUNNING), value
    (best valid MRR, COMPLETE only), params (as sampled) and the record kept while it ran
    (setting, ``valid_curve`` as ``[round, MRR]`` pairs, train and wall seconds, the round it
    stopped at, its best round, why it stopped)."""
    rows = []
    for trial in study.trials:
        attrs = trial.user_attrs
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                # a pruned trial's value in Optuna is its last report: the curve has it
                "value": round(trial.value, 4) if trial.state.name == "COMPLETE" else None,
                "params": dict(trial.params),
                "enqueued": "fixed_params" in trial.system_attrs,  # given by --enqueue, not sampled
                **{key: attrs.get(key) for key in _RECORD_KEYS},
            }
        )
    return rows


def _machine() -> dict[str, Any]:
    import optuna
    import torch

    return {
        "device": f"cuda:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
    }


def refuse_privacy_keys(fixed: Mapping[str, Any]) -> None:
    """A search chooses a recipe on plain in-process FedE: ``dp = local`` and ``secure-aggregation = true``
    in ``--set`` are refused (:func:`client.kge.settings.in_process_local_dp`), never silently ignored.

    :raises client.kge.settings.SettingsError: naming the key.
    """

    in_process_local_dp(fixed, command="tune_kge.py (a recipe search on plain in-process FedE)", honours_dp=False)


def _load_dataset(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """``--dataset`` split over ``--clients`` parties; a dataset that cannot be read ends the command with
    the loader's message (which names the path and what is wrong), not a traceback."""
    from kg_datasets import KGDataError, load_federated

    try:
        return load_federated(args.dataset, num_clients=args.clients, seed=0, on_unseen=args.on_unseen)
    except KGDataError as exc:
        parser.error(f"--dataset {args.dataset}: {exc}")


def _optuna_main(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str]) -> int:
    """The ``--optuna N`` mode: parse and check the space, search, test the chosen trial, write JSON."""
    import optuna

    from client.kge.centralized import run_fede_in_process
    from client.kge.config import KGEConfig, parse_set_options
    from client.kge.run_folder import emit_json

    started = time.perf_counter()
    load_before = list(os.getloadavg())
    try:
        fixed = {"eval-every": 1, **parse_set_options(args.sets)}
        KGEConfig.from_run_config(fixed)
        refuse_privacy_keys(fixed)
        space = parse_space(args.space, fixed)
        enqueued = [enqueue_params(items, space) for items in args.enqueue]
    except (ConfigError, SettingsError) as exc:
        parser.error(str(exc))
    if args.pruner not in PRUNERS:
        parser.error(f"--pruner {args.pruner!r}: choose one of {sorted(PRUNERS)}")
    pruner, pruner_settings = PRUNERS[args.pruner](args)
    study_name = args.study_name or (args.out.stem if args.out is not None else "tune_kge")
    study = make_study(
        sampler_seed=args.sampler_seed,
        tpe_startup=args.tpe_startup,
        pruner=pruner,
        storage=args.storage,
        study_name=study_name,
    )
    search = {
        "dataset": args.dataset,
        "clients": args.clients,
        "on_unseen": args.on_unseen,
        "rounds": args.rounds,
        "fixed": fixed,
        "space": [dimension.describe() for dimension in space],
        "sampler": {"name": "TPESampler", "seed": args.sampler_seed, "n_startup_trials": args.tpe_startup},
        "pruner": pruner_settings,
    }
    if study.user_attrs.get("search", search) != search:  # a resumed study must be the same search
        parser.error(
            f"--storage {args.storage} holds study {study_name!r} of another search: "
            f"{json.dumps(study.user_attrs['search'])}"
        )
    study.set_user_attr("search", search)
    for params in enqueued:  # a resumed study that already holds it (run or waiting) skips it
        study.enqueue_trial(params, skip_if_exists=True)
    for trial in study.trials:  # left running by a process that ended: recorded, not counted as run
        if trial.state == optuna.trial.TrialState.RUNNING:
            study._storage.set_trial_user_attr(trial._trial_id, "stop_reason", "interrupted (its process ended)")
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    kg = _load_dataset(parser, args)
    machine = _machine()

    def report(
        chosen: dict[str, Any] | None, chosen_test: dict[str, Any] | None, interrupted: bool = False
    ) -> dict[str, Any]:
        trials = trial_records(study)
        return {
            "mode": "optuna",
            "command": shlex.join(["python", "scripts/tune_kge.py", *argv]),
            **search,
            "objective": "the trial's best overall valid MRR (the run's eval-protocol); no test number is used",
            "n_trials": args.optuna,
            "enqueued": enqueued,
            "storage": str(args.storage) if args.storage is not None else None,
            "study_name": study_name,
            "machine": machine,
            "load_average_before": load_before,
            "states": {
                state: sum(t["state"] == state for t in trials) for state in sorted({t["state"] for t in trials})
            },
            "trials": trials,
            "rule": CHOICE_RULE,
            "interrupted": interrupted,
            "chosen": chosen,
            "chosen_test": chosen_test,
            "wall_seconds": round(time.perf_counter() - started, 2),
            "load_average_after": list(os.getloadavg()),
        }

    def on_trial(row: dict[str, Any]) -> None:
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.out is not None:  # the search so far, in case it is stopped
            emit_json(report(None, None), args.out)

    tested, interrupted = run_search(study, kg, space, fixed, args.rounds, args.optuna, on_trial=on_trial)
    if interrupted:
        print("search stopped (interrupt): choosing among the trials that completed", file=sys.stderr)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        if args.out is not None:
            emit_json(report(None, None, interrupted), args.out)
        print(f"no trial completed ({len(study.trials)} trials; see their stop_reason)", file=sys.stderr)
        return 130 if interrupted else 1
    best = max(complete, key=lambda t: (t.value, -t.number))
    chosen = {
        "trial": best.number,
        "setting": best.user_attrs["setting"],
        "best_valid_mrr": round(best.value, 4),
        "best_round": best.user_attrs.get("best_round"),
    }
    if best.number in tested:
        chosen_test = {**tested[best.number], "source": "the chosen trial's own run (best round's weights)"}
    elif interrupted:  # no re-run after an interrupt: the operator asked the search to end
        chosen_test = None
    else:  # chosen from an earlier process of a resumed study: the same run again (seeded)
        config = KGEConfig.from_run_config({**fixed, **best.user_attrs["setting"]})
        rerun = run_fede_in_process(kg, config, args.rounds, progress=lambda line: None)
        chosen_test = {
            "overall": rerun["test"]["overall"],
            "best_round": rerun["best_round"],
            "source": "a re-run of the chosen setting (its trial ran in an earlier process)",
        }
    emit_json(report(chosen, chosen_test, interrupted), args.out)
    return 130 if interrupted else 0


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
    parser.add_argument(
        "--on-unseen",
        choices=("error", "drop"),
        default="error",
        help="valid/test triples with an entity or relation unseen in their party's train (default error)",
    )
    parser.add_argument("--out", type=Path, default=None)
    optuna_mode = parser.add_argument_group("Optuna mode (instead of --grid)")
    optuna_mode.add_argument("--optuna", type=int, default=None, metavar="N", help="run N Optuna trials")
    optuna_mode.add_argument(
        "--space",
        nargs="+",
        default=[],
        metavar="KEY=KIND:ARGS",
        help=f"the search space; KIND one of {', '.join(SPACE_KINDS)} (e.g. learning-rate=loguniform:1e-4:1e-1 "
        "batch-size=choice:128,256 local-epochs=int:1:3)",
    )
    optuna_mode.add_argument("--sampler-seed", type=int, default=0, help="the TPE sampler's seed (default 0)")
    optuna_mode.add_argument(
        "--tpe-startup", type=int, default=5, help="random trials before TPE models the results (default 5)"
    )
    optuna_mode.add_argument("--pruner", default="median", help=f"one of {', '.join(PRUNERS)} (default median)")
    optuna_mode.add_argument(
        "--prune-startup", type=int, default=3, help="median: no pruning before this many trials complete (default 3)"
    )
    optuna_mode.add_argument(
        "--prune-warmup",
        type=int,
        default=3,
        help="median: no pruning before this round; hyperband: its minimum rounds (default 3)",
    )
    optuna_mode.add_argument(
        "--prune-min-trials",
        type=int,
        default=3,
        help="median: no pruning at a round fewer completed trials reached (default 3; with early stopping "
        "few reach the late rounds, where the median of one trial is that trial)",
    )
    optuna_mode.add_argument(
        "--storage", type=Path, default=None, help="an SQLite file keeping the study (a rerun resumes it)"
    )
    optuna_mode.add_argument(
        "--enqueue",
        nargs="+",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of every --space key to run before the sampler's trials (repeatable: one per trial; "
        "e.g. another model's recipe); it competes under the same rule",
    )
    optuna_mode.add_argument("--study-name", default=None, help="the study's name in --storage (default: --out's stem)")
    args = parser.parse_args(argv)
    from client.kge.run_folder import check_script_outputs  # the project's one output rule

    check_script_outputs(parser, inputs=[args.dataset], files={"--out": args.out, "--storage": args.storage})
    if args.optuna is not None:
        if args.grid:
            parser.error("--grid and --optuna are two modes: give one")
        if args.optuna < 1:
            parser.error(f"--optuna must be >= 1, got {args.optuna}")
        return _optuna_main(parser, args, sys.argv[1:] if argv is None else list(argv))
    if args.space or args.storage is not None or args.enqueue:
        parser.error("--space, --storage and --enqueue belong to the Optuna mode: add --optuna N")

    import torch

    from client.kge.centralized import run_fede_in_process
    from client.kge.config import KGEConfig, parse_set_options
    from client.kge.run_folder import emit_json

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    fixed = {"eval-every": 1, **parse_set_options(args.sets)}
    try:
        refuse_privacy_keys(fixed)
    except SettingsError as exc:
        parser.error(str(exc))
    kg = _load_dataset(parser, args)
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
