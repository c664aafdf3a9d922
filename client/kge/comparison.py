"""One client's comparison of unrefined, refined and control rows under every downstream protocol.

For each protocol label (:func:`client.kge.protocols.protocol_labels`) and each seed ``j`` of
``downstream-seeds``:

1. ``unrefined``: the FedE rows ``x`` through the protocol (KGE seed ``seed + j``).
2. SimSkip candidates, chosen on VALID only: every search setting ``k`` (``simskip-search``)
   and skip strength ``alpha > 0`` (``simskip-gate-grid``) gives rows ``x + alpha (f_kj(x) - x)``
   (``f_kj`` the encoder of setting ``k`` trained with SimSkip seed ``simskip-seed + j``); each
   goes through the protocol and is scored on valid. The candidate with the best mean valid
   score over seeds is the ``refined`` row (ties: the earlier setting, then the smaller alpha).
   Whether the unrefined rows score better on valid is recorded too (``valid_prefers_unrefined``).
   With ``downstream-top-candidates = K > 0``, a trained protocol trains only the ``K`` candidates
   whose rows score best on valid at their start (with the trained relations: ``as-trained``'s
   score), mean over seeds; the others are recorded under ``pruned`` with those scores. A client
   without trained relations has no such start: every candidate trains (``pruning`` says so).
3. ``perturbed``: the control. The unrefined rows moved in random directions by exactly the
   chosen refined rows' per-row displacement (:func:`simskip_core.perturb_like`, seeded by
   seed and client), through the same protocol.
4. ``refined-no-skip`` (with ``simskip-no-skip-ablation``): the no-skip encoder's rows.

Only then is the test split ranked, once per (seed, row): metrics under both evaluation
protocols and each test triple's reciprocal rank (for the paired bootstrap of
:mod:`client.kge.significance`). Nothing tested feeds a choice. A run that kept the as-trained
model (best epoch 0, trained relations) reuses that model's ranking of the same rows.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from client.kge.config import KGEConfig
from client.kge.protocols import (
    DOWNSTREAM_PROTOCOLS,
    EVAL_PROTOCOLS,
    DownstreamBudget,
    ProtocolRun,
    protocol_labels,
    run_protocol,
)
from client.kge.refinement import NO_SKIP_VARIANT, RefinementConfig, client_seed_key
from client.kge.training import TrainableGraph
from simskip_core import mean_relative_displacement, perturb_like

__all__ = [
    "ROWS",
    "DownstreamRecordError",
    "SkipStrengthError",
    "check_record",
    "evaluate_client_rows",
    "rr_key",
    "skip_strength_rows",
]

#: Table rows, in report order.
ROWS: tuple[str, ...] = ("unrefined", "refined", "perturbed", "refined-no-skip")


class DownstreamRecordError(ValueError):
    """A client's downstream record or reciprocal ranks do not have the expected shape."""


class SkipStrengthError(ValueError):
    """Refined rows of another shape than the rows they refine."""


def skip_strength_rows(rows: np.ndarray, refined: np.ndarray, alpha: float) -> np.ndarray:
    """The rows at skip strength ``alpha``: ``rows + alpha * (refined - rows)``, float32.

    ``alpha = 0`` returns (a copy of) ``rows`` and ``alpha = 1`` ``refined``, bit for bit.

    :param rows: ``(n, entity_dim)`` input rows ``x``.
    :param refined: ``(n, entity_dim)`` encoder output ``f(x)`` (the raw SimSkip rows).
    :param alpha: the skip strength.
    :raises SkipStrengthError: when the shapes differ.
    """
    rows, refined = np.asarray(rows), np.asarray(refined)
    if rows.shape != refined.shape:
        raise SkipStrengthError(f"refined rows of shape {refined.shape} do not match the input rows {rows.shape}")
    if alpha == 0.0:
        return np.array(rows, dtype=np.float32, copy=True)
    if alpha == 1.0:
        return np.array(refined, dtype=np.float32, copy=True)
    x = rows.astype(np.float32, copy=False)
    return x + np.float32(alpha) * (refined.astype(np.float32, copy=False) - x)


def rr_key(label: str, seed: int, row: str, eval_protocol: str) -> str:
    """Name of one per-triple reciprocal-rank array (``<label>/<seed>/<row>/<eval protocol>``)."""
    return f"{label}/{seed}/{row}/{eval_protocol}"


def evaluate_client_rows(
    graph: TrainableGraph,
    config: KGEConfig,
    rows: np.ndarray,
    refined: Mapping[str, np.ndarray],
    refinement: RefinementConfig,
    *,
    relation_state: Mapping[str, np.ndarray] | None,
    device: torch.device | str | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The client's part of the results table.

    :param graph: the client's graph.
    :param config: the run's KGE config.
    :param rows: the unrefined (FedE best-round) rows, local-id order.
    :param refined: variant name (:meth:`RefinementConfig.variant_name`) -> that encoder's rows.
    :param refinement: the phase config (protocols, seeds, search, budget).
    :param relation_state: the client's trained relation tensors, ``None`` when none fit.
    :param log: receives one line per finished (protocol, seed, row).
    :returns: ``(record, reciprocal ranks)``: ``record["protocols"][label]`` holds ``seeds``
        (``{seed: {row: {"test": {eval protocol: metrics}, "valid", "curve", "epochs", ...}}}``)
        and ``selection``; ``record["skipped"]`` names protocols that could not run and why;
        the arrays are keyed by :func:`rr_key`.
    """
    name = graph.client_id
    say = log or (lambda line: None)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    budget = DownstreamBudget(max_epochs=refinement.refit_epochs, patience=refinement.downstream_patience)
    labels = protocol_labels(refinement.downstream_protocols, refinement.refit_init)
    seeds = range(refinement.downstream_seeds)
    main = refinement.main_variant
    record: dict[str, Any] = {
        "protocols": {},
        "skipped": {},
        # the raw encoder output of every variant (alpha 1): how far SimSkip itself moved the rows
        "simskip_displacement": {
            variant: mean_relative_displacement(rows, values) for variant, values in refined.items()
        },
        "protocol_order": labels,  # JSON objects may be re-sorted on the way; the table keeps this order
    }
    ranks: dict[str, np.ndarray] = {}
    candidates = refinement.candidates()
    # valid score of (rows, the trained relations), shared by every protocol that starts there
    start_scores: dict[bytes, float] = {}
    # ... and its test ranking, shared by every run that kept that starting state (best epoch 0)
    start_tests: dict[bytes, tuple[dict, dict]] = {}
    for label in labels:
        protocol = DOWNSTREAM_PROTOCOLS[label.partition(":")[0]]
        if relation_state is None and (protocol.needs_trained_relations or label == "relation-refit:trained"):
            record["skipped"][label] = "the client has no trained relations that fit its model"
            continue
        started = time.perf_counter()
        row_keys: dict[int, bytes] = {}  # id of each of this label's runs (all alive until its test) -> its rows

        def run(
            these: np.ndarray,
            seed: int,
            what: str,
            _label: str = label,
            _trains: bool = protocol.trains,
            _keys: dict[int, bytes] = row_keys,
        ) -> ProtocolRun:
            key = _rows_key(these)
            result = run_protocol(
                _label,
                graph,
                config.replace(seed=config.seed + seed),
                these,
                relation_state=relation_state,
                budget=budget,
                device=device,
                start_valid=start_scores.get(key),
            )
            if result.init == "trained":
                start_scores.setdefault(key, result.curve[0])
            _keys[id(result)] = key
            if _trains:  # minutes per run on large graphs: say so as each one ends
                say(
                    f"client {name}: {_label} seed {seed} {what}: valid MRR {result.valid:.4f} after "
                    f"{result.epochs} epochs (best {result.best_epoch}), {result.seconds:.1f}s"
                )
            return result

        per_seed: dict[int, dict[str, ProtocolRun]] = {}
        displacement: dict[int, dict[str, float]] = {}
        kept, pruned, pruning = candidates, [], None
        prunes = protocol.trains and 0 < refinement.downstream_top_candidates < len(candidates)
        if prunes and relation_state is None:
            # no start to score the candidates by: every candidate trains, and the record says why
            pruning = "off: the client has no trained relations to score the candidates' start by"
        elif prunes:

            def start_score(these: np.ndarray, seed: int) -> float:
                key = _rows_key(these)
                if key not in start_scores:  # as-trained did not run first: run() scores these rows once
                    run(these, seed, "start score", _label="as-trained", _trains=False, _keys={})
                return start_scores[key]

            kept, pruned = _top_candidates(
                candidates,
                refinement.downstream_top_candidates,
                seeds,
                lambda seed, setting, alpha: start_score(
                    skip_strength_rows(rows, refined[refinement.variant_name(main, setting, seed)], alpha), seed
                ),
            )
        scores: dict[tuple[int, float], list[float]] = {c: [] for c in kept}
        candidate_runs: dict[tuple[int, int, float], ProtocolRun] = {}
        for seed in seeds:
            unrefined = per_seed[0]["unrefined"] if (seed and not protocol.trains) else run(rows, seed, "unrefined")
            per_seed[seed] = {"unrefined": unrefined}
            for setting, alpha in kept:
                these = skip_strength_rows(rows, refined[refinement.variant_name(main, setting, seed)], alpha)
                candidate_runs[(seed, setting, alpha)] = result = run(
                    these, seed, f"candidate setting {setting} alpha {alpha:g}"
                )
                scores[(setting, alpha)].append(result.valid)
        chosen = max(kept, key=lambda c: _choice_key(c, scores[c]))
        unrefined_valid = [per_seed[seed]["unrefined"].valid for seed in seeds]
        for seed in seeds:
            setting, alpha = chosen
            chosen_rows = skip_strength_rows(rows, refined[refinement.variant_name(main, setting, seed)], alpha)
            per_seed[seed]["refined"] = candidate_runs.pop((seed, setting, alpha))
            perturbed = perturb_like(rows, chosen_rows, seed=_perturb_seed(seed, name))
            per_seed[seed]["perturbed"] = run(perturbed, seed, "perturbed")
            displacement[seed] = {
                "refined": mean_relative_displacement(rows, chosen_rows),
                "perturbed": mean_relative_displacement(rows, perturbed),
            }
            no_skip = refinement.variant_name(NO_SKIP_VARIANT, 0, seed)
            if refinement.no_skip_ablation and refinement.simskip.skip and no_skip in refined:
                per_seed[seed][NO_SKIP_VARIANT] = run(refined[no_skip], seed, NO_SKIP_VARIANT)
                displacement[seed][NO_SKIP_VARIANT] = mean_relative_displacement(rows, refined[no_skip])
        candidate_runs.clear()  # release the models of the candidates not chosen
        # test: only now, once every choice is made
        seeds_out: dict[str, dict[str, Any]] = {}
        tested: dict[int, tuple[dict, dict]] = {}
        for seed in seeds:
            out: dict[str, Any] = {}
            for row, result in per_seed[seed].items():
                summary = result.record()
                if result.trainer is None and id(result) in tested:  # the shared as-trained unrefined run
                    metrics, rr = tested[id(result)]
                else:
                    metrics, rr = _test_or_reuse(result, row_keys[id(result)], start_tests)
                    tested[id(result)] = (metrics, rr)
                summary["test"] = metrics
                summary["displacement"] = 0.0 if row == "unrefined" else displacement[seed][row]
                out[row] = summary
                for eval_protocol, values in rr.items():
                    ranks[rr_key(label, seed, row, eval_protocol)] = values
                say(
                    f"client {name}: {label} seed {seed} {row}: valid MRR {summary['valid']:.4f}, "
                    f"test MRR {metrics['standard']['mrr']:.4f} (standard) {metrics['fede']['mrr']:.4f} (fede), "
                    f"{summary['epochs']} epochs, {summary['seconds']:.1f}s"
                )
            seeds_out[str(seed)] = out
        say(f"client {name}: {label} done in {time.perf_counter() - started:.1f}s")
        setting, alpha = chosen
        record["protocols"][label] = {
            "seeds": seeds_out,
            "selection": {
                "candidates": [{"setting": k, "alpha": a, "valid": scores[(k, a)]} for k, a in kept],
                **({"pruned": pruned} if pruned else {}),
                **({"pruning": pruning} if pruning else {}),
                "chosen": {"setting": setting, "alpha": alpha, "overrides": refinement.search_settings()[setting]},
                "unrefined_valid": unrefined_valid,
                "valid_prefers_unrefined": float(np.mean(unrefined_valid)) >= float(np.mean(scores[chosen])),
                "metric": f"valid MRR ({config.eval_protocol} protocol), mean over seeds",
            },
            "seconds": round(time.perf_counter() - started, 3),
        }
    return record, ranks


def _rows_key(rows: np.ndarray) -> bytes:
    """The identity of a set of rows in the comparison's caches (start scores, start rankings)."""
    return hashlib.sha1(rows.tobytes()).digest()


def _choice_key(candidate: tuple[int, float], valid: Sequence[float]) -> tuple[float, int, float]:
    """The order candidates are chosen in: the best mean valid score; ties: the earlier setting, then the smaller alpha."""
    return (float(np.mean(valid)), -candidate[0], -candidate[1])


def _top_candidates(
    candidates: Sequence[tuple[int, float]],
    count: int,
    seeds: Sequence[int],
    start_score: Callable[[int, int, float], float],
) -> tuple[list[tuple[int, float]], list[dict[str, Any]]]:
    """``downstream-top-candidates``: the ``count`` candidates whose rows score best on valid at the start
    (``start_score(seed, setting, alpha)``, mean over seeds, ties as the final choice), in their original
    order, and the others as records (``setting``, ``alpha``, ``start_valid`` per seed)."""
    starts = {c: [start_score(seed, *c) for seed in seeds] for c in candidates}
    best = set(sorted(candidates, key=lambda c: _choice_key(c, starts[c]), reverse=True)[:count])
    kept = [c for c in candidates if c in best]
    pruned = [{"setting": k, "alpha": a, "start_valid": starts[(k, a)]} for k, a in candidates if (k, a) not in best]
    return kept, pruned


def _test_or_reuse(
    result: ProtocolRun, key: bytes, start_tests: dict[bytes, tuple[dict, dict]]
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """``result``'s test ranking, or the one already made of the same model.

    A run that starts from the trained relations and kept its starting state (best epoch 0) holds the
    very model ``as-trained`` ranks for the same rows (the premise :func:`~client.kge.protocols.run_protocol`'s
    ``start_valid`` already rests on: the adapter's identity map reproduces the rows exactly), so its test
    ranking is that one, bit for bit: ranked once per rows (``key``), then reused (copies).
    """
    at_start = result.init == "trained" and result.best_epoch == 0
    if at_start and key in start_tests:
        result.trainer = None  # released, as a test releases it
        metrics, rr = start_tests[key]
        return {name: dict(values) for name, values in metrics.items()}, {name: r.copy() for name, r in rr.items()}
    metrics, rr = result.test()
    if at_start:
        start_tests[key] = (metrics, rr)
    return metrics, rr


def _perturb_seed(seed: int, client: Any) -> int:
    return int(np.random.SeedSequence([int(seed), client_seed_key(client), 7]).generate_state(1)[0])


def check_record(
    record: Any, ranks: Mapping[str, Any], *, labels: Sequence[str] | None = None, seeds: int | None = None
) -> None:
    """Check a record of :func:`evaluate_client_rows` and its reciprocal ranks before anything uses them.

    Checked: the structure (protocols -> seeds -> rows -> ``test`` metrics of both evaluation
    protocols with a positive ``num_triples``, a finite ``valid``), the protocol labels (those
    given, less the ones the record says it skipped) and seed indices expected, and for every
    (protocol, seed, row, evaluation protocol) a 1-D float array of ``num_triples`` reciprocal
    ranks in (0, 1].

    :param labels: the protocol labels the run asked for (``None``: not checked).
    :param seeds: the number of seeds the run asked for (``None``: not checked).
    :raises DownstreamRecordError: naming the first thing that is wrong.
    """

    def fail(what: str) -> None:
        raise DownstreamRecordError(what)

    if not isinstance(record, Mapping) or not isinstance(record.get("protocols"), Mapping):
        fail("the record has no 'protocols' object")
    skipped = record.get("skipped") or {}
    if not isinstance(skipped, Mapping):
        fail("'skipped' is not an object")
    if labels is not None and sorted(set(record["protocols"]) | set(skipped)) != sorted(labels):
        fail(f"protocols {sorted(record['protocols'])} (skipped {sorted(skipped)}) are not the run's {sorted(labels)}")
    for label, entry in record["protocols"].items():
        per_seed = entry.get("seeds") if isinstance(entry, Mapping) else None
        if not isinstance(per_seed, Mapping) or not per_seed:
            fail(f"{label}: no seeds")
        if seeds is not None and sorted(per_seed) != [str(s) for s in range(seeds)]:
            fail(f"{label}: seeds {sorted(per_seed)}, expected {list(range(seeds))}")
        for seed, rows in per_seed.items():
            if not isinstance(rows, Mapping) or "unrefined" not in rows or any(row not in ROWS for row in rows):
                fail(
                    f"{label}, seed {seed}: rows {list(rows) if isinstance(rows, Mapping) else rows!r} are not among {list(ROWS)}"
                )
            for row, cell in rows.items():
                where = f"{label}, seed {seed}, row {row}"
                test = cell.get("test") if isinstance(cell, Mapping) else None
                if not isinstance(test, Mapping) or set(test) != set(EVAL_PROTOCOLS):
                    fail(f"{where}: test metrics must hold exactly {list(EVAL_PROTOCOLS)}")
                valid = cell.get("valid")
                if not isinstance(valid, (int, float)) or not np.isfinite(valid):
                    fail(f"{where}: valid score {valid!r} is not a finite number")
                for protocol, metrics in test.items():
                    n = metrics.get("num_triples") if isinstance(metrics, Mapping) else None
                    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                        fail(f"{where}, {protocol}: num_triples {n!r} is not a positive int")
                    key = rr_key(label, int(seed), row, protocol)
                    values = ranks.get(key)
                    array = np.asarray(values) if values is not None else None
                    if (
                        array is None
                        or array.ndim != 1
                        or array.shape[0] != n
                        or not np.issubdtype(array.dtype, np.floating)
                    ):
                        fail(f"reciprocal ranks {key!r}: expected a float array of {n} values")
                    if not (np.isfinite(array).all() and (array > 0).all() and (array <= 1).all()):
                        fail(f"reciprocal ranks {key!r}: values outside (0, 1]")
