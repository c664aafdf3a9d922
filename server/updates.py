"""The checks every party's reply passes before the server uses it.

A reply that fails a check leaves that party out of the step (recorded, logged); the others go on.
Used by the KGE rounds (:class:`server.strategy.FedEStrategy`); the SimSkip phase checks its
encoder weights with the same :class:`~server.records.UpdateRejectedError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Message

from client.protocol import ENTITY_ROWS_KEY, METRICS_KEY, ROWS_ARRAY, WEIGHT_KEY
from server.membership import Membership
from server.records import ClientInfo, UpdateRejectedError

__all__ = ["check_rows_update", "evaluation_metrics"]


def check_rows_update(info: ClientInfo | None, entity_dim: int, msg: Message) -> tuple[np.ndarray, dict[str, float]]:
    """One client's training reply, checked: ``(float32 rows (n_k, entity_dim), metrics)``.

    :param info: the registered client the reply is attributed to (``None``: an unregistered node).
    :param entity_dim: the federation's entity width.
    :raises UpdateRejectedError: error reply, unregistered node, missing record, rows of
        another shape (ids not that client's), non-float dtype, or NaN / Inf.
    """
    if msg.has_error():
        raise UpdateRejectedError(msg.error.reason)
    if info is None:
        raise UpdateRejectedError("reply from an unregistered node")
    record = msg.content.array_records.get(ENTITY_ROWS_KEY)
    if record is None or ROWS_ARRAY not in record:
        raise UpdateRejectedError(f"reply lacks {ENTITY_ROWS_KEY}/{ROWS_ARRAY}")
    metrics = msg.content.metric_records.get(METRICS_KEY)
    if metrics is None:
        raise UpdateRejectedError(f"reply lacks the {METRICS_KEY!r} record")
    try:
        rows = record[ROWS_ARRAY].numpy()
    except Exception as err:  # noqa: BLE001 - any undecodable payload is this client's fault
        raise UpdateRejectedError(f"rows cannot be decoded: {err}") from None
    expected = (info.global_ids.shape[0], entity_dim)
    if rows.shape != expected:
        raise UpdateRejectedError(f"rows of shape {rows.shape}, expected {expected} (its {expected[0]} entities)")
    if not np.issubdtype(rows.dtype, np.floating):
        raise UpdateRejectedError(f"rows of dtype {rows.dtype}, expected a float dtype")
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        raise UpdateRejectedError(
            f"{int((~finite).sum())} rows hold NaN or Inf (first: local row {int(np.flatnonzero(~finite)[0])})"
        )
    values = {k: float(v) for k, v in metrics.items()}
    values.setdefault("num-entities", float(expected[0]))
    return rows, values


def evaluation_metrics(
    members: Membership, replies: Sequence[tuple[int, Message]], phase: str
) -> dict[str, dict[str, float]]:
    """Client id -> metrics of the evaluation replies that hold them (with ``num_triples``), sorted
    by client id; an error reply or one without metrics is recorded as that client's failure."""
    per_client = {}
    for node_id, msg in replies:
        name = members.client_name(node_id)
        if msg.has_error():
            members.record_failure(name, msg.error.reason, phase)
            continue
        record = msg.content.metric_records.get(METRICS_KEY)
        if node_id not in members.clients or record is None or WEIGHT_KEY not in record:
            members.record_failure(name, "reply without metrics (or from an unregistered node)", phase)
            continue
        per_client[name] = {k: float(v) for k, v in record.items()}
    return dict(sorted(per_client.items()))
