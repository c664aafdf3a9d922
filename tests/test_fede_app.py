"""The ClientApp's handlers called directly on a small real graph, and the app's config."""

from __future__ import annotations

import dataclasses
import tomllib

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client import client_app
from client.kge.config import KGEConfig
from client.kge.refinement import REFINEMENT_KEYS, RefinementConfig, load_run_configs
from client.kge.run_config import app_config_defaults
from client.kge.settings import KNOWN_NON_KGE_KEYS, FederationSettings
from tests.conftest import PROJECT_ROOT

TINY = {"embedding-dim": 4, "local-epochs": 1, "num-negs-per-pos": 2, "batch-size": 64, "eval-batch-size": 64}


pytestmark = pytest.mark.usefixtures("task_identity")  # Flower messages outside a runtime


def test_pyproject_app_config_lists_every_key_with_the_code_defaults():
    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert config["components"] == {"serverapp": "server.server_app:app", "clientapp": "client.app:app"}
    app_config = config["config"]
    # Flower refuses --run-config overrides of keys the app config does not list: it lists every key of the
    # registry (client/kge/run_config.py) with the code's default, and the owners' views agree with it
    assert app_config == app_config_defaults()
    kge_defaults = KGEConfig().to_run_config()
    federation_defaults = {f.name.replace("_", "-"): f.default for f in dataclasses.fields(FederationSettings)}
    assert set(federation_defaults) == set(KNOWN_NON_KGE_KEYS)
    assert app_config == {**federation_defaults, **kge_defaults, **REFINEMENT_KEYS}
    settings, kge, refinement = load_run_configs(app_config)  # the shipped config is valid as a whole
    assert settings.setting == "fede" and kge == KGEConfig() and refinement == RefinementConfig()


def test_unknown_run_config_key_fails_naming_it():
    with pytest.raises(ValueError, match="locl-epochs"):
        load_run_configs({"locl-epochs": 3})


@pytest.fixture(scope="module")
def nations_folder(tmp_path_factory):
    from kg_datasets import load_federated

    out = tmp_path_factory.mktemp("nations") / "data"
    load_federated("Nations", num_clients=2, partition="relation", seed=0).write(out)
    return out


def _context(data_root, tmp_path, partition=0):
    return Context(
        run_id=1,
        node_id=5,
        node_config={"partition-id": partition},
        state=RecordDict(),
        run_config={**TINY, "client-data-root": str(data_root), "client-output-root": str(tmp_path)},
    )


def _request(message_type, content):
    return Message(content=content, dst_node_id=5, message_type=message_type)


def _rows_message(message_type, rows, **config):
    return _request(
        message_type,
        RecordDict(
            {
                client_app.ENTITY_ROWS_KEY: ArrayRecord({"rows": Array(rows)}),
                client_app.CONFIG_KEY: ConfigRecord(config),
            }
        ),
    )


def test_client_handlers_train_validate_and_test_from_context_state(nations_folder, tmp_path, monkeypatch):
    from kg_datasets import load_client_folder

    context = _context(nations_folder, tmp_path)
    reply = client_app.handshake(_request("query.entities", RecordDict({"config": ConfigRecord()})), context)
    info = reply.content.config_records[client_app.CLIENT_INFO_KEY]
    graph = load_client_folder(nations_folder / "0", client_id=0)
    assert list(info["entity-labels"]) == graph.entity_labels
    assert info["client-id"] == "0" and info["num-train"] == graph.train.num_triples
    assert info["entity-dim"] == 4

    # Later messages must not read the text files again: the mapped triples are in context.state.
    import kg_datasets

    def no_reread(*args, **kwargs):
        raise AssertionError("the client re-read its data folder")

    monkeypatch.setattr(kg_datasets, "load_client_folder", no_reread)
    n = graph.num_entities
    rows = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    reply = client_app.train(_rows_message("train", rows, **{"server-round": 1}), context)
    returned = reply.content.array_records[client_app.ENTITY_ROWS_KEY]["rows"].numpy()
    metrics = reply.content.metric_records[client_app.METRICS_KEY]
    assert returned.shape == (n, 4) and not np.allclose(returned, rows), "training moved the rows"
    assert metrics["num-entities"] == n and metrics["num-examples"] == graph.train.num_triples
    relations_after_round1 = {k: v.numpy().copy() for k, v in context.state.array_records["private-current"].items()}

    reply = client_app.validate(_rows_message("evaluate", returned, **{"server-round": 1, "best-round": 0}), context)
    valid = reply.content.metric_records[client_app.METRICS_KEY]
    assert 0.0 < valid["mrr"] <= 1.0 and valid["num_triples"] == graph.valid.num_triples
    assert "private-round-1" in context.state.array_records

    client_app.train(_rows_message("train", returned, **{"server-round": 2}), context)
    reply = client_app.validate(_rows_message("evaluate", returned, **{"server-round": 2, "best-round": 1}), context)
    client_app.train(_rows_message("train", returned, **{"server-round": 3}), context)
    reply = client_app.validate(_rows_message("evaluate", returned, **{"server-round": 3, "best-round": 1}), context)
    snapshots = sorted(k for k in context.state.array_records if k.startswith("private-round-"))
    assert snapshots == ["private-round-1", "private-round-3"], "only the best and the latest snapshot are kept"

    reply = client_app.test(_rows_message("evaluate.test", returned, **{"server-round": 1, "best-round": 1}), context)
    test_metrics = reply.content.metric_records[client_app.METRICS_KEY]
    assert test_metrics["num_triples"] == graph.test.num_triples
    saved = np.load(tmp_path / "0" / "relation_embeddings.npz")
    # the test restored round 1's private state: the written relation embeddings are round 1's
    for key, value in relations_after_round1.items():
        if key.startswith("model/"):
            np.testing.assert_array_equal(saved[key.removeprefix("model/")], value)
    assert (tmp_path / "0" / "relations.tsv").read_text().count("\n") == graph.num_relations


def test_client_rejects_rows_for_another_entity_count(nations_folder, tmp_path):
    context = _context(nations_folder, tmp_path)
    with pytest.raises(client_app.ClientSetupError, match="holds"):
        client_app.train(_rows_message("train", np.zeros((3, 4), np.float32), **{"server-round": 1}), context)


def test_client_without_data_location_fails_clearly(tmp_path):
    context = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config=dict(TINY))
    with pytest.raises(client_app.ClientSetupError, match="data-dir"):
        client_app.train(_rows_message("train", np.zeros((3, 4), np.float32), **{"server-round": 1}), context)
