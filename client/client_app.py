"""The party's Flower ClientApp: local FedE training on its own part of the graph.

One party holds one data folder (``train.txt``/``valid.txt``/``test.txt``, labelled). Its
triples never leave it: the server learns only its entity labels (handshake) and the entity
rows it trains. Relation embeddings and optimizer state stay in ``context.state``.
The SimSkip phase's handlers (``train.simskip``, ``evaluate.downstream``) are registered on the
same ``app`` by :mod:`client.refinement_app`; :mod:`client.app` puts the two together.

Where the data is (in this order):

* node config ``data-dir`` (deployment: ``simskip-client --data DIR``), client id from node
  config ``partition-id`` (else the folder name);
* run config ``client-data-root`` + ``/<partition-id>`` (simulation: Flower sets
  ``partition-id`` in each virtual node's node config).

Private outputs (relation embeddings of the best round) go to node config ``output-dir``, else
run config ``client-output-root`` + ``/<partition-id>``; nothing is written when neither is set.

Private checkpoints: after every train round the party writes its private state (relation
embeddings, optimizer moments, epochs done) atomically to
``<output folder>/checkpoint/round-<r>.npz``, tagged with the server's ``federation-id``; the
two newest and the one of the server's best round are kept. Torch / numpy RNG states need not
be saved: :class:`client.kge.training.LocalTrainer` seeds every epoch from (seed, client,
epochs done), which the private state holds. A party whose ``context.state`` is gone (its
SuperNode restarted, or the server resumed a run) restores them on the server's
``query.restore`` (``resume-round`` r: the newest checkpoint of round <= r, and the one of
``best-round`` for the final test); with ``strict`` (a resume) a missing checkpoint is an
error naming the folder, otherwise (a rejoin) the party starts afresh, logged.

The mapped triples are cached in ``context.state`` after the first message, so the text files
are read and mapped once per run (in deployment a fresh ClientApp process handles each message,
but ``context.state`` persists across them).
"""

from __future__ import annotations

import io
import os
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from client.kge.run_folder import atomic_write_bytes, save_npy_atomic, write_labels_tsv
from client.party_log import note, write_finished
from client.private_checkpoint import (
    CHECKPOINT_DIR,
    ClientCheckpointError,
    load_private_checkpoint,
    save_private_checkpoint,
)
from client.protocol import (
    CLIENT_INFO_KEY,
    CONFIG_KEY,
    ENTITIES_ACTION,
    ENTITY_ROWS_KEY,
    FINISH_ACTION,
    METRICS_KEY,
    RESTORE_ACTION,
    ROWS_ARRAY,
    TEST_ACTION,
    TRACK_TEST_PREFIX,
)
from client.secure_upload import secagg_when_asked

__all__ = ["ClientCheckpointError", "ClientSetupError", "app"]

CACHE_ARRAYS = "kg-cache-triples"
CACHE_VOCAB = "kg-cache-vocab"
PRIVATE_CURRENT = "private-current"
PRIVATE_SNAPSHOT = "private-round-{}"

app = ClientApp()


class ClientSetupError(RuntimeError):
    """The party's node/run config does not say where its data is, or the data does not fit."""


# ---------------------------------------------------------------------------- data
def _data_location(context: Context) -> tuple[Path, int, str]:
    """``(data folder, numeric client id, client name)`` from node config / run config."""
    node = context.node_config
    partition = node.get("partition-id")
    if "data-dir" in node:
        folder = Path(str(node["data-dir"])).expanduser().resolve()
        name = str(partition) if partition is not None else folder.name
    elif partition is not None and context.run_config.get("client-data-root"):
        folder = Path(str(context.run_config["client-data-root"])) / str(int(partition))
        name = str(int(partition))
    else:
        raise ClientSetupError(
            "no data folder: set node config 'data-dir' (simskip-client --data DIR) or run config "
            "'client-data-root' with a 'partition-id' node config (simulation)"
        )
    if not folder.is_dir():
        raise ClientSetupError(f"data folder {folder} does not exist")
    numeric = int(partition) if partition is not None else (int(name) if name.isdigit() else 0)
    return folder, numeric, name


def output_dir(context: Context, name: str) -> Path | None:
    if "output-dir" in context.node_config:
        return Path(str(context.node_config["output-dir"])).expanduser().resolve()
    root = context.run_config.get("client-output-root")
    return Path(str(root)) / name if root else None


def load_graph(context: Context) -> tuple[Any, str]:
    """The party's :class:`kg_datasets.ClientGraph` and its name, mapped once per run.

    The first call reads the folder with :func:`kg_datasets.load_client_folder` and stores the
    mapped id triples and labels in ``context.state``; later calls rebuild the PyKEEN factories
    from that cache without reading or mapping any text.
    """
    import torch  # heavy (torch, pykeen): kept out of the app module's import
    from pykeen.triples import TriplesFactory

    from kg_datasets import ClientGraph, load_client_folder

    folder, numeric, name = _data_location(context)
    state = context.state
    if CACHE_VOCAB in state.config_records:
        vocab = state.config_records[CACHE_VOCAB]
        if str(vocab["data-dir"]) == str(folder):
            arrays = state.array_records[CACHE_ARRAYS]
            entity_to_id = {label: i for i, label in enumerate(vocab["entity-labels"])}
            relation_to_id = {label: i for i, label in enumerate(vocab["relation-labels"])}
            factories = {
                split: TriplesFactory(
                    mapped_triples=torch.as_tensor(arrays[split].numpy(), dtype=torch.long),
                    entity_to_id=entity_to_id,
                    relation_to_id=relation_to_id,
                )
                for split in ("train", "valid", "test")
            }
            graph = ClientGraph(client_id=numeric, entity_ids=None, relation_ids=None, **factories)
            return graph, str(vocab["client-name"])

    graph = load_client_folder(folder, client_id=numeric)
    state[CACHE_ARRAYS] = ArrayRecord(
        {split: Array(tf.mapped_triples.numpy().astype(np.int64)) for split, tf in graph.factories().items()}
    )
    state[CACHE_VOCAB] = ConfigRecord(
        {
            "data-dir": str(folder),
            "client-name": name,
            "entity-labels": graph.entity_labels,
            "relation-labels": graph.relation_labels,
        }
    )
    return graph, name


def _setup(context: Context) -> tuple[Any, Any, str]:
    """``(graph, KGEConfig, client name)``."""
    # the refinement keys (simskip-*, refit-*) are known too, so one run config serves both phases
    from client.kge.refinement import load_run_configs  # heavy (torch, pykeen)

    _, kge_config, _ = load_run_configs(context.run_config)
    graph, name = load_graph(context)
    return graph, kge_config, name


def _trainer(graph: Any, config: Any, context: Context, private_key: str | None) -> Any:
    from client.kge.training import LocalTrainer  # heavy (torch, pykeen)

    trainer = LocalTrainer(graph, config, device=None)  # CUDA when present (client.kge.training.resolve_device)
    if private_key is not None and private_key in context.state.array_records:
        record = context.state.array_records[private_key]
        trainer.set_private_state({key: record[key].numpy() for key in record})
    return trainer


def _store_private(context: Context, key: str, trainer: Any) -> None:
    # np.require keeps 0-d arrays (Adam's step) 0-d; np.ascontiguousarray would make them 1-d.
    context.state[key] = ArrayRecord(
        {k: Array(np.require(v, requirements="C")) for k, v in trainer.get_private_state().items()}
    )


def incoming_rows(msg: Message, graph: Any) -> np.ndarray:
    rows = msg.content.array_records[ENTITY_ROWS_KEY][ROWS_ARRAY].numpy().astype(np.float32, copy=False)
    if rows.ndim != 2 or rows.shape[0] != graph.num_entities:
        raise ClientSetupError(
            f"server sent entity rows of shape {rows.shape}; this party holds {graph.num_entities} entities"
        )
    return rows


def _write_private_outputs(trainer: Any, graph: Any, out: Path) -> None:
    """Write the party's relation embeddings (and its entity rows) into its own folder.

    Files: ``relation_embeddings.npz`` (the model's private tensors by state-dict name,
    optimizer state left out), ``relations.tsv`` (local id<TAB>label), ``entity_embeddings.npy`` (local-id
    order) and ``entities.tsv``. These never go to the server.
    """
    # Model tensors other than the shared entity rows ("model/..."), not optimizer moments.
    relation_arrays = {
        key.removeprefix("model/"): value
        for key, value in trainer.get_private_state().items()
        if key.startswith("model/")
    }
    buffer = io.BytesIO()
    np.savez(buffer, **relation_arrays)
    atomic_write_bytes(out / "relation_embeddings.npz", buffer.getvalue())
    write_labels_tsv(out / "relations.tsv", graph.relation_labels)
    save_npy_atomic(out / "entity_embeddings.npy", trainer.get_entity_embeddings())
    write_labels_tsv(out / "entities.tsv", graph.entity_labels)


# ---------------------------------------------------------------------------- handlers
@app.query(ENTITIES_ACTION)
def handshake(msg: Message, context: Context) -> Message:
    """Reply with the party's entity labels (local-id order) and split sizes; no triples."""
    from client.kge.models import entity_dim  # heavy (torch, pykeen)

    graph, config, name = _setup(context)
    info = ConfigRecord(
        {
            "client-id": name,
            "entity-labels": graph.entity_labels,
            "num-train": int(graph.train.num_triples),
            "num-valid": int(graph.valid.num_triples),
            "num-test": int(graph.test.num_triples),
            "entity-dim": int(entity_dim(config)),
        }
    )
    return Message(content=RecordDict({CLIENT_INFO_KEY: info}), reply_to=msg)


def _restore_private(
    context: Context, name: str, out: Path | None, federation_id: str, resume_round: int, best_round: int, strict: bool
) -> int:
    """Put the private state of ``resume_round`` (and of ``best_round``) back into ``context.state``.

    :returns: the round of the checkpoint restored, -1 when none (fresh state, logged).
    :raises ClientCheckpointError: with ``strict``, when a needed checkpoint is missing.
    """
    where = out / CHECKPOINT_DIR if out is not None else "(no output folder configured)"
    found = load_private_checkpoint(out, federation_id, resume_round) if out is not None else None
    if found is None and strict:
        raise ClientCheckpointError(
            f"client {name}: no private checkpoint of round <= {resume_round} for federation "
            f"{federation_id!r} in {where}"
        )
    for key in [k for k in context.state.array_records if k.startswith("private-")]:
        del context.state[key]  # whatever is restored below replaces all of it
    if found is None:
        log(
            WARNING,
            "client %s: no private checkpoint of round <= %s in %s: starting from a fresh initialisation",
            name,
            resume_round,
            where,
        )
        return -1
    restored_round, record = found
    context.state[PRIVATE_CURRENT] = record
    if best_round > 0:
        best = load_private_checkpoint(out, federation_id, best_round)
        if best is None and strict:
            raise ClientCheckpointError(f"client {name}: no private checkpoint of best round {best_round} in {where}")
        if best is not None:
            context.state[PRIVATE_SNAPSHOT.format(best_round)] = best[1]
    log(INFO, "client %s: restored the private state of round %s from %s", name, restored_round, where)
    return restored_round


@app.query(RESTORE_ACTION)
def restore(msg: Message, context: Context) -> Message:
    """Restore the private state the server names (after a resume, or after rejoining).

    Config: ``resume-round``, ``best-round``, ``federation-id``, ``strict``. Reply MetricRecord
    ``metrics`` = {``restored-round``: the checkpoint's round, -1 when started afresh}.
    """
    _, _numeric, name = _data_location(context)
    cfg = msg.content.config_records[CONFIG_KEY]
    restored = _restore_private(
        context,
        name,
        output_dir(context, name),
        str(cfg.get("federation-id", "")),
        int(cfg["resume-round"]),
        best_round=int(cfg.get("best-round", 0)),
        strict=bool(cfg.get("strict", False)),
    )
    return Message(content=RecordDict({METRICS_KEY: MetricRecord({"restored-round": restored})}), reply_to=msg)


#: Fault drills and process tests: ``"ROUND:DIR"`` makes this party's training message of server
#: round ROUND write ``DIR/round-ROUND.holding`` and wait (at most :data:`HOLD_MAX_SECONDS`) until
#: ``DIR/round-ROUND.release`` exists, so a test can kill or freeze the party while it is
#: certainly inside that round, on a machine of any speed.
HOLD_TRAIN_ENV = "SIMSKIP_HOLD_TRAIN"
HOLD_MAX_SECONDS = 600.0


def _hold_if_asked(server_round: int) -> None:
    spec = os.environ.get(HOLD_TRAIN_ENV, "")
    held_round, sep, folder = spec.partition(":")
    if not sep or not held_round.isdigit() or int(held_round) != server_round:
        return
    hold = Path(folder)
    hold.mkdir(parents=True, exist_ok=True)
    (hold / f"round-{server_round}.holding").write_text(str(os.getpid()))
    deadline = time.monotonic() + HOLD_MAX_SECONDS
    while not (hold / f"round-{server_round}.release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


# secagg_when_asked: under secure-aggregation = true Flower's secaggplus_mod runs the SecAgg+ stages and
# this handler sees the same plain train message as always (client/secure_upload.py)
@app.train(mods=[secagg_when_asked])
def train(msg: Message, context: Context) -> Message:
    """Load the server's rows, train ``local-epochs`` epochs, return the rows and the count."""
    started = time.perf_counter()
    graph, config, name = _setup(context)
    cfg = msg.content.config_records.get(CONFIG_KEY, ConfigRecord())
    server_round = int(cfg.get("server-round", 0))
    _hold_if_asked(server_round)
    federation_id = str(cfg.get("federation-id", ""))
    out = output_dir(context, name)
    if PRIVATE_CURRENT not in context.state.array_records and server_round > 1:
        # state gone (a restarted SuperNode that missed query.restore): rebuild it
        _restore_private(context, name, out, federation_id, server_round - 1, best_round=0, strict=False)
    trainer = _trainer(graph, config, context, PRIVATE_CURRENT)
    downloaded = incoming_rows(msg, graph)  # exactly the rows the server sent (dp = local measures from them)
    trainer.set_entity_embeddings(downloaded)
    train_started = time.perf_counter()
    losses = trainer.train(config.local_epochs)
    train_seconds = time.perf_counter() - train_started
    _store_private(context, PRIVATE_CURRENT, trainer)
    if out is not None and server_round > 0:
        save_private_checkpoint(
            out,
            server_round,
            federation_id,
            context.state.array_records[PRIVATE_CURRENT],
            best_round=int(cfg.get("best-round", 0)),
        )
    note(
        out,
        f"round {server_round}: trained {config.local_epochs} epochs in {train_seconds:.1f}s"
        + (f", loss {float(losses[-1]):.4f}" if len(losses) else ""),
    )
    # Reply in the dtype the server sent (run config transfer-dtype): float16 halves the bytes.
    wire_dtype = msg.content.array_records[ENTITY_ROWS_KEY][ROWS_ARRAY].numpy().dtype
    # dp = local: the released rows (clipped update + noise, float64, before this cast); else the trained rows
    from client.party_dp import release_upload  # reads the run config (client.kge)

    released, dp_metrics = release_upload(
        context,
        downloaded,
        trainer.get_entity_embeddings(),
        out=out,
        federation_id=federation_id,
        server_round=server_round,
    )
    rows = np.ascontiguousarray(released.astype(wire_dtype, copy=False))
    metrics = MetricRecord(
        {
            "num-entities": int(graph.num_entities),
            "num-examples": int(graph.train.num_triples),
            "train-loss": float(losses[-1]) if len(losses) else float("nan"),
            "train-seconds": train_seconds,
            "client-seconds": time.perf_counter() - started,
            "peak-rss-mb": _peak_rss_mb(),
            **dp_metrics,
        }
    )
    content = RecordDict({ENTITY_ROWS_KEY: ArrayRecord({ROWS_ARRAY: Array(rows)}), METRICS_KEY: metrics})
    return Message(content=content, reply_to=msg)


def _peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports ru_maxrss in KiB)."""
    import resource  # POSIX-only: imported where it is used, so the module loads on any platform

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _metrics_record(metrics: dict[str, Any]) -> MetricRecord:
    return MetricRecord({k: float(v) if isinstance(v, float) else int(v) for k, v in metrics.items()})


@app.evaluate()
def validate(msg: Message, context: Context) -> Message:
    """Validate with the server's rows; snapshot the private state of this round.

    Only the snapshots of this round and of the server's best round so far are kept: the
    final test restores the best one.
    """
    graph, config, name = _setup(context)
    cfg = msg.content.config_records[CONFIG_KEY]
    server_round, best_round = int(cfg["server-round"]), int(cfg.get("best-round", 0))
    trainer = _trainer(graph, config, context, PRIVATE_CURRENT)
    trainer.set_entity_embeddings(incoming_rows(msg, graph))
    metrics = trainer.evaluate("valid", config.eval_protocol)
    if getattr(config, "track_test", False):
        # same state, same protocol; reported apart ("test-" prefix), never used for selection
        metrics.update(
            {f"{TRACK_TEST_PREFIX}{k}": v for k, v in trainer.evaluate("test", config.eval_protocol).items()}
        )
    if PRIVATE_CURRENT in context.state.array_records:
        context.state[PRIVATE_SNAPSHOT.format(server_round)] = context.state.array_records[PRIVATE_CURRENT]
    keep = {PRIVATE_SNAPSHOT.format(server_round), PRIVATE_SNAPSHOT.format(best_round)}
    for key in [k for k in context.state.array_records if k.startswith("private-round-") and k not in keep]:
        del context.state[key]
    note(
        output_dir(context, name),
        f"round {server_round}: valid MRR {float(metrics['mrr']):.4f} ({config.eval_protocol})",
    )
    return Message(content=RecordDict({METRICS_KEY: _metrics_record(metrics)}), reply_to=msg)


@app.evaluate(TEST_ACTION)
def test(msg: Message, context: Context) -> Message:
    """Test with the best round's rows and private state; write the private outputs."""
    graph, config, name = _setup(context)
    cfg = msg.content.config_records[CONFIG_KEY]
    best_round = int(cfg["best-round"])
    snapshot = PRIVATE_SNAPSHOT.format(best_round)
    trainer = _trainer(graph, config, context, snapshot if snapshot in context.state.array_records else PRIVATE_CURRENT)
    trainer.set_entity_embeddings(incoming_rows(msg, graph))
    metrics = trainer.evaluate("test", config.eval_protocol)
    out = output_dir(context, name)
    if out is not None:
        _write_private_outputs(trainer, graph, out)
    note(out, f"test with round {best_round}'s rows: MRR {float(metrics['mrr']):.4f} ({config.eval_protocol})")
    return Message(content=RecordDict({METRICS_KEY: _metrics_record(metrics)}), reply_to=msg)


@app.query(FINISH_ACTION)
def finish(msg: Message, context: Context) -> Message:
    """The server's run is over: write ``federation.json`` (``simskip-client`` exits on it) and reply."""
    cfg = msg.content.config_records.get(CONFIG_KEY, ConfigRecord())
    record = {key: cfg[key] for key in ("status", "reason", "federation-id", "run-dir") if key in cfg}
    try:
        out = output_dir(context, _data_location(context)[2])
    except ClientSetupError:  # nowhere to write: the reply still tells the server it was heard
        out = None
    note(
        out,
        f"federation finished: {record.get('status', '?')}"
        + (f" ({record['reason']})" if record.get("reason") else ""),
    )
    write_finished(out, record)
    return Message(content=RecordDict({CONFIG_KEY: ConfigRecord({"acknowledged": 1})}), reply_to=msg)
