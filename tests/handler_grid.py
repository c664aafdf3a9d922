"""An in-process Flower grid that delivers each message to the real ClientApp handler of its type.

One ``Context`` per node; no transport, no Ray. Tests run the real strategies against it (FedE
rounds, SimSkip rounds, the downstream evaluation) exactly as a deployment runs them, and may
tamper with replies (a failing, diverged or poisoning client). Messages outside a Flower runtime
need a task identity: use the ``task_identity`` fixture of ``conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client import client_app, refinement_app
from client.kge.models import initial_entity_table
from client.kge.refinement import load_run_configs
from server.simskip_strategy import DOWNSTREAM_TYPE, SIMSKIP_TRAIN_TYPE, run_refinement_phase
from server.strategy import FedEStrategy

HANDLERS = {
    "query.entities": client_app.handshake,
    "train": client_app.train,
    "evaluate": client_app.validate,
    "evaluate.test": client_app.test,
    "query.finish": client_app.finish,
    "query.restore": client_app.restore,
    SIMSKIP_TRAIN_TYPE: refinement_app.simskip_train,
    DOWNSTREAM_TYPE: refinement_app.downstream,
}


class HandlerGrid:
    """Delivers messages to the real ClientApp handlers; records every message and reply.

    :param tamper: ``tamper(msg, reply)`` may return a reply to use instead (or raise).
    """

    def __init__(self, contexts: dict[int, Context], tamper=None):
        self.contexts = contexts
        self.tamper = tamper
        self.log: list[tuple[Message, Message]] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            TaskIdentity.node_id = node
            reply = HANDLERS[msg.metadata.message_type](msg, self.contexts[node])
            if self.tamper is not None:
                reply = self.tamper(msg, reply) or reply
            self.log.append((msg, reply))
            replies.append(reply)
        return replies


def node_contexts(run_config: Mapping[str, Any], num_clients: int = 2) -> dict[int, Context]:
    """One ``Context`` per client: node ids 10, 11, ..., ``partition-id`` 0, 1, ..., all with ``run_config``."""
    return {
        10 + k: Context(
            run_id=1, node_id=10 + k, node_config={"partition-id": k}, state=RecordDict(), run_config=run_config
        )
        for k in range(num_clients)
    }


def train_fede(grid, run_config: Mapping[str, Any], *, kge_rounds: int, **strategy_kwargs):
    """FedE rounds through ``grid`` (handshake, then ``kge_rounds`` rounds of 1 local epoch).

    :param strategy_kwargs: :class:`FedEStrategy` arguments besides ``eval_every=1, patience=5``
        (default ``min_clients`` = the grid's nodes).
    :return: ``(strategy, result, kge_config, refinement)``.
    """
    _, kge_config, refinement = load_run_configs(run_config)
    strategy_kwargs.setdefault("min_clients", len(list(grid.get_node_ids())))
    strategy = FedEStrategy(eval_every=1, patience=5, **strategy_kwargs)
    vocabulary = strategy.handshake(grid)
    table = initial_entity_table(kge_config, len(vocabulary), seed=0)
    result = strategy.start(
        grid,
        ArrayRecord({"entity-table": Array(table)}),
        num_rounds=kge_rounds,
        train_config=ConfigRecord({"local-epochs": 1}),
    )
    return strategy, result, kge_config, refinement


def run_both_phases(run_config: Mapping[str, Any], run_dir: Path, *, kge_rounds: int, num_clients: int = 2):
    """FedE rounds (:func:`train_fede`), then the SimSkip phase and the downstream evaluation, through
    the real handlers of :func:`node_contexts`' nodes.

    :return: ``(grid, strategy, fede_result, records, refinement)``: the grid with its message log,
        the FedE strategy, its start result, the refinement phase's records and its config.
    """
    grid = HandlerGrid(node_contexts(run_config, num_clients))
    strategy, result, kge_config, refinement = train_fede(grid, run_config, kge_rounds=kge_rounds)
    records = run_refinement_phase(
        grid,
        strategy,
        best_round=result.best_round,
        refinement=refinement,
        kge_config=kge_config,
        setting="fede",
        run_dir=str(run_dir),
    )
    return grid, strategy, result, records, refinement
