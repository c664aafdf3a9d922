"""Federated knowledge graphs on PyKEEN triples factories.

Public API::

    from kg_datasets import ClientGraph, FederatedKG, load_federated, load_client_folder, KGDataError

    kg = load_federated("UMLS", num_clients=3, seed=0)          # FedE relation partition
    kg.write("out/umls-fed3")                                    # out/umls-fed3/{0,1,2}/{train,valid,test}.txt
    client = load_client_folder("out/umls-fed3/0")               # what a deployed party holds
    central = load_federated("../shared/data/FB15k-237", resplit=False, on_unseen="keep")
    # one party with FB15k-237's own split and all 14,541 entities (the standard protocol)
"""

from kg_datasets.errors import DatasetUnavailableError, KGDataError, KGDataWarning, UnseenTripleError
from kg_datasets.model import ClientGraph, FederatedKG, KGSplit
from kg_datasets.partition import fede_relation_partition, heldout_split, random_triple_partition
from kg_datasets.sources import load_client_folder, load_federated, load_source

__all__ = [
    "ClientGraph",
    "DatasetUnavailableError",
    "FederatedKG",
    "KGDataError",
    "KGDataWarning",
    "KGSplit",
    "UnseenTripleError",
    "fede_relation_partition",
    "heldout_split",
    "load_client_folder",
    "load_federated",
    "load_source",
    "random_triple_partition",
]
