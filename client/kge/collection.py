"""The collection setting's pieces: all parties' train triples pooled into one graph, and each
party's view of the central model (its entities' and relations' rows in a model of its own size),
so that collection is validated and tested per party exactly as FedE and isolation are.

Used by :func:`client.kge.centralized.run_collection`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from pykeen.models import Model
from pykeen.triples import CoreTriplesFactory

from client.kge.config import KGEConfig
from client.kge.evaluation import evaluate_client
from client.kge.models import (
    UnsupportedModelError,
    build_model,
    entity_embedding,
    relation_embeddings,
    relation_rows,
    seeded,
)

if TYPE_CHECKING:  # pragma: no cover
    from kg_datasets import ClientGraph, FederatedKG

__all__ = ["POOLED_CLIENT_ID", "CollectionAdapter", "PooledGraph", "pool_clients", "require_global_ids"]


#: ``client_id`` of the pooled graph (seeds and messages tell it from the real clients).
POOLED_CLIENT_ID = -1


def require_global_ids(kg: FederatedKG) -> None:
    """Raise ``ValueError`` unless every client has global entity and relation ids."""
    for client in kg.clients:
        if client.entity_ids is None or client.relation_ids is None:
            raise ValueError(
                f"client {client.client_id} has no global ids (loaded alone?); baselines need a FederatedKG"
            )


@dataclass(frozen=True)
class PooledGraph:
    """All clients' train triples over global entity ids and per-client-unique relation ids.

    :param train: the pooled factory, ``num_entities == kg.num_entities``.
    :param relation_offsets: client k's local relation r is pooled relation ``offsets[k] + r``.
    """

    train: CoreTriplesFactory
    relation_offsets: tuple[int, ...]
    client_id: int = POOLED_CLIENT_ID

    @property
    def num_entities(self) -> int:
        return int(self.train.num_entities)


def pool_clients(kg: FederatedKG) -> PooledGraph:
    """Pool the clients' train triples (global entity ids; relations unique per client).

    Relations are made unique per client so that pooling adds no information FedE does not
    have: a relation name shared by two parties stays two private relations.
    """
    require_global_ids(kg)
    offsets = np.cumsum([0] + [client.num_relations for client in kg.clients])
    parts = []
    for client, offset in zip(kg.clients, offsets[:-1]):
        local = client.train.mapped_triples.numpy()
        entity_ids = np.asarray(client.entity_ids, dtype=np.int64)
        parts.append(np.stack([entity_ids[local[:, 0]], local[:, 1] + offset, entity_ids[local[:, 2]]], axis=1))
    pooled = torch.as_tensor(np.concatenate(parts), dtype=torch.long)
    factory = CoreTriplesFactory.create(
        mapped_triples=pooled, num_entities=kg.num_entities, num_relations=int(offsets[-1])
    )
    return PooledGraph(train=factory, relation_offsets=tuple(int(o) for o in offsets[:-1]))


class CollectionAdapter:
    """Score one client's valid/test triples with the central model.

    Builds a client-local model of the same kind once and, before each evaluation, fills it with
    the central rows of the client's entities and relations (other parameters are copied as
    they are). The client is then evaluated exactly as in FedE and isolation: its own entities
    as candidates, filtered with its own triples.

    :param client: the client's graph (with global ``entity_ids``).
    :param relation_offset: the client's offset in the pooled relation ids.
    :param config: the KGE config of the central model.
    :param device: where to score.
    """

    def __init__(
        self, client: ClientGraph, relation_offset: int, config: KGEConfig, device: torch.device | None = None
    ) -> None:
        self.client = client
        with seeded(0):
            self.model = build_model(config, client.train, device)
        self.entity_rows = torch.as_tensor(np.asarray(client.entity_ids, dtype=np.int64))
        #: the central table's row of each row of the client model's relation tables
        self.relation_rows = torch.arange(client.num_relations) + relation_offset
        if self.model.use_inverse_triples:  # reciprocal-relations: forward and inverse rows, each to its own
            local = torch.arange(client.num_relations)
            rows = torch.empty(self.model.num_relations, dtype=torch.long)
            for inverse in (False, True):  # both models place rows by PyKEEN's (default) relation_inverter
                rows[relation_rows(self.model, local, inverse=inverse)] = relation_rows(
                    self.model, local + relation_offset, inverse=inverse
                )
            self.relation_rows = rows

    def load_from(self, central: Model) -> Model:
        """Copy the client's rows of ``central`` into the client model and return it."""
        central_entities = entity_embedding(central)._embeddings.weight
        central_relations = relation_embeddings(central)
        local_relations = relation_embeddings(self.model)
        local_entities = entity_embedding(self.model)._embeddings.weight
        gathered = {id(local_entities): central_entities[self.entity_rows.to(central_entities.device)]}
        for central_rel, local_rel in zip(central_relations, local_relations, strict=True):
            weight = central_rel._embeddings.weight
            gathered[id(local_rel._embeddings.weight)] = weight[self.relation_rows.to(weight.device)]
        central_state = central.state_dict()
        with torch.no_grad():
            for name, tensor in self.model.state_dict(keep_vars=True).items():
                source = gathered.get(id(tensor), central_state[name])
                if source.shape != tensor.shape:
                    raise UnsupportedModelError(
                        f"{type(central).__name__}: tensor {name!r} is sized by the graph "
                        f"({tuple(source.shape)} vs {tuple(tensor.shape)}) and is not an entity/relation table"
                    )
                tensor.data.copy_(source.to(tensor.device))
        return self.model

    def evaluate(self, central: Model, split: str, config: KGEConfig) -> dict[str, float]:
        """Metrics of the client's ``split`` under ``config.eval_protocol``."""
        return evaluate_client(
            self.load_from(central),
            self.client,
            split=split,
            protocol=config.eval_protocol,
            batch_size=config.eval_batch_size,
        )
