"""The ClientApp's handlers of the SimSkip phase and the downstream evaluation.

Registered on :data:`client.client_app.app` (:mod:`client.app` imports this module), so one
ClientApp serves both phases. Protocol: see :mod:`server.simskip_strategy`.

Both handlers work on the rows the KGE phase scored: the server's table rounded to the run's
``transfer-dtype`` (:func:`scored_rows`), so the downstream ``unrefined`` rows are those of
``final_metrics.json``'s test and the refined rows derive from them. Their per-protocol progress
lines go to the party's ``party.log``, not through Ray to the simulation's console.

``train.simskip``: refine this party's entity rows for ``simskip-local-epochs`` epochs from the
round's starting weights (the server's average; in the local-only ablation the weights this
party keeps in ``context.state`` and in its private checkpoint ``checkpoint/simskip-<r>.npz``,
so a restarted party or a resumed server continues from them), reply with the weights
(federated only) and the losses. Where ``simskip-augmentations`` names ``row_view``, the views
come from this party's structure view (:mod:`client.kge.structure_view`): its own train triples,
the rows and its trained relations of the ``best-round`` snapshot in ``context.state`` (as the
downstream evaluation reads them); they never leave the party.
``evaluate.downstream``: transform the rows with the final encoders (every search setting and
seed), then run every downstream protocol on the unrefined, refined (chosen on this party's
valid split), perturbed and no-skip rows and rank the test split
(:func:`client.kge.comparison.evaluate_client_rows`). The refined rows go to the party's private
output folder (``refined/<variant>.npy``) when it has one.
"""

from __future__ import annotations

import json
import time
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.logger import log

from client.client_app import (
    PRIVATE_CURRENT,
    PRIVATE_SNAPSHOT,
    app,
    incoming_rows,
    load_graph,
    output_dir,
)
from client.kge.run_folder import save_npy_atomic
from client.party_log import note
from client.private_checkpoint import load_private_checkpoint, save_private_checkpoint
from client.protocol import (
    CONFIG_KEY,
    DOWNSTREAM_ACTION,
    DOWNSTREAM_RANKS,
    DOWNSTREAM_RECORD,
    METRICS_KEY,
    SIMSKIP_ACTION,
    WEIGHTS_KEY,
)
from client.secure_upload import secagg_when_asked

__all__ = ["downstream", "scored_rows", "simskip_train"]

OWN_WEIGHTS = "simskip-own-weights"
OWN_ROUND = "simskip-own-round"
#: private checkpoint prefix of the local-only ablation's own weights (<output>/checkpoint/simskip-<r>.npz)
OWN_CHECKPOINT = "simskip"


def _configs(context: Context):
    from client.kge.refinement import load_run_configs  # heavy (torch, pykeen): SimSkip messages only

    _, kge_config, refinement = load_run_configs(context.run_config)
    return kge_config, refinement


def scored_rows(msg: Message, graph, context: Context) -> np.ndarray:
    """The message's entity rows as the KGE phase scored them: rounded to ``transfer-dtype``.

    The FedE rounds and the final test send the rows in the run's transfer dtype (float16 by
    default) and the party scores what it receives; the SimSkip messages carry the server's
    float32 table. Rounding here makes the downstream evaluation's ``unrefined`` rows exactly the
    rows of ``final_metrics.json``'s test, and the refined rows are derived from them.

    :param msg: a ``train.simskip`` or ``evaluate.downstream`` message.
    :param graph: this party's graph (the row count is checked against it, :func:`incoming_rows`).
    :param context: this party's context (its run config names the transfer dtype).
    :returns: float32 ``(num_entities, dim)``.
    """
    from client.kge.settings import FederationSettings

    transfer = np.dtype(FederationSettings.from_run_config(context.run_config).transfer_dtype)
    return np.ascontiguousarray(incoming_rows(msg, graph).astype(transfer).astype(np.float32))


def _own_weights(context: Context, out, federation_id: str, before_round: int, name: str):
    """This party's own encoder weights (local-only ablation) of its newest round before
    ``before_round``: from ``context.state``, or from its private checkpoint when the state is
    gone (a restarted SuperNode, a resumed server) or holds a later round (written before a
    server died and resumed from an earlier round). ``None`` when there are none."""
    candidates = []
    state_round = context.state.config_records.get(OWN_ROUND)
    if OWN_WEIGHTS in context.state.array_records and state_round is not None:
        candidates.append((int(state_round["round"]), context.state.array_records[OWN_WEIGHTS]))
    if out is not None:
        found = load_private_checkpoint(out, federation_id, before_round - 1, kind=OWN_CHECKPOINT)
        if found is not None:
            candidates.append(found)
    candidates = [(r, record) for r, record in candidates if r < before_round]
    if not candidates:
        return None
    found_round, record = max(candidates, key=lambda c: c[0])
    log(INFO, "client %s: SimSkip round %s starts from its own weights of round %s", name, before_round, found_round)
    return record


def _start_weights(msg: Message, context: Context, variants: list[str], out, name: str, before_round: int):
    """The message's weights, else (local-only after round 1) this party's own (:func:`_own_weights`)."""
    from client.kge.refinement import RefinementInputError, unpack_variants  # heavy (torch, pykeen)

    record = msg.content.array_records.get(WEIGHTS_KEY)
    if record is None:
        federation_id = str(msg.content.config_records[CONFIG_KEY].get("federation-id", ""))
        record = _own_weights(context, out, federation_id, before_round, name)
    if record is None:
        where = out / "checkpoint" if out is not None else "(no output folder)"
        raise RefinementInputError(
            f"client {name}: no SimSkip weights before round {before_round}: the server sent "
            f"none and this party kept none (context.state, {where})"
        )
    return unpack_variants([(key, record[key].numpy()) for key in record], variants)


def _relation_record(context: Context, best_round: int):
    """This party's model tensors (``model/...``, ``meta/...``) of KGE round ``best_round``: its
    private snapshot in ``context.state``, else its current state; ``None`` when it has neither."""
    snapshot = PRIVATE_SNAPSHOT.format(int(best_round))
    key = snapshot if snapshot in context.state.array_records else PRIVATE_CURRENT
    if key not in context.state.array_records:
        return None
    record = context.state.array_records[key]
    return {k: record[k].numpy() for k in record if k.startswith(("model/", "meta/"))}


def _trained_relations(context: Context, graph, kge_config, best_round: int, name: str, unfit: str):
    """This party's trained relation tensors of KGE round ``best_round`` (:func:`_relation_record`),
    or ``None`` when it has none that fit its model (logged with ``unfit``, what is left out then)."""
    from client.kge.protocols import relations_fit  # heavy (torch, pykeen)

    relation_state = _relation_record(context, best_round)
    if relation_state is None:
        return None
    if not relations_fit(graph, kge_config, relation_state):
        log(INFO, "client %s: its relations do not fit its model: %s", name, unfit)
        return None
    return relation_state


def _row_view(context: Context, graph, kge_config, refinement, rows, cfg):
    """The structure view of this party's rows when ``simskip-augmentations`` names ``row_view``, else ``None``."""
    if not refinement.uses_row_view:
        return None
    from client.kge.structure_view import client_structure_view  # heavy (torch, pykeen)

    # client_structure_view fails naming the party when the tensors are missing or do not fit its model
    relation_state = _relation_record(context, int(cfg.get("best-round", 0)))
    return client_structure_view(graph, kge_config, rows, relation_state, mix=refinement.structure_mix)


def _weights_record(weights) -> ArrayRecord:
    from client.kge.refinement import pack_variants  # heavy (torch, pykeen)

    return ArrayRecord({name: Array(np.ascontiguousarray(array)) for name, array in pack_variants(weights)})


# secagg_when_asked: under secure-aggregation = true Flower's secaggplus_mod runs the SecAgg+ stages of a
# federated SimSkip round and this handler sees the same plain message as always (client/secure_upload.py)
@app.train(SIMSKIP_ACTION, mods=[secagg_when_asked])
def simskip_train(msg: Message, context: Context) -> Message:
    """One SimSkip round on this party's rows; under ``dp = local`` (federated) the weights it replies
    with are released through the Gaussian mechanism (:func:`client.party_dp.release_encoder`)."""
    from client.kge.refinement import fit_round  # heavy (torch, pykeen)

    kge_config, refinement = _configs(context)
    graph, name = load_graph(context)
    rows = scored_rows(msg, graph, context)
    cfg = msg.content.config_records[CONFIG_KEY]
    server_round = int(cfg["server-round"])
    out = output_dir(context, name)
    start = _start_weights(msg, context, list(refinement.variants()), out, name, server_round)
    row_view = _row_view(context, graph, kge_config, refinement, rows, cfg)
    update = fit_round(rows, start, refinement, client_id=name, server_round=server_round, row_view=row_view)
    metrics = {"num-rows": update.num_rows, "simskip-seconds": float(update.seconds)}
    note(out, f"SimSkip round {server_round}: {len(update.losses)} encoder(s) trained in {float(update.seconds):.1f}s")
    metrics.update({f"loss/{variant}": float(losses[-1]) for variant, losses in update.losses.items()})
    content = RecordDict({METRICS_KEY: MetricRecord(metrics)})
    if bool(cfg.get("federate", True)):
        from client.party_dp import release_encoder  # reads the run config (client.kge)

        # dp = local: the released weights (clipped update + noise against the server's weights); else as trained
        released, dp_metrics = release_encoder(
            context,
            start,
            update.weights,
            out=out,
            federation_id=str(cfg.get("federation-id", "")),
            server_round=server_round,
        )
        content[METRICS_KEY] = MetricRecord({**metrics, **dp_metrics})
        content[WEIGHTS_KEY] = _weights_record(released)
    else:  # local-only: the encoder never leaves this party; kept in its state and private checkpoint
        own = _weights_record(update.weights)
        context.state[OWN_WEIGHTS] = own
        context.state[OWN_ROUND] = ConfigRecord({"round": server_round})
        if out is not None:
            save_private_checkpoint(out, server_round, str(cfg.get("federation-id", "")), own, kind=OWN_CHECKPOINT)
    return Message(content=content, reply_to=msg)


def _progress(out):
    """Where the downstream evaluation's per-protocol lines go: the party's ``party.log`` when it
    has an output folder (the server's console shows its own progress, ``downstream: k of n
    clients done``; in simulation every ClientApp's log line would otherwise reach it through
    Ray's log forwarding, interleaved and prefixed), else the ClientApp's log."""
    if out is None:
        return lambda line: log(INFO, "%s", line)
    return lambda line: note(out, line)


@app.evaluate(DOWNSTREAM_ACTION)
def downstream(msg: Message, context: Context) -> Message:
    """Refine with the final encoders, run every downstream protocol on every row, rank the test split."""
    from client.kge.comparison import evaluate_client_rows  # heavy (torch, pykeen): SimSkip messages only
    from client.kge.refinement import transform_rows

    started = time.perf_counter()
    kge_config, refinement = _configs(context)
    graph, name = load_graph(context)
    rows = scored_rows(msg, graph, context)
    cfg = msg.content.config_records[CONFIG_KEY]
    out = output_dir(context, name)
    # the final encoders: the server's average, or (local-only) this party's own of the last round
    weights = _start_weights(msg, context, list(refinement.variants()), out, name, int(cfg["simskip-round"]) + 1)
    refined = transform_rows(rows, weights, refinement, client_id=name)
    best_round = int(cfg.get("best-round", 0))
    relation_state = _trained_relations(context, graph, kge_config, best_round, name, "no as-trained protocol")
    if out is not None:
        for variant, refined_rows in refined.items():
            save_npy_atomic(out / "refined" / f"{variant}.npy", refined_rows)
    result, ranks = evaluate_client_rows(
        graph,
        kge_config,
        rows,
        refined,
        refinement,
        relation_state=relation_state,
        device=None,
        log=_progress(out),
    )
    note(out, f"downstream evaluation done in {time.perf_counter() - started:.1f}s")
    content = RecordDict(
        {
            METRICS_KEY: MetricRecord({"client-seconds": time.perf_counter() - started}),
            DOWNSTREAM_RECORD: ConfigRecord({"record": json.dumps(result)}),  # key order is the table order
            DOWNSTREAM_RANKS: ArrayRecord(
                {k: Array(np.ascontiguousarray(v, dtype=np.float64)) for k, v in ranks.items()}
            ),
        }
    )
    return Message(content=content, reply_to=msg)
