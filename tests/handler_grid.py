"""An in-process Flower grid that delivers each message to the real ClientApp handler of its type.

One ``Context`` per node; no transport, no Ray. Tests run the real strategies against it (FedE
rounds, SimSkip rounds, the downstream evaluation) exactly as a deployment runs them, and may
tamper with replies (a failing, diverged or poisoning client). Messages outside a Flower runtime
need a task identity: use the ``task_identity`` fixture of ``conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Message
from flwr.supercore.task_identity import TaskIdentity

from client import client_app, refinement_app
from server.simskip_strategy import DOWNSTREAM_TYPE, SIMSKIP_TRAIN_TYPE

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
