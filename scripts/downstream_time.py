#!/usr/bin/env python
"""Where the SimSkip phase and the downstream protocols spend their time, from the committed grid cells; one JSON.

Reads ``results/grid/<split>/<model>/results.json`` (+ ``cell.json`` beside it, and the sub-cells
``structure/``, ``isolation/``, ``collection/``) as ``scripts/run_experiments.py`` wrote them and
writes, per cell and summed (per split and over the four FB15k-237-Fed3 main cells):

* recorded: the SimSkip phase seconds (``run.simskip_seconds``), the downstream seconds
  (``run.downstream_seconds``), every protocol's seconds per client (``protocols.<label>.seconds``),
  ``cell.json``'s ``refine_seconds`` and the epochs run of the tested rows (``protocols.<label>.epochs``);
* derived (each named in ``derivations``, with how): the work counts of the downstream loop of
  :func:`client.kge.comparison.evaluate_client_rows` (model builds, valid checks, training epochs,
  test rankings; the epochs of candidates not chosen inferred from their valid scores), a split of
  each protocol's seconds into training / valid checks / test ranking and per row kind and seed,
  and flags for work the records show to be redundant.

Nothing is measured here: every second is one a cell recorded.

    python scripts/downstream_time.py                       # results/grid -> results/downstream-speed/time-breakdown.json
    python scripts/downstream_time.py --grid results/grid --out /tmp/breakdown.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GRID = ROOT / "results" / "grid"
DEFAULT_OUT = ROOT / "results" / "downstream-speed" / "time-breakdown.json"
#: The issue's target for the SimSkip phase plus every downstream protocol of one Fed3 cell (issue 33, item 3).
TARGET_SECONDS = 360.0
MAIN_SPLIT = "FB15k-237-Fed3"
SUBCELLS = ("structure", "isolation", "collection")
ROW_KINDS = ("unrefined", "refined", "other_candidates", "perturbed")

DERIVATIONS = {
    "candidates": "search settings (simskip-search, ';'-separated, 'none' = 1) x skip strengths > 0 "
    "(simskip-gate-grid): RefinementConfig.candidates()",
    "simskip_encoders": "search settings x downstream-seeds (+ downstream-seeds no-skip encoders with "
    "simskip-no-skip-ablation): RefinementConfig.variants(); seconds_per_encoder = simskip_seconds / encoders "
    "(the encoders train one after another in every round)",
    "outside_seconds": "cell.json refine_seconds - simskip_seconds - downstream_seconds: loading the run folder, "
    "the as-trained relation check, the report (paired bootstrap intervals) and the files; null where a "
    "checkpoint restored part of the phase",
    "runs": "model builds of run_protocol (one LocalTrainer each): per seed the unrefined row (once for all "
    "seeds under a protocol that trains nothing), every candidate and the perturbed row",
    "candidate_epochs": "epochs of a candidate that was not chosen (not recorded): a run starting from the "
    "trained relations starts from the as-trained model of the same rows, whose valid score the as-trained "
    "selection records; a recorded valid score equal to it means no check improved (best epoch 0), so the run "
    "stopped after min(downstream-patience, refit-epochs) epochs; a higher one means an improvement, so "
    "between min(1 + downstream-patience, refit-epochs) and refit-epochs epochs (exact with patience 1 and "
    "2 epochs); no as-trained start score: between min(patience, refit-epochs) and refit-epochs. The same "
    "rule applied to the tested rows, whose epochs are recorded, is checked in epoch_inference_check",
    "valid_checks": "one valid ranking after every epoch, plus the epoch-0 check of every run whose rows were "
    "not scored before under the trained relations (comparison.py caches that score by the rows' bytes: "
    "the as-trained protocol scores the unrefined rows, every candidate and its perturbed rows; a later "
    "protocol's perturbed rows are new when it chose another candidate than every earlier protocol)",
    "test_rankings": "one test ranking (both evaluation protocols share the scores) per seed and tested row "
    "(unrefined, refined, perturbed); the unrefined row of a protocol that trains nothing is tested once",
    "seconds_per_ranking": "a client's as-trained seconds / (its as-trained valid checks + test rankings): "
    "one ranking pass of valid or test (the splits are of equal size in these datasets) including its share "
    "of the model builds; an upper bound of a pure ranking pass",
    "valid_seconds, test_seconds": "count x seconds_per_ranking of the same client",
    "training_seconds": "protocol seconds - valid_seconds - test_seconds (for a trained protocol; lower bound "
    "of the training time since seconds_per_ranking includes the builds); seconds_per_epoch = "
    "training_seconds / epochs (midpoint where candidate epochs are a range)",
    "row kind / seed seconds": "each run's epochs x (seconds_per_epoch + seconds_per_ranking) + its epoch-0 "
    "check and test ranking x seconds_per_ranking; scaled so that a client's kinds sum to its recorded seconds",
    "flags.test_repeats_as_trained": "tested rows of a trained protocol whose best epoch is 0 (valid score equal "
    "to the start score) and whose rows the as-trained protocol tested too: the tested model is the as-trained "
    "model, so the test ranking repeats one already done; 'bit_identical' says whether the records' test "
    "metrics of that seed equal the as-trained ones in every column",
    "flags.identical_across_seeds": "(protocol, client, row) whose test metrics are bit-identical in every "
    "column across all seeds; 'computed_once' where the code runs it once (the unrefined row of a protocol that "
    "trains nothing)",
    "flags.tested_though_valid_prefers_unrefined": "refined and perturbed test rankings of (protocol, client) "
    "where the selection records valid_prefers_unrefined; skipping them alters the table (no refined row)",
    "flags.candidates_trained_not_chosen": "runs of candidates that valid did not choose: trained and "
    "valid-checked for their valid score only (no test ranking is run for them)",
    "flags.chosen_rank_under_as_trained": "for every trained (protocol, client): the rank of its chosen "
    "candidate among all candidates ordered by the as-trained mean valid score (1 = best); how many choices "
    "pruning to the top m as-trained candidates before training would have kept",
}


class GridReadError(ValueError):
    """A grid cell's ``results.json`` or ``cell.json`` lacks what the breakdown reads."""


# ----------------------------------------------------------------------------- reading
def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GridReadError(f"{path}: missing") from None
    except json.JSONDecodeError as error:
        raise GridReadError(f"{path}: malformed JSON: {error}") from None
    if not isinstance(data, dict):
        raise GridReadError(f"{path}: not a JSON object")
    return data


def find_cells(grid: Path, splits: Collection[str] | None = None) -> list[tuple[str, Path]]:
    """``(name, folder)`` of every cell under ``grid`` with a ``results.json``: ``<split>/<model>`` and its
    sub-cells (only those of ``splits`` when given)."""
    cells = []
    for results in sorted(grid.glob("*/*/results.json")) + sorted(grid.glob("*/*/*/results.json")):
        folder = results.parent
        name = folder.relative_to(grid).as_posix()
        if splits is None or name.split("/", 1)[0] in splits:
            cells.append((name, folder))
    return sorted(cells)


def _count_settings(search: Any) -> int:
    text = str(search or "none").strip()
    return 1 if text.lower() in ("", "none") else len([part for part in text.split(";") if part.strip()])


def _alphas(grid: Any) -> list[float]:
    return [float(a) for a in str(grid).split(",") if a.strip() and float(a) > 0]


def _get(mapping: Mapping[str, Any], *keys: str, where: str) -> Any:
    value: Any = mapping
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            raise GridReadError(f"{where}: no {'.'.join(keys)}")
        value = value[key]
    return value


# ----------------------------------------------------------------------------- one client, one protocol
def _epoch_range(valid: float, start: float | None, patience: int, max_epochs: int) -> tuple[int, int]:
    """The epochs a run took (low, high) from its recorded best valid score and its start score."""
    stop_at_start = min(patience, max_epochs)
    if start is None:
        return stop_at_start, max_epochs
    if valid == start:
        return stop_at_start, stop_at_start
    return min(1 + patience, max_epochs), max_epochs


def _per_seed(values: Any, seeds: int, where: str) -> list[Any]:
    if isinstance(values, Mapping):
        values = values.get("seeds")
    if not isinstance(values, list) or len(values) != seeds:
        raise GridReadError(f"{where}: expected {seeds} per-seed values, got {values!r}")
    return values


def _test_values(protocol: Mapping[str, Any], row: str, client: str, seed: int) -> dict[str, float] | None:
    """Every test column of (row, client, seed) as the records hold it."""
    cells = (protocol.get("rows") or {}).get(row, {}).get(client)
    if not isinstance(cells, Mapping):
        return None
    return {column: entry["seeds"][seed] for column, entry in sorted(cells.items())}


def analyse_cell(
    results: Mapping[str, Any], cell: Mapping[str, Any], *, untrained: Collection[str], where: str = "cell"
) -> dict[str, Any]:
    """The breakdown of one cell (see the module docstring and :data:`DERIVATIONS`).

    :param results: the cell's ``results.json``.
    :param cell: its ``cell.json`` (``{}`` when absent).
    :param untrained: protocol names (label before ``:``) that train nothing (``as-trained``).
    :param where: names the cell in errors.
    :raises GridReadError: naming what is missing.
    """
    run = _get(results, "run", where=where)
    refinement = _get(run, "refinement", where=where)
    seeds = int(refinement["downstream-seeds"])
    settings = _count_settings(refinement.get("simskip-search"))
    alphas = _alphas(refinement.get("simskip-gate-grid", "0,0.25,1"))
    candidates = [(k, a) for k in range(settings) for a in alphas]
    patience, max_epochs = int(refinement["downstream-patience"]), int(refinement["refit-epochs"])
    no_skip = bool(refinement.get("simskip-no-skip-ablation")) and bool(refinement.get("simskip-skip", True))
    encoders = settings * seeds + (seeds if no_skip else 0)
    protocols = _get(results, "protocols", where=where)
    clients = [c for c in results.get("clients", []) if c != "overall"]
    simskip_seconds = float(run["simskip_seconds"])
    downstream_seconds = float(run["downstream_seconds"])
    restored = run.get("restored_from_checkpoint")
    refine_seconds = cell.get("refine_seconds")
    out: dict[str, Any] = {
        "status": cell.get("status"),
        "model": (run.get("kge") or {}).get("model"),
        "setting": run.get("setting"),
        "config": {
            "downstream_seeds": seeds,
            "search_settings": settings,
            "skip_strengths": alphas,
            "candidates": len(candidates),
            "protocols": list(protocols),
            "refit_epochs": max_epochs,
            "downstream_patience": patience,
            "simskip_rounds": refinement.get("simskip-rounds"),
            "simskip_local_epochs": refinement.get("simskip-local-epochs"),
            "simskip_augmentations": refinement.get("simskip-augmentations"),
            "clients": len(clients),
            "num_test": results.get("num_test"),
        },
        "machine": {
            "device": cell.get("device"),
            "load_average_start": (cell.get("machine_at_start") or {}).get("load_average", cell.get("load_average")),
            "load_average_end": (cell.get("machine_at_end") or {}).get("load_average"),
            "torch_threads": (cell.get("machine_at_end") or {}).get("torch_threads"),
        },
        "recorded": {
            "kge_run_seconds": cell.get("run_seconds"),
            "refine_seconds": refine_seconds,
            "simskip_seconds": simskip_seconds,
            "downstream_seconds": downstream_seconds,
            "simskip_plus_downstream_seconds": round(simskip_seconds + downstream_seconds, 3),
            "restored_from_checkpoint": restored,
        },
        "simskip": {
            "encoders": encoders,
            "seconds_per_encoder": round(simskip_seconds / encoders, 3) if encoders else None,
        },
        "outside_seconds": (
            round(float(refine_seconds) - simskip_seconds - downstream_seconds, 3)
            if isinstance(refine_seconds, (int, float)) and not restored
            else None
        ),
    }
    as_trained = next((label for label in protocols if label.partition(":")[0] in untrained), None)
    per_client: dict[str, dict[str, Any]] = {}
    flags: dict[str, Any] = {
        "test_repeats_as_trained": [],
        "identical_across_seeds": [],
        "tested_though_valid_prefers_unrefined": [],
        "candidates_trained_not_chosen": {"runs": 0, "epochs_low": 0, "epochs_high": 0, "seconds": 0.0},
        "chosen_rank_under_as_trained": [],
    }
    epoch_check = {"rows": 0, "agree": 0, "disagree": []}
    for client in clients:
        scored: dict[tuple[Any, ...], float | None] = {}  # rows scored under the trained relations -> start score
        has_relations = as_trained is not None and client in (protocols[as_trained].get("seconds") or {})
        entries: dict[str, dict[str, Any]] = {}
        for label, protocol in protocols.items():
            seconds = (protocol.get("seconds") or {}).get(client)
            if seconds is None:  # skipped for this client (no trained relations that fit)
                continue
            here = f"{where}, {label}, client {client}"
            trains = label.partition(":")[0] not in untrained
            selection = _get(protocol, "selection", client, where=here)
            chosen = (int(selection["chosen"]["setting"]), float(selection["chosen"]["alpha"]))
            cand_valid = {
                (int(c["setting"]), float(c["alpha"])): _per_seed(c["valid"], seeds, here)
                for c in selection["candidates"]
            }
            valid = {
                row: _per_seed(protocol["valid"][row][client], seeds, f"{here}, valid {row}")
                for row in ("unrefined", "refined", "perturbed")
            }
            recorded_epochs = {
                row: _per_seed(protocol["epochs"][row][client], seeds, f"{here}, epochs {row}")
                for row in ("unrefined", "refined", "perturbed")
            }
            # runs start from the trained relations (and reuse cached start scores) unless the label asks for
            # fresh ones or the client has none that fit (then as-trained is skipped for it)
            trained_start = label.partition(":")[2] in ("", "trained") and has_relations
            stopping = _Stopping(trains=trains, trained_start=trained_start, patience=patience, max_epochs=max_epochs)
            runs = stopping.runs(seeds, candidates, chosen, valid, cand_valid, recorded_epochs, scored)
            if trains and trained_start:  # the inference checked on the tested rows, whose epochs are recorded
                for row, seed, low, high in stopping.tested_ranges(entries.get(as_trained or ""), chosen, valid, seeds):
                    epoch_check["rows"] += 1
                    if low <= recorded_epochs[row][seed] <= high:
                        epoch_check["agree"] += 1
                    else:
                        epoch_check["disagree"].append(f"{label}/{client}/{seed}/{row}")
            entries[label] = {
                "seconds": float(seconds),
                "trains": trains,
                "runs": runs,
                "chosen": chosen,
                "valid": valid,
                "cand_valid": cand_valid,
                "prefers_unrefined": bool(selection.get("valid_prefers_unrefined")),
            }
        per_client[client] = _client_breakdown(entries, as_trained, seeds)
        _client_flags(flags, client, entries, as_trained, protocols, seeds, per_client[client])
    out["protocols"] = _protocol_totals(per_client, list(protocols))
    out["clients"] = per_client
    out["flags"] = _summarise_flags(flags, candidates)
    out["epoch_inference_check"] = epoch_check
    return out


class _Stopping:
    """The runs of one (protocol, client) in the loop order of :func:`client.kge.comparison.evaluate_client_rows`,
    with the epochs each took (recorded, or inferred from the stopping rule as :data:`DERIVATIONS` says).

    :param trains: whether the protocol trains.
    :param trained_start: whether its runs start from the trained relations (and reuse cached start scores).
    :param patience: ``downstream-patience``.
    :param max_epochs: ``refit-epochs``.
    """

    def __init__(self, *, trains: bool, trained_start: bool, patience: int, max_epochs: int) -> None:
        self.trains, self.trained_start = trains, trained_start
        self.patience, self.max_epochs = patience, max_epochs

    def runs(
        self,
        seeds: int,
        candidates: Sequence[tuple[int, float]],
        chosen: tuple[int, float],
        valid: Mapping[str, list[float]],
        cand_valid: Mapping[tuple[int, float], list[float]],
        recorded_epochs: Mapping[str, list[int]],
        scored: dict[tuple[Any, ...], float | None],
    ) -> list[dict[str, Any]]:
        """Every run: ``{"kind", "seed", "low", "high", "check0", "tested"}``; ``scored`` (rows scored under
        the trained relations -> their start score, ``None`` when not recorded) is updated as the code's cache is."""
        runs: list[dict[str, Any]] = []

        def add(kind: str, seed: int, key: tuple[Any, ...], value: float, tested: bool, recorded: Any) -> None:
            start = scored.get(key) if self.trained_start else None
            low, high = _epoch_range(value, start, self.patience, self.max_epochs) if self.trains else (0, 0)
            if recorded is not None:
                low = high = int(recorded)
            check0 = not (self.trained_start and key in scored)
            runs.append({"kind": kind, "seed": seed, "low": low, "high": high, "check0": check0, "tested": tested})
            if self.trained_start and key not in scored:
                scored[key] = None if self.trains else value  # a trained run's start score is not recorded

        for seed in range(seeds):
            epochs = {row: values[seed] if self.trains else None for row, values in recorded_epochs.items()}
            if self.trains or seed == 0:  # a protocol that trains nothing runs the unrefined rows once
                add("unrefined", seed, ("unrefined",), valid["unrefined"][seed], True, epochs["unrefined"])
            for cand in (c for c in candidates if c in cand_valid):  # downstream-top-candidates: the pruned never ran
                kind = "refined" if cand == chosen else "other_candidates"
                recorded = epochs["refined"] if cand == chosen else None
                add(kind, seed, ("candidate", seed, *cand), cand_valid[cand][seed], cand == chosen, recorded)
        for seed in range(seeds):
            recorded = recorded_epochs["perturbed"][seed] if self.trains else None
            add("perturbed", seed, ("perturbed", seed, *chosen), valid["perturbed"][seed], True, recorded)
        return runs

    def tested_ranges(
        self,
        as_trained: Mapping[str, Any] | None,
        chosen: tuple[int, float],
        valid: Mapping[str, list[float]],
        seeds: int,
    ) -> list[tuple[str, int, int, int]]:
        """``(row, seed, low, high)``: the inferred epochs of every tested row whose start score the
        as-trained entry records (to compare with the recorded epochs)."""
        if as_trained is None:
            return []
        out = []
        for row in ("unrefined", "refined", "perturbed"):
            for seed in range(seeds):
                if row == "unrefined":
                    start = as_trained["valid"]["unrefined"][0]
                elif row == "refined":
                    start = as_trained["cand_valid"][chosen][seed]
                elif chosen == as_trained["chosen"]:
                    start = as_trained["valid"]["perturbed"][seed]
                else:
                    continue
                out.append((row, seed, *_epoch_range(valid[row][seed], start, self.patience, self.max_epochs)))
        return out


def _mid(run: Mapping[str, Any]) -> float:
    return (run["low"] + run["high"]) / 2


def _client_breakdown(entries: Mapping[str, Mapping[str, Any]], as_trained: str | None, seeds: int) -> dict[str, Any]:
    """Counts and derived seconds of one client, per protocol label."""
    out: dict[str, Any] = {}
    per_ranking = None
    if as_trained in entries:
        entry = entries[as_trained]
        passes = sum(r["check0"] for r in entry["runs"]) + sum(r["tested"] for r in entry["runs"])
        per_ranking = entry["seconds"] / passes if passes else None
    for label, entry in entries.items():
        runs = entry["runs"]
        checks0 = sum(r["check0"] for r in runs)
        low, high = sum(r["low"] for r in runs), sum(r["high"] for r in runs)
        tests = sum(r["tested"] for r in runs)
        counts = {
            "runs": len(runs),
            "epoch0_valid_checks": checks0,
            "train_epochs": [low, high] if low != high else low,
            "valid_checks": [checks0 + low, checks0 + high] if low != high else checks0 + low,
            "test_rankings": tests,
        }
        derived: dict[str, Any] = {"seconds_per_ranking": None}
        if per_ranking is not None:
            mid = (low + high) / 2
            valid_s = (checks0 + mid) * per_ranking
            test_s = tests * per_ranking
            train_s = entry["seconds"] - valid_s - test_s if entry["trains"] else 0.0
            per_epoch = train_s / mid if mid else 0.0
            weights = {
                id(r): _mid(r) * (per_epoch + per_ranking) + (r["check0"] + r["tested"]) * per_ranking for r in runs
            }
            total = sum(weights.values()) or 1.0
            scale = entry["seconds"] / total
            by_kind = dict.fromkeys(ROW_KINDS, 0.0)
            by_seed = [0.0] * seeds
            for r in runs:
                by_kind[r["kind"]] += weights[id(r)] * scale
                by_seed[r["seed"]] += weights[id(r)] * scale
            derived = {
                "seconds_per_ranking": round(per_ranking, 3),
                "valid_seconds": round(valid_s, 3),
                "test_seconds": round(test_s, 3),
                "training_seconds": round(train_s, 3),
                "seconds_per_epoch": round(per_epoch, 3) if entry["trains"] else None,
                "by_row_kind": {k: round(v, 3) for k, v in by_kind.items()},
                "by_seed": [round(v, 3) for v in by_seed],
            }
        out[label] = {"seconds": entry["seconds"], "counts": counts, "derived": derived}
    return out


def _client_flags(
    flags: dict[str, Any],
    client: str,
    entries: Mapping[str, Mapping[str, Any]],
    as_trained: str | None,
    protocols: Mapping[str, Any],
    seeds: int,
    breakdown: Mapping[str, Any],
) -> None:
    for label, entry in entries.items():
        protocol = protocols[label]
        for row in ("unrefined", "refined", "perturbed"):
            values = [_test_values(protocol, row, client, s) for s in range(seeds)]
            if seeds > 1 and values[0] is not None and all(v == values[0] for v in values):
                flags["identical_across_seeds"].append(
                    {
                        "protocol": label,
                        "client": client,
                        "row": row,
                        "computed_once": (not entry["trains"]) and row == "unrefined",
                    }
                )
        per_ranking = breakdown[label]["derived"].get("seconds_per_ranking")
        if entry["prefers_unrefined"]:
            flags["tested_though_valid_prefers_unrefined"].append(
                {"protocol": label, "client": client, "test_rankings": 2 * seeds}
            )
        other = [r for r in entry["runs"] if r["kind"] == "other_candidates"]
        bucket = flags["candidates_trained_not_chosen"]
        bucket["runs"] += len(other)
        bucket["epochs_low"] += sum(r["low"] for r in other)
        bucket["epochs_high"] += sum(r["high"] for r in other)
        bucket["seconds"] += breakdown[label]["derived"].get("by_row_kind", {}).get("other_candidates", 0.0)
        if not entry["trains"] or as_trained not in entries:
            continue
        reference = entries[as_trained]
        order = sorted(
            reference["cand_valid"], key=lambda c: (-statistics.fmean(reference["cand_valid"][c]), c[0], c[1])
        )
        flags["chosen_rank_under_as_trained"].append(
            {"protocol": label, "client": client, "rank": order.index(entry["chosen"]) + 1}
        )
        for row in ("unrefined", "refined", "perturbed"):
            same_rows = row == "unrefined" or entry["chosen"] == reference["chosen"]
            if not same_rows:
                continue
            for seed in range(seeds):
                start = reference["valid"][row][0 if row == "unrefined" else seed]
                if entry["valid"][row][seed] != start:
                    continue
                mine = _test_values(protocol, row, client, seed)
                theirs = _test_values(protocols[as_trained], row, client, seed)
                flags["test_repeats_as_trained"].append(
                    {
                        "protocol": label,
                        "client": client,
                        "seed": seed,
                        "row": row,
                        "bit_identical": mine is not None and mine == theirs,
                        "seconds_per_ranking": per_ranking,
                    }
                )


def _summarise_flags(flags: Mapping[str, Any], candidates: Sequence[Any]) -> dict[str, Any]:
    """The flags of a cell, compact: counts, seconds and the items named ``protocol/client[/seed]/row``."""
    repeats = flags["test_repeats_as_trained"]
    ranks = flags["chosen_rank_under_as_trained"]
    across = flags["identical_across_seeds"]
    prefers = flags["tested_though_valid_prefers_unrefined"]

    def name(item: Mapping[str, Any], *keys: str) -> str:
        return "/".join(str(item[key]) for key in keys)

    return {
        "test_repeats_as_trained": {
            "count": len(repeats),
            "bit_identical": sum(item["bit_identical"] for item in repeats),
            "seconds": round(sum(item["seconds_per_ranking"] or 0.0 for item in repeats), 3),
            "items": [name(i, "protocol", "client", "seed", "row") for i in repeats],
            "not_bit_identical": [
                name(i, "protocol", "client", "seed", "row") for i in repeats if not i["bit_identical"]
            ],
        },
        "identical_across_seeds": {
            "count": len(across),
            "repeated_work": sum(not item["computed_once"] for item in across),
            "items": [name(i, "protocol", "client", "row") for i in across if not i["computed_once"]],
            "computed_once": [name(i, "protocol", "client", "row") for i in across if i["computed_once"]],
        },
        "tested_though_valid_prefers_unrefined": {
            "protocol_clients": len(prefers),
            "test_rankings": sum(item["test_rankings"] for item in prefers),
            "items": [name(i, "protocol", "client") for i in prefers],
        },
        "candidates_trained_not_chosen": {
            **flags["candidates_trained_not_chosen"],
            "seconds": round(flags["candidates_trained_not_chosen"]["seconds"], 3),
        },
        "chosen_rank_under_as_trained": {
            "kept_by_top_m": {str(m): sum(i["rank"] <= m for i in ranks) for m in range(1, len(candidates) + 1)},
            "choices": len(ranks),
            "ranks": {name(i, "protocol", "client"): i["rank"] for i in ranks},
        },
    }


def _protocol_totals(per_client: Mapping[str, Mapping[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """Per protocol label: the clients' seconds, counts and derived seconds summed."""
    totals: dict[str, Any] = {}
    for label in labels:
        parts = [entry[label] for entry in per_client.values() if label in entry]
        if not parts:
            continue
        summed: dict[str, Any] = {"seconds": round(sum(p["seconds"] for p in parts), 3)}
        for key in ("runs", "epoch0_valid_checks", "train_epochs", "valid_checks", "test_rankings"):
            summed[key] = _sum_counts(p["counts"][key] for p in parts)
        derived = [p["derived"] for p in parts if p["derived"].get("seconds_per_ranking") is not None]
        if len(derived) == len(parts):
            for key in ("valid_seconds", "test_seconds", "training_seconds"):
                summed[key] = round(sum(d[key] for d in derived), 3)
            summed["by_row_kind"] = {kind: round(sum(d["by_row_kind"][kind] for d in derived), 3) for kind in ROW_KINDS}
            summed["by_seed"] = [round(sum(vals), 3) for vals in zip(*(d["by_seed"] for d in derived), strict=True)]
        totals[label] = summed
    return totals


def _sum_counts(values: Iterable[int | list[int]]) -> int | list[int]:
    low = high = 0
    for value in values:
        a, b = (value, value) if isinstance(value, int) else value
        low, high = low + a, high + b
    return low if low == high else [low, high]


# ----------------------------------------------------------------------------- the whole grid
def _total(cells: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """SimSkip, downstream and per-protocol seconds (and derived splits) summed over ``cells``."""
    simskip = sum(c["recorded"]["simskip_seconds"] for c in cells.values())
    downstream = sum(c["recorded"]["downstream_seconds"] for c in cells.values())
    protocols: dict[str, dict[str, float]] = {}
    kinds = dict.fromkeys(ROW_KINDS, 0.0)
    split = {"valid_seconds": 0.0, "test_seconds": 0.0, "training_seconds": 0.0}
    for c in cells.values():
        for label, entry in c["protocols"].items():
            protocols.setdefault(label, {"seconds": 0.0})["seconds"] += entry["seconds"]
            for key in split:
                split[key] += entry.get(key, 0.0)
            for kind in ROW_KINDS:
                kinds[kind] += entry.get("by_row_kind", {}).get(kind, 0.0)
    per_cell = [c["recorded"]["simskip_plus_downstream_seconds"] for c in cells.values()]
    return {
        "cells": sorted(cells),
        "simskip_seconds": round(simskip, 3),
        "downstream_seconds": round(downstream, 3),
        "simskip_plus_downstream_seconds": round(simskip + downstream, 3),
        "median_cell_simskip_plus_downstream_seconds": round(statistics.median(per_cell), 3) if per_cell else None,
        "protocols": {label: {"seconds": round(v["seconds"], 3)} for label, v in protocols.items()},
        "derived": {
            **{k: round(v, 3) for k, v in split.items()},
            "by_row_kind": {k: round(v, 3) for k, v in kinds.items()},
        },
    }


def _sum_flags(cells: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The cells' redundancy flags summed (counts and seconds; the items stay in each cell)."""
    out: dict[str, Any] = {
        "test_repeats_as_trained": {"count": 0, "bit_identical": 0, "seconds": 0.0},
        "identical_across_seeds": {"count": 0, "repeated_work": 0},
        "tested_though_valid_prefers_unrefined": {"protocol_clients": 0, "test_rankings": 0},
        "candidates_trained_not_chosen": {"runs": 0, "epochs_low": 0, "epochs_high": 0, "seconds": 0.0},
        "chosen_rank_under_as_trained": {"kept_by_top_m": {}, "choices": 0},
    }
    for cell in cells:
        for flag, summed in out.items():
            for key, value in cell["flags"][flag].items():
                if key == "kept_by_top_m":
                    for m, kept in value.items():
                        summed[key][m] = summed[key].get(m, 0) + kept
                elif isinstance(value, (int, float)):
                    summed[key] = round(summed[key] + value, 3)
    return out


def build_breakdown(
    grid: Path, *, untrained: Collection[str], command: str, splits: Collection[str] | None = None
) -> dict[str, Any]:
    """The whole JSON of the script for the cells under ``grid``.

    :param grid: the grid folder (``results/grid``).
    :param untrained: protocol names that train nothing (from the protocol registry).
    :param command: the command line, recorded.
    :param splits: only the cells of these splits (``None``: all).
    :raises GridReadError: when there is no cell, or a cell lacks what is read.
    """
    found = find_cells(grid, splits)
    if not found:
        raise GridReadError(f"{grid}: no <split>/<model>/results.json")
    cells: dict[str, dict[str, Any]] = {}
    for name, folder in found:
        results = _read(folder / "results.json")
        cell = _read(folder / "cell.json") if (folder / "cell.json").is_file() else {}
        try:
            cells[name] = analyse_cell(results, cell, untrained=untrained, where=str(folder))
        except (KeyError, IndexError, TypeError, ValueError) as error:
            if isinstance(error, GridReadError):
                raise
            what = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise GridReadError(f"{folder}: results.json lacks or mangles {what!r} ({type(error).__name__})") from None
    main = {n: c for n, c in cells.items() if n.count("/") == 1 and n.startswith(f"{MAIN_SPLIT}/")}
    splits = sorted({name.split("/")[0] for name in cells})
    by_split = {
        split: _total({n: c for n, c in cells.items() if n.split("/")[0] == split and n.count("/") == 1})
        for split in splits
    }
    headline: dict[str, Any] = {"target_seconds_per_cell": TARGET_SECONDS}
    if main:
        total = _total(main)
        per_cell = {
            n: {
                "simskip_plus_downstream_seconds": c["recorded"]["simskip_plus_downstream_seconds"],
                "simskip_seconds": c["recorded"]["simskip_seconds"],
                "downstream_seconds": c["recorded"]["downstream_seconds"],
                "speedup_needed": round(c["recorded"]["simskip_plus_downstream_seconds"] / TARGET_SECONDS, 2),
                "protocol_seconds": {label: e["seconds"] for label, e in c["protocols"].items()},
            }
            for n, c in main.items()
        }
        whole = total["simskip_plus_downstream_seconds"] or 1.0
        headline["fed3_main_flags"] = _sum_flags(main.values())
        headline |= {
            "fed3_main_cells": per_cell,
            "fed3_main_total": total,
            "fed3_main_shares": {
                "simskip": round(total["simskip_seconds"] / whole, 4),
                **{label: round(v["seconds"] / whole, 4) for label, v in total["protocols"].items()},
                **{f"derived {k}": round(v / whole, 4) for k, v in total["derived"].items() if k != "by_row_kind"},
                **{f"derived row {k}": round(v / whole, 4) for k, v in total["derived"]["by_row_kind"].items()},
            },
        }
    return {
        "description": (
            "Where the SimSkip phase and the downstream protocols spent their time in the committed grid cells "
            "(issue 33, item 3); recorded seconds copied, the rest derived as 'derivations' says"
        ),
        "command": command,
        "machine_note": (
            "nothing was timed by this script: every second is one the cells recorded on their own machine and "
            "load (each cell's 'machine' copies its cell.json: device, load averages at start and end, torch "
            "threads); the grid ran on the project's 2-core CPU machine"
        ),
        "grid": grid.resolve().relative_to(ROOT).as_posix() if grid.resolve().is_relative_to(ROOT) else str(grid),
        "derivations": DERIVATIONS,
        "headline": headline,
        "totals_by_split": by_split,
        "cells": cells,
    }


def _untrained_protocols() -> set[str]:
    """The registered downstream protocols that train nothing (``as-trained``)."""
    from client.kge.protocols import DOWNSTREAM_PROTOCOLS

    return {name for name, protocol in DOWNSTREAM_PROTOCOLS.items() if not protocol.trains}


def main(argv: Sequence[str] | None = None, *, untrained: Callable[[], set[str]] = _untrained_protocols) -> int:
    """Write (or print) the breakdown; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=Path, default=DEFAULT_GRID, help="grid folder (default: results/grid)")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="JSON output (default: results/downstream-speed/time-breakdown.json)",
    )
    parser.add_argument(
        "--split", action="append", default=None, help="only this split's cells (repeatable; default: every split)"
    )
    parser.add_argument("--print", action="store_true", help="print the JSON instead of writing --out")
    args = parser.parse_args(argv)
    from client.kge.run_folder import check_script_outputs, emit_json

    out = None if args.print else args.out
    check_script_outputs(parser, inputs=[args.grid], files={"--out": out})
    command = shlex.join(["python", "scripts/downstream_time.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        report = build_breakdown(args.grid, untrained=untrained(), command=command, splits=args.split)
    except GridReadError as error:
        print(f"[downstream-time] error: {error}", file=sys.stderr)
        return 1
    emit_json(report, out)
    if out is not None:
        head = report["headline"].get("fed3_main_total", {})
        print(
            f"[downstream-time] wrote {out}: Fed3 main cells SimSkip + downstream "
            f"{head.get('simskip_plus_downstream_seconds')} s in all, median cell "
            f"{head.get('median_cell_simskip_plus_downstream_seconds')} s",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
