"""The structure view of SimSkip on KG rows (client/kge/structure_view.py): the neighbour's evidence
for an entity in the model's geometry, mixed with the row; and the ``row_view`` augmentation end to
end in both places SimSkip trains on KG rows (refine-only and the Flower client)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pykeen.triples import CoreTriplesFactory

from client.kge.config import KGEConfig
from client.kge.models import build_model, entity_embedding, relation_embeddings, seeded
from client.kge.refinement import RefinementConfig, RefinementInputError, fit_round, initial_weights
from client.kge.refinement_config import RefinementConfigError
from client.kge.structure_view import StructureView, StructureViewError, structure_view_from_model

#: (head, relation, tail): entity 0 is the tail of (2, 1, 0) and the head of (0, 0, 1); entity 1 only
#: the tail of (0, 0, 1); entity 2 only the head of (2, 1, 0); entity 3 has no triple.
TRIPLES = np.array([[0, 0, 1], [2, 1, 0]])
VIEW = "row_view,gaussian_noise,feature_mask"


def _model(name: str, dim: int = 3, seed: int = 0):
    factory = CoreTriplesFactory.create(mapped_triples=torch.as_tensor(TRIPLES), num_entities=4, num_relations=2)
    with seeded(seed):
        return build_model(KGEConfig(model=name, embedding_dim=dim), factory)


def _views(view: StructureView, entity: int, draws: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.stack([view(torch.tensor([entity]), generator)[0] for _ in range(draws)])


def _distinct(rows: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.unique(rows, dim=0))


def test_transe_evidence_is_h_plus_r_and_t_minus_r() -> None:
    model = _model("TransE")
    x = entity_embedding(model)._embeddings.weight.detach().clone()
    r = relation_embeddings(model)[0]._embeddings.weight.detach().clone()
    view = structure_view_from_model(model, TRIPLES, mix=1.0)
    torch.testing.assert_close(_views(view, 1), (x[0] + r[0]).expand(64, -1))  # tail of (0, 0, 1): h + r
    torch.testing.assert_close(_views(view, 2), (x[0] - r[1]).expand(64, -1))  # head of (2, 1, 0): t - r
    both = _distinct(_views(view, 0))  # tail of (2, 1, 0): x2 + r1; head of (0, 0, 1): x1 - r0
    assert len(both) == 2
    for expected in (x[2] + r[1], x[1] - r[0]):
        assert any(torch.allclose(row, expected) for row in both)
    torch.testing.assert_close(_views(view, 3), x[3].expand(64, -1))  # no triple: its own row


def test_the_mix_keeps_the_view_between_row_and_evidence() -> None:
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    relations = np.ones((2, 3), dtype=np.float32)
    view = StructureView(rows, relations, TRIPLES, kind="translation", mix=0.25)
    out = view(torch.tensor([1, 3, 2]), torch.Generator().manual_seed(0))
    evidence_1 = rows[0] + relations[0]
    np.testing.assert_allclose(out[0].numpy(), rows[1] + 0.25 * (evidence_1 - rows[1]))
    np.testing.assert_allclose(out[1].numpy(), rows[3])
    np.testing.assert_allclose(out[2].numpy(), rows[2] + 0.25 * (rows[0] - relations[1] - rows[2]))
    assert out.dtype == torch.float32
    with pytest.raises(StructureViewError, match="in \\[0, 1\\]"):
        StructureView(rows, relations, TRIPLES, kind="translation", mix=1.5)
    with pytest.raises(StructureViewError, match="triple ids outside"):
        StructureView(rows, relations, [[0, 5, 1]], kind="translation", mix=0.5)


@pytest.mark.parametrize(("name", "head_conj"), [("RotatE", True), ("ComplEx", True), ("DistMult", False)])
def test_rotation_and_product_evidence_in_the_models_own_geometry(name, head_conj) -> None:
    model = _model(name, dim=2)
    rep = relation_embeddings(model)[0]
    stored = entity_embedding(model)._embeddings.weight.detach().clone()
    view = structure_view_from_model(model, TRIPLES, mix=1.0)
    if name == "DistMult":
        x, r = stored, rep._embeddings.weight.detach()
        tail, head = x[0] * r[0], x[0] * r[1]  # entity 1: h * r; entity 2: t * r (t = x0)
    else:
        x = torch.view_as_complex(stored.reshape(4, 2, 2))
        r = torch.view_as_complex(rep._embeddings.weight.detach().reshape(2, 2, 2))
        if name == "RotatE":
            r = r / r.abs()
        tail, head = x[0] * r[0], x[0] * (r[1].conj() if head_conj else r[1])
        tail, head = (torch.view_as_real(v.resolve_conj()).reshape(-1) for v in (tail, head))
    torch.testing.assert_close(_views(view, 1, 4), tail.expand(4, -1))
    torch.testing.assert_close(_views(view, 2, 4), head.expand(4, -1))
    torch.testing.assert_close(_views(view, 3, 4), stored[3].expand(4, -1))


def test_unsupported_model_and_rows_that_do_not_fit_fail_naming_them() -> None:
    with pytest.raises(StructureViewError, match="no evidence rule for model TransH"):
        structure_view_from_model(_model("TransH"), TRIPLES, mix=0.5)
    with pytest.raises(StructureViewError, match=r"entity rows of shape \(4, 5\)"):
        structure_view_from_model(_model("TransE"), TRIPLES, mix=0.5, entity_rows=np.zeros((4, 5), np.float32))


def test_the_view_is_vectorized_and_draws_from_the_generator() -> None:
    """One uniform draw per row: the same generator state gives the same views; rows are
    independent of the batch they are in; a big graph is indexed quickly."""
    rng = np.random.default_rng(0)
    n, m, d = 2000, 30000, 16
    triples = np.stack([rng.integers(0, n, m), rng.integers(0, 7, m), rng.integers(0, n, m)], axis=1)
    view = StructureView(
        rng.normal(size=(n, d)).astype(np.float32),
        rng.normal(size=(7, d)).astype(np.float32),
        triples,
        kind="translation",
        mix=0.5,
    )
    index = torch.as_tensor(rng.permutation(n)[:512])
    first = view(index, torch.Generator().manual_seed(3))
    assert torch.equal(first, view(index, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, view(index, torch.Generator().manual_seed(4)))
    generator = torch.Generator().manual_seed(3)
    view(index, generator)
    assert torch.equal(generator.get_state(), _advanced(3, len(index)))


def _advanced(seed: int, draws: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    torch.rand(draws, generator=generator, dtype=torch.float64)
    return generator.get_state()


def test_structure_mix_key_is_validated() -> None:
    assert RefinementConfig.from_run_config({"simskip-structure-mix": 1}).structure_mix == 1.0
    assert RefinementConfig().to_run_config()["simskip-structure-mix"] == 0.5
    for bad in (1.5, -0.1, "half", True):
        with pytest.raises(RefinementConfigError, match="simskip-structure-mix"):
            RefinementConfig.from_run_config({"simskip-structure-mix": bad})
    assert RefinementConfig.from_run_config({"simskip-augmentations": VIEW}).uses_row_view
    assert not RefinementConfig().uses_row_view


def test_fit_round_without_a_view_fails_and_with_one_uses_it() -> None:
    config = RefinementConfig.from_run_config(
        {"simskip-augmentations": VIEW, "simskip-batch-size": 8, "simskip-hidden-dim": 4, "simskip-device": "cpu"}
    )
    rows = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    start = initial_weights(6, config)
    with pytest.raises(RefinementInputError, match="names 'row_view', but no row view was given"):
        fit_round(rows, start, config, client_id=0, server_round=1)
    calls = []
    triples = np.array([[0, 0, 1], [2, 0, 3]])

    class Counting(StructureView):
        def __call__(self, index, generator):
            calls.append(len(index))
            return super().__call__(index, generator)

    view = Counting(rows, np.ones((1, 6), np.float32), triples, kind="translation", mix=0.5)
    update = fit_round(rows, start, config, client_id=0, server_round=1, row_view=view)
    assert calls == [4] * (2 * config.local_epochs) and np.isfinite(update.losses["refined"]).all()


# ----------------------------------------------------------------------------- end to end
SIMSKIP = {
    "simskip-rounds": 1,
    "simskip-local-epochs": 1,
    "simskip-batch-size": 16,
    "simskip-hidden-dim": 8,
    "simskip-projection-dim": 4,
    "simskip-augmentations": VIEW,
    "simskip-structure-mix": 0.5,
    "downstream-protocols": "as-trained",
    "refit-epochs": 1,
}


@pytest.fixture
def counted(monkeypatch):
    """Counts the rows the structure view is asked for."""
    calls: list[int] = []
    original = StructureView.__call__

    def call(self, index, generator):
        calls.append(len(index))
        return original(self, index, generator)

    monkeypatch.setattr(StructureView, "__call__", call)
    return calls


def test_refine_only_trains_with_the_structure_view(tmp_path, counted) -> None:
    from client.kge.centralized import run_fede_in_process
    from kg_datasets import load_federated
    from server.downstream import RunFolderError, refine_run_folder

    kg = load_federated("Nations", num_clients=2, seed=0)
    kg.write(tmp_path / "data")
    config = KGEConfig(embedding_dim=8, batch_size=128, num_negs_per_pos=4, learning_rate=1e-2, eval_every=1)
    run_fede_in_process(kg, config, 1, device="cpu", out_dir=tmp_path, progress=lambda line: None)
    run_config = {
        "setting": "fede",
        "client-data-root": str(tmp_path / "data"),
        "client-output-root": str(tmp_path / "clients"),
        **SIMSKIP,
    }
    (tmp_path / "config.json").write_text(json.dumps({"run_config": run_config, "kge": config.to_run_config()}))
    refine_run_folder(tmp_path, device="cpu", log=lambda line: None)
    rows = sum(int(np.load(tmp_path / "refined" / k / "refined.npy").shape[0]) for k in ("0", "1"))
    assert sum(counted) == 2 * rows  # two views of every row of both clients, one round of one epoch
    downstream = json.loads((tmp_path / "downstream.json").read_text())
    assert downstream["refinement"]["simskip-augmentations"] == VIEW
    assert downstream["refinement"]["simskip-structure-mix"] == 0.5
    assert (tmp_path / "refined" / "0" / "refined.npy").is_file()
    # without the clients' trained relations the view cannot be built: named, before any round
    with pytest.raises(RunFolderError, match=r"client 0: .*row_view.*has none"):
        refine_run_folder(tmp_path, {"client-output-root": str(tmp_path / "elsewhere")}, log=lambda line: None)


@pytest.mark.usefixtures("task_identity")  # Flower messages outside a runtime
def test_flower_client_trains_with_its_structure_view(tmp_path, counted) -> None:
    from kg_datasets import load_federated
    from server.simskip_strategy import SIMSKIP_TRAIN_TYPE
    from tests.handler_grid import run_both_phases

    load_federated("Nations", num_clients=2, seed=0).write(tmp_path / "data")
    run_config = {
        "embedding-dim": 8,
        "local-epochs": 1,
        "num-negs-per-pos": 4,
        "batch-size": 128,
        "eval-batch-size": 64,
        "learning-rate": 0.01,
        "eval-every": 1,
        "client-data-root": str(tmp_path / "data"),
        "client-output-root": str(tmp_path / "clients"),
        **SIMSKIP,
    }
    grid, _, result, records, _ = run_both_phases(run_config, tmp_path, kge_rounds=1)
    assert set(records) == {"0", "1"}
    train = [(m, r) for m, r in grid.log if m.metadata.message_type == SIMSKIP_TRAIN_TYPE]
    assert len(train) == 2
    rows = 0
    for msg, reply in train:
        assert msg.content.config_records["config"]["best-round"] == result.best_round
        assert not reply.has_error() and np.isfinite(reply.content.metric_records["metrics"]["loss/refined"])
        rows += int(reply.content.metric_records["metrics"]["num-rows"])
    assert sum(counted) == 2 * rows
