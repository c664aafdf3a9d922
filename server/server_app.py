"""The federation's Flower ServerApp: handshake, FedE rounds, final test, run folder, then
(``simskip-rounds > 0``) the SimSkip phase, the downstream evaluation and the results report
(:func:`server.simskip_strategy.run_refinement_phase`).

Configured from ``[tool.flwr.app.config]`` in ``pyproject.toml`` plus ``--run-config``
overrides: federation keys are read by :class:`client.kge.settings.FederationSettings`, KGE keys by
:class:`client.kge.config.KGEConfig`, refinement keys by
:class:`client.kge.refinement.RefinementConfig` (unknown keys fail, naming them).

The supported entry points are ``simskip-sim`` and ``simskip-server``: they set ``run-dir`` and
the parties' data paths in the run config. A run started otherwise (``flwr run .`` with the
pyproject defaults, where ``run-dir = ""``) is refused before the handshake
(:func:`check_started_by_launcher`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from client.kge.run_folder import FINAL_METRICS, METRICS_JSONL, RunFolder, read_jsonl, write_jsonl
from client.kge.settings import SettingsError
from client.object_pulls import shorten_object_pull_backoff
from server.records import FederationError, FedEResult, RoundReport, dp_record, secagg_clipped_total
from server.secure_aggregation import SecureAggregation
from server.strategy import FedEStrategy

__all__ = ["LAUNCH_DOCS", "TIMING_KEYS", "UnsupportedLaunchError", "app", "check_started_by_launcher", "run_federation"]

app = ServerApp()
shorten_object_pull_backoff()  # the replies' objects: 20 ms first retry, not Flower's 1 s


#: The documentation page on the supported entry points (why simskip-sim / simskip-server, not flwr run).
LAUNCH_DOCS = "docs/how-to/entry-points.md"


class UnsupportedLaunchError(SettingsError):
    """The ServerApp was started without ``simskip-sim`` / ``simskip-server`` (no ``run-dir``)."""


def check_started_by_launcher(run_config: dict[str, Any]) -> None:
    """Refuse a run whose config lacks ``run-dir``, as one started by ``flwr run .`` with the
    pyproject defaults does: only ``simskip-sim`` and ``simskip-server`` set it, together with
    the parties' data paths the clients need.

    :param run_config: the run config the ServerApp received (kebab-case keys).
    :raises UnsupportedLaunchError: when ``run-dir`` is missing or empty; the one-line message
        names both commands and :data:`LAUNCH_DOCS`.
    """
    if str(run_config.get("run-dir", "")).strip():
        return
    raise UnsupportedLaunchError(
        "run-dir is empty: this app was not started by simskip-sim or simskip-server (e.g. by "
        "`flwr run .`), which set run-dir and the parties' data paths; start it with `simskip-sim` "
        f"(one machine) or `simskip-server` (several machines), see {LAUNCH_DOCS}"
    )


#: Keys of ``final_metrics.json`` that hold wall-clock measurements: they differ between two
#: runs with the same seed; every other key is a function of the seed and the data.
TIMING_KEYS = ("timing",)


def _final_payload(strategy: FedEStrategy, result: FedEResult, settings: Any, started: float) -> dict[str, Any]:
    expected = sorted(info.client_id for info in strategy.clients.values())
    return {
        "setting": settings.setting,
        "best_round": result.best_round,
        "rounds_run": len(result.rounds),
        "stopped_early": result.stopped_early,
        "best_valid_overall": result.best_valid,
        "stopping": result.stopping,
        "test": result.test,
        "test_overall": result.test_overall,
        "clients": expected,
        "missing_clients": sorted(set(expected) - set(result.test)),
        "timing": {"seconds": round(time.time() - started, 3)},
        # dp = local: each party's (epsilon, delta) for the whole run, as its accountant reported it
        **({"dp": dp} if (dp := dp_record(result.rounds)) is not None else {}),
        # secure-aggregation = true: the run's total of uploaded values SecAgg+ clipped to +-c, when any
        **({"secagg_clipped": n} if (n := secagg_clipped_total(result.rounds)) else {}),
    }


def _trim_metrics(run_dir: Path, last_round: int) -> None:
    """Drop ``metrics.jsonl`` rows after ``last_round`` (written before the server died, but
    after its last checkpoint): the resumed run writes those rounds again."""
    path = run_dir / METRICS_JSONL
    rows = read_jsonl(path)
    kept = [row for row in rows if int(row["round"]) <= last_round]
    if len(kept) != len(rows):
        log(INFO, "resume: dropping %s metrics rows after round %s", len(rows) - len(kept), last_round)
        write_jsonl(path, kept)  # as RunFolder writes them, so the kept rows' bytes stay the same


def _load_checkpoint(run_dir: str, run_config: dict[str, Any], vocabulary: list[str] | None = None) -> tuple:
    """R2's :func:`server.checkpoint.load_checkpoint`, its errors logged before they propagate."""
    from server.checkpoint import CheckpointError, load_checkpoint  # heavy (torch, pykeen): resumed runs only

    try:
        return load_checkpoint(run_dir, run_config=run_config, vocabulary=vocabulary)
    except CheckpointError as err:
        log(ERROR, "resume refused: %s", err)
        raise


def run_federation(grid: Grid, run_config: dict[str, Any]) -> FedEResult:
    """Run one FedE / Isolation federation and write its run folder.

    After every completed round ``metrics.jsonl`` gets the round's row and then the checkpoint
    is written (:func:`server.checkpoint.save_checkpoint`), so a failure at any point loses at
    most the round in progress. With ``resume = true`` the checkpoint in ``run-dir`` is loaded
    (a corrupt one or a changed model-defining setting raises
    :class:`server.checkpoint.CheckpointError`; never a silent fresh start), the clients restore
    their private state of that round, and the loop continues; when the KGE phase had already
    finished (``final_metrics.json`` exists) the run goes straight to the SimSkip phase, after
    its last checkpointed SimSkip round (each of which is checkpointed too).

    :param grid: Flower's grid (deployment or simulation).
    :param run_config: the resolved run config (kebab-case keys).
    :returns: the strategy's result (best round, per-client and overall test metrics).
    :raises SettingsError: for ``setting = "collection"`` (trained centrally, without Flower).
    :raises FederationError: when the handshake fails, too few clients stay connected, a round
        gets no usable update, or test metrics are missing.
    """
    from client.kge.refinement import load_run_configs  # heavy (torch, pykeen); knows the refinement keys too

    started = time.time()
    settings, kge_config, refinement = load_run_configs(run_config)
    if settings.setting == "collection":
        raise SettingsError(
            "setting 'collection' trains centrally without Flower: use simskip-sim --setting collection"
        )
    if settings.resume:  # fail fast on a missing/corrupt checkpoint or a changed setting, before waiting for clients
        _load_checkpoint(settings.run_dir, run_config)

    strategy = FedEStrategy(
        setting=settings.setting,
        fraction_train=settings.fraction_train,
        min_clients=settings.min_clients,
        min_clients_timeout=settings.min_clients_timeout,
        eval_every=kge_config.eval_every,
        patience=kge_config.patience,
        seed=kge_config.seed,
        transfer_dtype=settings.transfer_dtype,
        aggregation=settings.aggregation,
        aggregation_trim=settings.aggregation_trim,
        stopping=kge_config.stopping,
        secure_aggregation=SecureAggregation(
            settings.secagg_num_shares, settings.secagg_reconstruction_threshold, settings.secagg_clipping_range
        )
        if settings.secure_aggregation
        else None,
    )
    log(INFO, "handshake: waiting for %s clients", settings.min_clients)
    vocabulary = strategy.handshake(grid, timeout=settings.round_timeout)
    try:
        result = _run_phases(grid, strategy, vocabulary, run_config, settings, kge_config, refinement, started)
    except Exception as err:
        # the parties stay up (a resumed run can use them) but their operators learn why
        strategy.members.finish(grid, "failed", f"{type(err).__name__}: {err}", settings.run_dir)
        raise
    strategy.members.finish(grid, "completed", "", settings.run_dir)
    return result


def _run_phases(
    grid: Grid,
    strategy: FedEStrategy,
    vocabulary: list[str],
    run_config: dict[str, Any],
    settings: Any,
    kge_config: Any,
    refinement: Any,
    started: float,
) -> FedEResult:
    """Everything after the handshake: the KGE rounds (or a resume), the outputs, the SimSkip phase."""
    from client.kge.models import initial_entity_table  # heavy (torch, pykeen); Flower-free, shared with the clients

    resume_from = None
    if settings.resume:
        checkpoint_round, arrays, state = _load_checkpoint(settings.run_dir, run_config, vocabulary)
        resume_from = (arrays, state)
        _trim_metrics(Path(settings.run_dir), checkpoint_round)
    folder = RunFolder(settings.run_dir) if settings.run_dir else None
    table = initial_entity_table(kge_config, len(vocabulary), seed=kge_config.seed)
    clients = {
        info.client_id: {
            "num_entities": int(info.global_ids.shape[0]),
            "num_train": info.num_train,
            "num_valid": info.num_valid,
            "num_test": info.num_test,
        }
        for info in strategy.clients.values()
    }
    log(INFO, "handshake: %s clients, %s entities in the union: %s", len(clients), len(vocabulary), clients)
    if folder is not None:
        folder.write_config(
            {
                "federation": dataclasses.asdict(settings),
                "kge": kge_config.to_run_config(),
                "refinement": refinement.to_run_config(),
                "run_config": dict(run_config),
                "num_entities": len(vocabulary),
                "entity_dim": int(table.shape[1]),
                "clients": clients,
                **({"resumed_from_round": checkpoint_round} if resume_from is not None else {}),
            }
        )

    if resume_from is not None and folder is not None and (folder.path / FINAL_METRICS).exists():
        result = _resume_after_kge_phase(grid, strategy, resume_from, folder, settings)
    else:

        def on_round_end(report: RoundReport) -> None:
            if folder is None:
                return
            folder.append_metrics(report.as_dict())  # first the metrics, then the checkpoint naming that round
            from server.checkpoint import save_checkpoint  # heavy (torch, pykeen): not at app load

            save_checkpoint(
                folder.path,
                round=report.round,
                arrays=strategy.state.checkpoint_arrays(),
                state=strategy.state.checkpoint_state(),
                run_config=run_config,
                vocabulary=vocabulary,
            )

        result = strategy.start(
            grid,
            initial_arrays=ArrayRecord({"entity-table": Array(np.asarray(table, dtype=np.float32))}),
            num_rounds=settings.num_server_rounds,
            timeout=settings.round_timeout,
            train_config=ConfigRecord({"local-epochs": kge_config.local_epochs}),
            on_round_end=on_round_end,
            resume_from=resume_from,
        )
        del table
        _write_kge_outputs(strategy, result, settings, folder, vocabulary, started)
    if refinement.enabled:
        # after final_metrics.json is written: a failure here loses nothing of the KGE phase
        from server.simskip_strategy import run_refinement_phase  # heavy (torch, pykeen): SimSkip phase only

        simskip_resume = resume_from if resume_from is not None and resume_from[1].get("phase") == "simskip" else None
        run_refinement_phase(
            grid,
            strategy,
            best_round=result.best_round,
            refinement=refinement,
            kge_config=kge_config,
            setting=settings.setting,
            run_dir=str(folder.path) if folder is not None else None,
            timeout=settings.round_timeout,
            save_checkpoint=_simskip_checkpointer(strategy, folder, run_config, vocabulary)
            if folder is not None
            else None,
            resume_from=simskip_resume,
        )
    return result


def _simskip_checkpointer(strategy: FedEStrategy, folder: RunFolder, run_config: dict[str, Any], vocabulary: list[str]):
    """Saves the KGE phase's final state plus the SimSkip strategy's after every SimSkip round."""
    from server.checkpoint import save_checkpoint  # heavy (torch, pykeen): SimSkip phase only

    def save(simskip: Any) -> None:
        save_checkpoint(
            folder.path,
            round=strategy.loop.round,
            step=simskip.round,
            arrays={**strategy.state.checkpoint_arrays(), **simskip.checkpoint_arrays()},
            state={**strategy.state.checkpoint_state(), **simskip.checkpoint_state()},
            run_config=run_config,
            vocabulary=vocabulary,
        )

    return save


def _write_kge_outputs(
    strategy: FedEStrategy,
    result: FedEResult,
    settings: Any,
    folder: RunFolder | None,
    vocabulary: list[str],
    started: float,
) -> None:
    """Embeddings and ``final_metrics.json``; then fail if a client's test metrics are missing.

    FedE writes the best round's table; isolation, and FedE with ``stopping = per-party`` (no one
    table holds every party's own best rows), one table per client.
    """
    payload = _final_payload(strategy, result, settings, started)
    if folder is not None:
        if settings.setting == "fede" and not strategy.per_party:
            folder.write_entity_embeddings(strategy.state.table, vocabulary)
        else:  # one table per client, its (own best) rows at their global ids
            for node_id, info in strategy.clients.items():
                folder.write_entity_embeddings(
                    _scatter(strategy.state.client_rows[node_id], info.global_ids, len(vocabulary)),
                    vocabulary,
                    name=f"_client{info.client_id}",
                )
        folder.write_final_metrics(payload)
    if payload["missing_clients"]:
        raise FederationError(f"no test metrics from clients {payload['missing_clients']}")


def _resume_after_kge_phase(
    grid: Grid, strategy: FedEStrategy, resume_from: tuple, folder: RunFolder, settings: Any
) -> FedEResult:
    """The KGE phase had finished: restore its best state on server and clients, skip to SimSkip."""
    final = json.loads((folder.path / FINAL_METRICS).read_text())
    strategy.state.restore_checkpoint(*resume_from)
    strategy.state.use_best()
    log(
        INFO,
        "resume: the KGE phase had finished (best round %s); going on with the SimSkip phase",
        strategy.loop.best_round,
    )
    strategy.members.restore_clients(grid, sorted(strategy.clients), settings.round_timeout, strict=True)
    return FedEResult(
        best_round=int(final["best_round"]),
        best_valid=dict(final.get("best_valid_overall", {})),
        test=dict(final.get("test", {})),
        test_overall=dict(final.get("test_overall", {})),
        stopped_early=bool(final.get("stopped_early", False)),
        stopping=dict(final.get("stopping") or {}),
        rounds=[RoundReport.from_dict(row) for row in strategy.loop.reports],
    )


def _scatter(rows: np.ndarray, global_ids: np.ndarray, num_entities: int) -> np.ndarray:
    """A full-size table holding ``rows`` at ``global_ids`` and NaN elsewhere (not held)."""
    table = np.full((num_entities, rows.shape[1]), np.nan, dtype=np.float32)
    table[global_ids] = rows
    return table


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: run the federation configured by ``context.run_config``.

    :raises UnsupportedLaunchError: at once, before the handshake, for a run not started by
        ``simskip-sim`` / ``simskip-server`` (:func:`check_started_by_launcher`).
    """
    run_config = dict(context.run_config)
    try:
        check_started_by_launcher(run_config)
    except UnsupportedLaunchError as err:
        log(ERROR, "%s", err)
        raise
    run_federation(grid, run_config)
