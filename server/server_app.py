"""The federation's Flower ServerApp: handshake, FedE rounds, final test, run folder, then
(``simskip-rounds > 0``) the SimSkip phase, the downstream evaluation and the results report
(:func:`server.simskip_strategy.run_refinement_phase`).

Configured from ``[tool.flwr.app.config]`` in ``pyproject.toml`` plus ``--run-config``
overrides: federation keys are read by :class:`server.settings.FederationSettings`, KGE keys by
:class:`client.kge.config.KGEConfig`, refinement keys by
:class:`client.kge.refinement.RefinementConfig` (unknown keys fail, naming them).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from logging import INFO

from server.run_folder import RunFolder
from server.settings import SettingsError
from server.strategy import FedEResult, FedEStrategy, FederationError

__all__ = ["app", "run_federation"]

app = ServerApp()


def _final_payload(strategy: FedEStrategy, result: FedEResult, settings: Any, started: float) -> dict[str, Any]:
    expected = sorted(info.client_id for info in strategy.clients.values())
    return {
        "setting": settings.setting,
        "best_round": result.best_round,
        "rounds_run": len(result.rounds),
        "stopped_early": result.stopped_early,
        "best_valid_overall": result.best_valid,
        "test": result.test,
        "test_overall": result.test_overall,
        "clients": expected,
        "missing_clients": sorted(set(expected) - set(result.test)),
        "seconds": round(time.time() - started, 3),
    }


def run_federation(grid: Grid, run_config: dict[str, Any]) -> FedEResult:
    """Run one FedE / Isolation federation and write its run folder.

    :param grid: Flower's grid (deployment or simulation).
    :param run_config: the resolved run config (kebab-case keys).
    :returns: the strategy's result (best round, per-client and overall test metrics).
    :raises SettingsError: for ``setting = "collection"`` (trained centrally, without Flower).
    :raises FederationError: when the handshake fails, no client trains, or test metrics are missing.
    """
    from client.kge.models import initial_entity_table  # Flower-free, shared with the clients
    from client.kge.refinement import load_run_configs  # knows the refinement keys too

    started = time.time()
    settings, kge_config, refinement = load_run_configs(run_config)
    if settings.setting == "collection":
        raise SettingsError("setting 'collection' trains centrally without Flower: use simskip-sim --setting collection")
    folder = RunFolder(settings.run_dir) if settings.run_dir else None

    strategy = FedEStrategy(
        setting=settings.setting,
        fraction_train=settings.fraction_train,
        min_clients=settings.min_clients,
        eval_every=kge_config.eval_every,
        patience=kge_config.patience,
        seed=kge_config.seed,
        transfer_dtype=settings.transfer_dtype,
    )
    log(INFO, "handshake: waiting for %s clients", settings.min_clients)
    vocabulary = strategy.handshake(grid, timeout=settings.round_timeout)
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
        folder.write_config({
            "federation": dataclasses.asdict(settings),
            "kge": kge_config.to_run_config(),
            "refinement": refinement.to_run_config(),
            "run_config": dict(run_config),
            "num_entities": len(vocabulary),
            "entity_dim": int(table.shape[1]),
            "clients": clients,
        })

    result = strategy.start(
        grid,
        initial_arrays=ArrayRecord({"entity-table": Array(np.asarray(table, dtype=np.float32))}),
        num_rounds=settings.num_server_rounds,
        timeout=settings.round_timeout,
        train_config=ConfigRecord({"local-epochs": kge_config.local_epochs}),
        on_round_end=(lambda report: folder.append_metrics(report.as_dict())) if folder is not None else None,
    )

    payload = _final_payload(strategy, result, settings, started)
    if folder is not None:
        if settings.setting == "fede":
            folder.write_entity_embeddings(strategy.table, vocabulary)
        else:  # isolation: one table per client, rows in its local order, with their global ids
            for node_id, info in strategy.clients.items():
                folder.write_entity_embeddings(
                    _scatter(strategy.client_rows[node_id], info.global_ids, len(vocabulary)),
                    vocabulary,
                    name=f"_client{info.client_id}",
                )
        folder.write_final_metrics(payload)
    if payload["missing_clients"]:
        raise FederationError(f"no test metrics from clients {payload['missing_clients']}")
    if refinement.enabled:
        # after final_metrics.json is written: a failure here loses nothing of the KGE phase
        from server.simskip_strategy import run_refinement_phase

        run_refinement_phase(
            grid, strategy, best_round=result.best_round, refinement=refinement, kge_config=kge_config,
            setting=settings.setting, run_dir=str(folder.path) if folder is not None else None,
            timeout=settings.round_timeout,
        )
    return result


def _scatter(rows: np.ndarray, global_ids: np.ndarray, num_entities: int) -> np.ndarray:
    """A full-size table holding ``rows`` at ``global_ids`` and NaN elsewhere (not held)."""
    table = np.full((num_entities, rows.shape[1]), np.nan, dtype=np.float32)
    table[global_ids] = rows
    return table


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: run the federation configured by ``context.run_config``."""
    run_federation(grid, dict(context.run_config))
