"""A party's side of secure aggregation (``secure-aggregation = true``): Flower's SecAgg+ on its upload.

The server side is :mod:`server.secure_aggregation`; the how-to is ``docs/how-to/secure-aggregation.md``.
Under SecAgg+ a FedE round is four ``train`` messages, each carrying the ConfigRecord
``"secaggplus_configs"``. :func:`secagg_when_asked`, the train handler's mod, hands exactly those
to Flower's own ``secaggplus_mod`` (unchanged); that mod answers the key set-up, key sharing and
unmask stages itself and runs the train handler at the masked-vector stage, whose message is
legacy-shaped (a ``FitIns``: ``fitins.parameters`` = [the party's rows in its local order, their
global ids], ``fitins.config`` = the usual train config plus ``num-union`` and
``secagg-clipping-range``). Between the two, :func:`train_on_fitins` reads the FitIns with Flower's
compat helpers (:func:`secure_train_request`), hands the train handler the plain train message it
always gets (rows and config), and turns the handler's plain reply into the ``FitRes`` that
``secaggplus_mod`` masks (:func:`secure_train_reply`): the rows the handler releases (exactly what it
would upload in the clear) scattered into the union table (``num-union`` x d, zeros elsewhere), next
to its 0/1 holder mask (``num-union`` x 1) and the binary digits of its count of values beyond
SecAgg+'s clipping range (:data:`CLIPPED_BITS` 0/1 values, :func:`clipped_bits`: a per-party,
data-dependent count, so it goes masked too and the server obtains only the sum over the parties),
with ``num_examples = 1``. The handler itself does not know about SecAgg+. ``secaggplus_mod`` then
quantizes and masks the arrays, sends only the masked integers and empties every ArrayRecord of the
reply: no row leaves the party in the clear. The other metrics (train loss, times, the DP
accountant's figures) do travel in the clear.

The SimSkip phase's rounds (``train.simskip``, the handler of :mod:`client.refinement_app`) go the
same way: ``secaggplus_mod`` passes on only messages whose type is exactly ``train``, so
:func:`secagg_when_asked` hands it a ``train.simskip`` stage message renamed ``train`` and gives the
reply its type back. Its FitIns holds ``[rows, the global encoder + head weights in the order of
config`` :data:`WEIGHT_NAMES_KEY` ``]``; :func:`weights_on_fitins` hands the handler the plain
SimSkip message (rows, ``simskip-weights``, config) and turns the weights it replies with into the
``FitRes`` that ``secaggplus_mod`` masks (:func:`secure_weights_reply`): the weight arrays in that
order, float64, with ``num_examples`` = the party's row count (the plain phase's FedAvg weight). Its
count of clipped weight values is logged by the party only (a weighted mean cannot carry an exact sum).

A plain ``train`` message (no ``"secaggplus_configs"``) goes to the handler as before, unless the
party demands secure aggregation (its node config, or the run config, sets ``secure-aggregation``):
then it is refused with :class:`SecureUploadError`, so a misconfigured server never receives this
party's rows in the clear. Likewise a plain ``train.simskip`` message of a federated SimSkip phase
(config ``federate``: its reply would carry the encoder weights in the clear); the local-only
ablation's uploads no weights and passes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from client.protocol import CONFIG_KEY, ENTITY_ROWS_KEY, METRICS_KEY, ROWS_ARRAY, WEIGHTS_KEY

__all__ = [
    "CLIPPED_BITS",
    "CLIPPED_METRIC",
    "CLIPPING_RANGE_KEY",
    "FITINS_PARAMETERS",
    "NUM_UNION_KEY",
    "SECURE_AGGREGATION_KEY",
    "WEIGHT_NAMES_KEY",
    "SecureTrainRequest",
    "SecureUploadError",
    "SecureWeightsRequest",
    "clipped_bits",
    "party_demands_secure_aggregation",
    "secagg_when_asked",
    "secure_train_reply",
    "secure_train_request",
    "secure_weights_reply",
    "secure_weights_request",
    "train_on_fitins",
    "weights_on_fitins",
]

#: The ArrayRecord of a legacy ``FitIns`` (Flower's compat layout), present only under SecAgg+.
FITINS_PARAMETERS = "fitins.parameters"
#: FitIns config: rows of the union table the party scatters its rows into.
NUM_UNION_KEY = "num-union"
#: FitIns config: SecAgg+'s clipping range c (values beyond +-c are clipped by the quantization).
CLIPPING_RANGE_KEY = "secagg-clipping-range"
#: The server's name of a secure round's total count of uploaded values beyond +-c (clipped by the
#: quantization), summed under the masks (:func:`clipped_bits`); never a reply metric.
CLIPPED_METRIC = "secagg-clipped"
#: Binary digits of a party's clipped count in its masked vector (counts up to 2^48 - 1).
CLIPPED_BITS = 48
#: Node-config (and run-config) key with which a party demands secure aggregation.
SECURE_AGGREGATION_KEY = "secure-aggregation"
#: FitIns config of a SimSkip round: the names of the weight arrays that follow the rows (a JSON list).
WEIGHT_NAMES_KEY = "simskip-weight-names"


class SecureUploadError(RuntimeError):
    """This party will not upload: a plain train message while it demands secure aggregation, a
    malformed SecAgg+ train message, or rows that are not finite."""


#: The string spellings of a ``secure-aggregation`` value (Flower parses ``=true`` in a node config as the
#: bool; a config written as a quoted string arrives as the string).
_BOOL_SPELLINGS = {"true": True, "false": False}


def _demanded(value: Any, where: str) -> bool:
    """A ``secure-aggregation`` value, failing closed: a bool, or ``"true"`` / ``"false"`` (any case);
    missing: ``False``. Flower parses ``--node-config "secure-aggregation=1"`` as the int 1, which a
    truthiness test once read as false (the party then uploaded in the clear): it is refused.

    :raises SecureUploadError: any other value (a typo must not make the party upload in the clear).
    """
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOL_SPELLINGS:
        return _BOOL_SPELLINGS[value.strip().lower()]
    raise SecureUploadError(
        f"{where} {SECURE_AGGREGATION_KEY!r}: expected true or false, got {value!r} ({type(value).__name__}); "
        "this party refuses to guess whether it may upload in the clear"
    )


def party_demands_secure_aggregation(context: Context) -> bool:
    """Whether this party uploads rows only under SecAgg+: its node config ``secure-aggregation``
    (its operator's word: ``flower-supernode --node-config "secure-aggregation=true ..."``) or the
    run config's (the federation's setting).

    :raises SecureUploadError: a value that is not a bool spelling (:func:`_demanded`).
    """
    return _demanded(context.node_config.get(SECURE_AGGREGATION_KEY), "node config") or _demanded(
        context.run_config.get(SECURE_AGGREGATION_KEY), "run config"
    )


def secagg_when_asked(msg: Message, context: Context, call_next: Any) -> Message:
    """The train handler's mod: Flower's ``secaggplus_mod`` for a message with ``"secaggplus_configs"``,
    the handler itself otherwise.

    ``secaggplus_mod`` cannot sit on the handler unconditionally: it raises ``KeyError`` on a ``train``
    message without that record (every plain FedE round).

    A ``train.<action>`` stage message (the SimSkip phase's) reaches ``secaggplus_mod`` renamed
    ``train`` (the only type it handles), and its reply leaves with the message's own type.

    :raises SecureUploadError: a plain train message while :func:`party_demands_secure_aggregation`
        (for ``train.simskip``: one of a federated SimSkip phase, whose reply carries the weights).
    """
    message_type = msg.metadata.message_type
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        if message_type == MessageType.TRAIN:
            return secaggplus_mod(msg, context, train_on_fitins(call_next))
        msg.metadata.message_type = MessageType.TRAIN
        try:
            reply = secaggplus_mod(msg, context, weights_on_fitins(call_next))
        finally:
            msg.metadata.message_type = message_type
        reply.metadata.message_type = message_type
        return reply
    if party_demands_secure_aggregation(context) and _uploads_in_the_clear(msg):
        what = "rows" if message_type == MessageType.TRAIN else "SimSkip encoder weights"
        raise SecureUploadError(
            f"this party uploads its {what} only under secure aggregation (secure-aggregation = true), "
            f"and the server sent a plain {message_type} message"
        )
    return call_next(msg, context)


def _uploads_in_the_clear(msg: Message) -> bool:
    """Whether the plain reply to ``msg`` would carry rows or weights: a FedE ``train`` message always, a
    ``train.<action>`` (SimSkip) one when its config says ``federate`` (the local-only ablation uploads none)."""
    if msg.metadata.message_type == MessageType.TRAIN:
        return True
    config = msg.content.config_records.get(CONFIG_KEY, ConfigRecord())
    return bool(config.get("federate", True))


@dataclass(frozen=True)
class SecureTrainRequest:
    """The masked-vector stage's train message, read.

    :param rows: the party's rows from the server, local order, in the wire dtype.
    :param global_ids: int64 (n_k,), local id -> row of the union table.
    :param num_union: rows of the union table.
    :param clipping_range: SecAgg+'s c.
    :param config: the train config (``server-round``, ``best-round``, ``federation-id``, ...).
    """

    rows: np.ndarray
    global_ids: np.ndarray
    num_union: int
    clipping_range: float
    config: ConfigRecord


def _call_with_content(call_next: Any, msg: Message, context: Context, content: RecordDict) -> Message:
    """``call_next`` (the plain handler) on ``msg`` carrying ``content`` instead of the SecAgg+ stage's
    records, which ``msg`` carries again afterwards (the mod reads them once the handler returns)."""
    secagg_content = msg.content
    msg.content = content
    try:
        return call_next(msg, context)
    finally:
        msg.content = secagg_content


def train_on_fitins(call_next: Any) -> Any:
    """The handler step ``secaggplus_mod`` calls at the masked-vector stage: the FitIns in, the
    plain train handler (``call_next``) on the plain message, the FitRes out."""

    def step(msg: Message, context: Context) -> Message:
        request = secure_train_request(msg)
        if request is None:  # a stage-2 message always carries a FitIns; a plain one is the handler's
            return call_next(msg, context)
        plain = {ENTITY_ROWS_KEY: ArrayRecord({ROWS_ARRAY: Array(request.rows)}), CONFIG_KEY: request.config}
        reply = _call_with_content(call_next, msg, context, RecordDict(plain))
        if reply.has_error():
            return reply
        rows = reply.content.array_records[ENTITY_ROWS_KEY][ROWS_ARRAY].numpy()
        metrics = dict(reply.content.metric_records.get(METRICS_KEY, {}))
        return secure_train_reply(msg, request, rows, metrics)

    return step


def secure_train_request(msg: Message) -> SecureTrainRequest | None:
    """The SecAgg+ train request in ``msg``, or ``None`` for a plain train message.

    :raises SecureUploadError: a FitIns without rows and one global id per row, or ids that are not
        distinct rows of the union table.
    """
    if FITINS_PARAMETERS not in msg.content.array_records:
        return None
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    arrays = parameters_to_ndarrays(fitins.parameters)
    config = ConfigRecord(dict(fitins.config))
    if len(arrays) != 2 or NUM_UNION_KEY not in config or CLIPPING_RANGE_KEY not in config:
        raise SecureUploadError(
            f"SecAgg+ train message: expected FitIns arrays [rows, global ids] and config keys "
            f"{NUM_UNION_KEY!r}, {CLIPPING_RANGE_KEY!r}; got {len(arrays)} arrays, keys {sorted(config)}"
        )
    rows, ids = arrays
    num_union = int(config[NUM_UNION_KEY])
    ids = np.asarray(ids, dtype=np.int64)
    num_entities = rows.shape[0] if rows.ndim == 2 else -1
    if num_entities < 0 or ids.shape != (num_entities,):
        raise SecureUploadError(
            f"SecAgg+ train message: rows of shape {rows.shape} and ids of shape {ids.shape}, expected (n, d) and (n,)"
        )
    if num_entities and (ids.min() < 0 or ids.max() >= num_union or np.unique(ids).size != num_entities):
        raise SecureUploadError(f"SecAgg+ train message: global ids are not distinct rows of 0..{num_union - 1}")
    return SecureTrainRequest(rows, ids, num_union, float(config[CLIPPING_RANGE_KEY]), config)


def clipped_bits(count: int) -> np.ndarray:
    """The binary digits (least significant first) of a clipped count, float64 (:data:`CLIPPED_BITS`,):
    0/1 values pass SecAgg+'s quantization exactly (c >= 1, a power of 2), as the holder mask does, so the
    server's sum of the digits over the parties, ``rint(mean * k)`` per digit, gives the exact total.

    :raises SecureUploadError: a negative count or one beyond 2^48 - 1."""
    if not 0 <= count < 1 << CLIPPED_BITS:
        raise SecureUploadError(f"clipped count {count} does not fit {CLIPPED_BITS} binary digits")
    return np.array([(count >> j) & 1 for j in range(CLIPPED_BITS)], dtype=np.float64)


def secure_train_reply(msg: Message, request: SecureTrainRequest, rows: np.ndarray, metrics: dict[str, Any]) -> Message:
    """The ``FitRes``-shaped reply ``secaggplus_mod`` masks: ``[table, mask, clipped bits]`` with
    ``num_examples = 1``.

    :param rows: the rows the party releases this round (exactly what it would upload in the clear),
        local order, (n_k, d).
    :param metrics: the reply's metrics (they travel in the clear, unchanged); the count of values
        beyond +-c goes masked (:func:`clipped_bits`).
    :raises SecureUploadError: NaN or Inf in ``rows`` (SecAgg+ would turn them into silent garbage
        in everyone's sum, and the server cannot see them to refuse them).
    """
    finite = np.isfinite(rows)
    if not finite.all():
        raise SecureUploadError(f"{int((~finite).sum())} uploaded values are NaN or Inf: refusing to upload")
    clipped = int((np.abs(rows) > request.clipping_range).sum())
    if clipped:
        log(
            WARNING,
            "secure aggregation: %s uploaded values lie beyond the clipping range +-%s and are clipped",
            clipped,
            request.clipping_range,
        )
    # float64: SecAgg+'s quantization multiplies by 2^22 / 2c; in float16 that overflows
    table = np.zeros((request.num_union, rows.shape[1]), dtype=np.float64)
    table[request.global_ids] = rows
    mask = np.zeros((request.num_union, 1), dtype=np.float64)
    mask[request.global_ids] = 1.0
    res = FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters([table, mask, clipped_bits(clipped)]),
        num_examples=1,
        metrics=dict(metrics),
    )
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)


@dataclass(frozen=True)
class SecureWeightsRequest:
    """The masked-vector stage's ``train.simskip`` message, read.

    :param rows: the party's entity rows from the server (local order).
    :param weights: the round's starting encoder + head weights, ``[("<variant>/<name>", array)]`` in
        the order the party uploads them back.
    :param clipping_range: SecAgg+'s c.
    :param config: the SimSkip train config (``server-round``, ``best-round``, ``federate``, ...).
    """

    rows: np.ndarray
    weights: list[tuple[str, np.ndarray]]
    clipping_range: float
    config: ConfigRecord


def weights_on_fitins(call_next: Any) -> Any:
    """The SimSkip handler step ``secaggplus_mod`` calls at the masked-vector stage: the FitIns in, the
    plain SimSkip handler (``call_next``) on the plain message, the FitRes of its weights out."""

    def step(msg: Message, context: Context) -> Message:
        request = secure_weights_request(msg)
        plain = {
            ENTITY_ROWS_KEY: ArrayRecord({ROWS_ARRAY: Array(request.rows)}),
            WEIGHTS_KEY: ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in request.weights}),
            CONFIG_KEY: request.config,
        }
        reply = _call_with_content(call_next, msg, context, RecordDict(plain))
        if reply.has_error():
            return reply
        record = reply.content.array_records.get(WEIGHTS_KEY)
        names = [name for name, _ in request.weights]
        if record is None or sorted(record) != sorted(names):
            raise SecureUploadError(f"the SimSkip handler replied without the weights {names}")
        metrics = dict(reply.content.metric_records.get(METRICS_KEY, {}))
        return secure_weights_reply(msg, request, [(name, record[name].numpy()) for name in names], metrics)

    return step


def secure_weights_request(msg: Message) -> SecureWeightsRequest:
    """The SecAgg+ ``train.simskip`` request in ``msg``.

    :raises SecureUploadError: no FitIns, or one without rows, the weight names and one array per name.
    """
    if FITINS_PARAMETERS not in msg.content.array_records:
        raise SecureUploadError("SecAgg+ SimSkip message without a FitIns")
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    arrays = parameters_to_ndarrays(fitins.parameters)
    config = dict(fitins.config)
    try:
        names = [str(name) for name in json.loads(str(config.pop(WEIGHT_NAMES_KEY)))]
        clipping_range = float(config.pop(CLIPPING_RANGE_KEY))
    except (KeyError, ValueError, TypeError) as err:
        raise SecureUploadError(
            f"SecAgg+ SimSkip message: config keys {WEIGHT_NAMES_KEY!r} (a JSON list) and {CLIPPING_RANGE_KEY!r} "
            f"expected ({type(err).__name__}: {err})"
        ) from None
    if len(arrays) != 1 + len(names) or arrays[0].ndim != 2:
        raise SecureUploadError(
            f"SecAgg+ SimSkip message: expected FitIns arrays [rows, {len(names)} weights], got {len(arrays)} "
            f"arrays, the first of shape {arrays[0].shape if arrays else None}"
        )
    return SecureWeightsRequest(
        arrays[0], list(zip(names, arrays[1:], strict=True)), clipping_range, ConfigRecord(config)
    )


def secure_weights_reply(
    msg: Message, request: SecureWeightsRequest, weights: list[tuple[str, np.ndarray]], metrics: dict[str, Any]
) -> Message:
    """The ``FitRes``-shaped reply ``secaggplus_mod`` masks: the weight arrays in the request's order,
    float64, with ``num_examples`` = the rows the party was sent (the plain phase's FedAvg weight).

    :param weights: the weights the party releases this round (exactly what it would upload in the clear).
    :param metrics: the reply's metrics (they travel in the clear, unchanged: the party's count of weight
        values beyond +-c is logged here only, never sent in the clear).
    :raises SecureUploadError: names or shapes other than the request's, or NaN / Inf.
    """
    expected = [(name, np.shape(array)) for name, array in request.weights]
    got = [(name, np.shape(array)) for name, array in weights]
    if got != expected:
        raise SecureUploadError(f"SimSkip weights {got} differ from the round's {expected}: refusing to upload")
    arrays = [np.asarray(array, dtype=np.float64) for _, array in weights]
    bad = sum(int((~np.isfinite(a)).sum()) for a in arrays)
    if bad:
        raise SecureUploadError(f"{bad} uploaded weight values are NaN or Inf: refusing to upload")
    clipped = sum(int((np.abs(a) > request.clipping_range).sum()) for a in arrays)
    if clipped:
        log(
            WARNING,
            "secure aggregation: %s uploaded weight values lie beyond the clipping range +-%s and are clipped",
            clipped,
            request.clipping_range,
        )
    res = FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters(arrays),
        num_examples=int(request.rows.shape[0]),
        metrics=dict(metrics),
    )
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)
