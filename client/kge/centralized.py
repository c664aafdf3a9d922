"""The reference settings of federated KGE papers, run without Flower.

``isolation``
    Each client trains alone on its own triples (FedE without aggregation).
``collection``
    All clients' train triples pooled over global entity ids (relations made unique per client)
    and trained centrally; still validated and tested per client, by scoring each client's
    valid/test triples with the central rows of that client's entities and relations.

:func:`run_fede_in_process` runs FedE itself in one process (a reference for the Flower apps).

All use the federated budget: one "round" is ``config.local_epochs`` epochs over the triples,
validation every ``config.eval_every`` rounds (overall MRR weighted by each client's valid
size), early stopping after ``config.patience`` checks without improvement, and the final test
with the best round's weights. Start rows are the server's initial table
(:func:`client.kge.models.initial_entity_table`), as in FedE, so the settings differ only in
what is shared.

``config.stopping`` picks the stopping rule (``docs/concepts/stopping.md``): ``overall`` (the
default) as above; ``per-party`` gives each party (client) its own tracker over its own valid MRR
(:class:`~client.kge.early_stopping.PartyStopping`): every party keeps training and sharing until
every party has stopped (or the round budget ends), and each party tests, and writes, the state
of its own best round (its entity rows as evaluated then and its relation rows); the overall test
is the usual weighted combination of those. Collection trains one pooled model, one party: there
``per-party`` is the overall rule.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pykeen.models import Model

from client.kge.aggregation import aggregate_rows
from client.kge.collection import CollectionAdapter, pool_clients, require_global_ids
from client.kge.config import KGEConfig
from client.kge.in_process_rounds import (
    ExtraState,
    Progress,
    RoundCallback,
    RoundCheckpoint,
    client_states,
    flat_states,
    per_client_report,
    run_rounds,
    trainer_parties,
)
from client.kge.local_dp import LocalDpSpec, PartyAccountant, json_epsilon, release_rows
from client.kge.models import (
    entity_embedding,
    initial_entity_table,
)
from client.kge.run_folder import atomic_write_bytes, save_npy_atomic, write_labels_tsv
from client.kge.training import LocalTrainer, resolve_device
from kg_datasets.triples import labels_in_id_order

if TYPE_CHECKING:  # pragma: no cover
    from kg_datasets import ClientGraph, FederatedKG

__all__ = [
    "run_collection",
    "run_fede_in_process",
    "run_isolation",
    "untrained_metrics",
]

logger = logging.getLogger(__name__)


def _write_client_outputs(out_dir: Path, client: ClientGraph, model: Model, with_entities: bool) -> None:
    """``clients/<k>/``: ``relation_embeddings.npz`` (model tensors besides the entity rows, by
    state-dict name), ``relations.tsv``, and with ``with_entities`` ``entity_embeddings.npy`` (local
    order) plus ``entities.tsv``; the same files a Flower party writes into its own folder."""
    folder = out_dir / "clients" / str(client.client_id)
    entity_weight = entity_embedding(model)._embeddings.weight
    arrays = {
        name: tensor.detach().cpu().numpy()
        for name, tensor in model.state_dict(keep_vars=True).items()
        if tensor is not entity_weight
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(folder / "relation_embeddings.npz", buffer.getvalue())
    write_labels_tsv(folder / "relations.tsv", client.relation_labels)
    if with_entities:
        save_npy_atomic(folder / "entity_embeddings.npy", entity_weight.detach().cpu().numpy())
        write_labels_tsv(folder / "entities.tsv", client.entity_labels)


# --- the shared round schedule ---------------------------------------------------------------------


def run_isolation(
    kg: FederatedKG,
    config: KGEConfig,
    num_rounds: int,
    *,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    out_dir: str | Path | None = None,
    checkpoint: RoundCheckpoint | None = None,
) -> dict[str, Any]:
    """Each client trains alone for ``num_rounds`` rounds of ``config.local_epochs`` epochs.

    :param kg: the federated graph (clients with global ids).
    :param config: the KGE config.
    :param num_rounds: the round budget (as FedE's ``num-server-rounds``).
    :param device: where to train; CUDA when present.
    :param progress: called with one line per round (default: ``logging``).
    :param out_dir: if given, the best round's embeddings are written there (atomically):
        ``clients/<k>/{entity_embeddings.npy, entities.tsv, relation_embeddings.npz, relations.tsv}``.
    :param checkpoint: saves the state after every round and resumes from it
        (:class:`RoundCheckpoint`); ``None``: nothing is kept between processes. (Not with
        :func:`run_fede_in_process`'s ``update_hook``, whose own state a checkpoint cannot hold.)
    :returns: ``{"setting", "config", "rounds_trained", "best_round", "best_valid_mrr", "stopping",
        "history", "test": {"overall", "clients": {id: metrics}}, ...}`` (JSON-able; see
        :func:`client.kge.in_process_rounds.run_rounds` for what the keys mean under ``config.stopping = "per-party"``).
    """
    require_global_ids(kg)
    device = resolve_device(device)
    table = initial_entity_table(config, kg.num_entities, seed=config.seed)
    trainers = [LocalTrainer(client, config, device) for client in kg.clients]
    for trainer, client in zip(trainers, kg.clients):
        trainer.set_entity_embeddings(table[client.entity_ids])

    def train_round(round_number: int) -> dict[str, list[float]]:
        return {str(c.client_id): t.train(config.local_epochs) for t, c in zip(trainers, kg.clients)}

    def snapshot() -> dict[str, np.ndarray]:
        return flat_states([t.get_private_state(include_entities=True) for t in trainers])

    def restore(arrays: Mapping[str, np.ndarray]) -> None:
        for trainer, state in zip(trainers, client_states(arrays, len(trainers))):
            trainer.set_private_state(state)

    result = run_rounds(
        setting="isolation",
        config=config,
        rounds=num_rounds,
        client_ids=[c.client_id for c in kg.clients],
        train_round=train_round,
        evaluate=lambda split: [t.evaluate(split) for t in trainers],
        snapshot=snapshot,
        restore=restore,
        progress=progress,
        checkpoint=checkpoint,
        parties=trainer_parties(trainers),
    )
    if out_dir is not None:
        for trainer, client in zip(trainers, kg.clients):
            _write_client_outputs(Path(out_dir), client, trainer.model, with_entities=True)
    return result


#: ``hook(client index, round, rows sent, rows trained) -> rows returned``: what a client returns
#: instead of its trained rows (e.g. a poisoning party in :mod:`scripts.bench_poisoning`).
UpdateHook = Callable[[int, int, np.ndarray, np.ndarray], np.ndarray]

#: ``observer(round, client index, global ids, rows sent, rows returned, model)``: sees each upload
#: as the server receives it (after any ``update_hook``), in client order, with the party's own
#: PyKEEN model (read it, never change it: e.g. a colluding party's relation rows in
#: ``scripts/attack_reconstruction.py``).
UploadObserver = Callable[[int, int, np.ndarray, np.ndarray, np.ndarray, Model], None]


def run_fede_in_process(
    kg: FederatedKG,
    config: KGEConfig,
    num_rounds: int,
    *,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    out_dir: str | Path | None = None,
    aggregation: str = "mean",
    aggregation_trim: float = 0.25,
    update_hook: UpdateHook | None = None,
    checkpoint: RoundCheckpoint | None = None,
    on_round: RoundCallback | None = None,
    on_upload: UploadObserver | None = None,
    dp: LocalDpSpec | None = None,
) -> dict[str, Any]:
    """FedE without Flower: a reference for the Flower apps and a quick learning check.

    Every round each client loads the server's rows of its entities, trains
    ``config.local_epochs`` epochs and returns them; each global row becomes the mean over the
    clients holding it (:func:`client.kge.aggregation.aggregate_rows`). All clients take part
    every round; relation embeddings and optimizer state stay in each client's trainer. The
    test uses the best round's table and client states.

    Parameters and result as :func:`run_isolation`; with ``out_dir`` also the global
    ``entity_embeddings.npy`` / ``entities.tsv`` (the best round's table), except with
    ``config.stopping = "per-party"``: then each client's own best-round rows go to
    ``clients/<k>/entity_embeddings.npy`` + ``entities.tsv`` instead (as under isolation).
    ``aggregation`` / ``aggregation_trim``: the per-row rule
    (:func:`client.kge.aggregation.aggregate_rows`); ``update_hook``: replaces a client's returned
    rows (:data:`UpdateHook`), the rest of its state is left as trained.
    ``on_round``: called after every round (:data:`RoundCallback`; e.g. a search's pruning).
    ``on_upload``: sees every upload before it is aggregated (:data:`UploadObserver`).
    ``dp``: ``dp = local`` (:mod:`client.kge.local_dp`; ``FederationSettings.local_dp()``): each
    client releases its returned rows (after any ``update_hook``) through the Gaussian mechanism,
    against the rows it was sent that round, before ``on_upload`` sees them and the server
    aggregates them; one accountant per client. The result then has ``"dp"``: the parameters
    (:meth:`~client.kge.local_dp.LocalDpSpec.as_dict`), ``"parties"`` (client id -> epsilon, delta,
    releases, noise multiplier for the whole run) and ``"rounds"`` (per round, per client: epsilon
    and releases so far, and, as an in-process analysis only, the update norm before clipping and
    whether it was clipped: a federation's party never sends these).
    """
    if update_hook is not None and checkpoint is not None:
        raise ValueError("run_fede_in_process: an update_hook's own state (e.g. its RNG) is not checkpointed")
    require_global_ids(kg)
    device = resolve_device(device)
    table = initial_entity_table(config, kg.num_entities, seed=config.seed)
    trainers = [LocalTrainer(client, config, device) for client in kg.clients]
    holders = [np.asarray(client.entity_ids, dtype=np.int64) for client in kg.clients]
    state: dict[str, Any] = {"table": table, "round": 0}
    names = [str(client.client_id) for client in kg.clients]
    accountants = [PartyAccountant(dp.delta) for _ in kg.clients] if dp is not None else []
    dp_rounds: list[dict[str, Any]] = []

    def send_rows() -> None:
        for trainer, ids in zip(trainers, holders):
            trainer.set_entity_embeddings(state["table"][ids])

    def returned(index: int, ids: np.ndarray, trainer: LocalTrainer) -> np.ndarray:
        rows = trainer.get_entity_embeddings()
        if update_hook is not None:
            rows = np.asarray(update_hook(index, state["round"], state["table"][ids], rows), dtype=np.float32)
        if dp is None:
            return rows
        release = release_rows(rows, state["table"][ids], dp.clip, dp.noise_multiplier)
        accountants[index].record_release(dp.noise_multiplier)
        dp_rounds[-1]["parties"][names[index]] = {
            "epsilon": json_epsilon(accountants[index].epsilon),  # null, not Infinity (z = 0)
            "releases": accountants[index].releases,
            "update_norm": release.norm,
            "clipped": release.clipped,
        }
        return release.rows.astype(state["table"].dtype)

    def train_round(round_number: int) -> dict[str, list[float]]:
        state["round"] = round_number
        send_rows()
        return {str(c.client_id): t.train(config.local_epochs) for t, c in zip(trainers, kg.clients)}

    def aggregate() -> None:
        if dp is not None:
            dp_rounds.append({"round": state["round"], "parties": {}})
        updates = [(ids, returned(k, ids, t)) for k, (t, ids) in enumerate(zip(trainers, holders))]
        if on_upload is not None:
            for k, ((ids, rows), trainer) in enumerate(zip(updates, trainers)):
                on_upload(state["round"], k, ids, state["table"][ids], rows, trainer.model)
        state["table"] = aggregate_rows(state["table"], updates, aggregation, aggregation_trim)
        send_rows()  # evaluation scores the aggregated rows, as the federation's clients would

    def snapshot() -> dict[str, np.ndarray]:
        return {"table": state["table"].copy(), **flat_states([t.get_private_state() for t in trainers])}

    def restore(arrays: Mapping[str, np.ndarray]) -> None:
        if arrays["table"].shape != state["table"].shape:
            raise ValueError(f"saved entity table has shape {arrays['table'].shape}, expected {state['table'].shape}")
        state["table"] = np.array(arrays["table"], dtype=state["table"].dtype)
        for trainer, private in zip(trainers, client_states(arrays, len(trainers))):
            trainer.set_private_state(private)
        send_rows()

    def load_dp(saved: Mapping[str, Any] | None) -> None:
        if saved is None or "dp" not in saved:
            raise ValueError("run_fede_in_process: dp is set, but the checkpoint holds no DP accountant state")
        for accountant, accountant_state in zip(accountants, saved["dp"]["accountants"], strict=True):
            accountant.load_state_dict(accountant_state)
        dp_rounds[:] = saved["dp"]["rounds"]

    result = run_rounds(
        setting="fede",
        config=config,
        rounds=num_rounds,
        client_ids=[c.client_id for c in kg.clients],
        train_round=train_round,
        aggregate=aggregate,
        evaluate=lambda split: [t.evaluate(split) for t in trainers],
        snapshot=snapshot,
        restore=restore,
        progress=progress,
        checkpoint=checkpoint,
        on_round=on_round,
        parties=trainer_parties(trainers),
        extra_state=ExtraState(
            save=lambda: {"dp": {"accountants": [a.state_dict() for a in accountants], "rounds": dp_rounds}},
            load=load_dp,
        )
        if dp is not None
        else None,
    )
    if dp is not None:
        result["dp"] = {
            **dp.as_dict(),
            "parties": {name: accountant.spent() for name, accountant in zip(names, accountants)},
            "rounds": dp_rounds,
        }
        (progress or logger.info)(
            f"[fede] dp = local (z {dp.noise_multiplier:.4g}, C {dp.clip:g}): epsilon at delta {dp.delta:g} "
            + ", ".join(f"{name}: {a.epsilon:.4g} after {a.releases} releases" for name, a in zip(names, accountants))
        )
    if out_dir is not None and config.stopping == "per-party":
        # each party's rows are its own best round's: no one table holds them all
        for trainer, client in zip(trainers, kg.clients):
            _write_client_outputs(Path(out_dir), client, trainer.model, with_entities=True)
    elif out_dir is not None:
        save_npy_atomic(Path(out_dir) / "entity_embeddings.npy", state["table"])
        write_labels_tsv(Path(out_dir) / "entities.tsv", labels_in_id_order(kg.entity_to_id))
        for trainer, client in zip(trainers, kg.clients):
            _write_client_outputs(Path(out_dir), client, trainer.model, with_entities=False)
    return result


def run_collection(
    kg: FederatedKG,
    config: KGEConfig,
    num_rounds: int,
    *,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    out_dir: str | Path | None = None,
    checkpoint: RoundCheckpoint | None = None,
) -> dict[str, Any]:
    """Train one model on all clients' pooled triples; validate and test per client.

    Parameters and result as :func:`run_isolation`; one round is ``config.local_epochs`` epochs
    over the pooled triples (every triple is seen as often as under FedE's budget). With
    ``out_dir``, writes ``entity_embeddings.npy`` (row = global id) and ``entities.tsv``, and per
    client ``clients/<k>/{relation_embeddings.npz, relations.tsv}`` (the central relation rows of
    that client, in its local order).
    """
    device = resolve_device(device)
    pooled = pool_clients(kg)
    trainer = LocalTrainer(pooled, config, device)
    trainer.set_entity_embeddings(initial_entity_table(config, kg.num_entities, seed=config.seed))
    adapters = [
        CollectionAdapter(client, offset, config, device) for client, offset in zip(kg.clients, pooled.relation_offsets)
    ]

    def snapshot() -> dict[str, np.ndarray]:
        return trainer.get_private_state(include_entities=True)

    def restore(state: Mapping[str, np.ndarray]) -> None:
        trainer.set_private_state(state)

    result = run_rounds(
        setting="collection",
        config=config,
        rounds=num_rounds,
        client_ids=[c.client_id for c in kg.clients],
        train_round=lambda round_number: {"pooled": trainer.train(config.local_epochs)},
        evaluate=lambda split: [a.evaluate(trainer.model, split, config) for a in adapters],
        snapshot=snapshot,
        restore=restore,
        progress=progress,
        checkpoint=checkpoint,
    )
    if out_dir is not None:
        save_npy_atomic(Path(out_dir) / "entity_embeddings.npy", trainer.get_entity_embeddings())
        write_labels_tsv(Path(out_dir) / "entities.tsv", labels_in_id_order(kg.entity_to_id))
        for adapter, client in zip(adapters, kg.clients):
            _write_client_outputs(Path(out_dir), client, adapter.load_from(trainer.model), with_entities=False)
    return result


def untrained_metrics(kg: FederatedKG, config: KGEConfig, split: str = "test") -> dict[str, Any]:
    """Per-client metrics of the untrained model (the server's initial rows): the floor to beat."""
    require_global_ids(kg)
    table = initial_entity_table(config, kg.num_entities, seed=config.seed)
    metrics = []
    for client in kg.clients:
        trainer = LocalTrainer(client, config)
        trainer.set_entity_embeddings(table[client.entity_ids])
        metrics.append(trainer.evaluate(split))
    return per_client_report(metrics, [c.client_id for c in kg.clients])
