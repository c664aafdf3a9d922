"""The ``lr-decay`` key: a party's epoch ``e`` (0-based, counted across rounds and resumes) trains at
``learning-rate * lr-decay ** e``, in both training regimes, with and without kept optimizer state, and a
resumed trainer continues the schedule where the party left it; 1.0 leaves training as it was."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from client.kge.config import ConfigError, KGEConfig
from client.kge.training import LocalTrainer

LEARNING_RATE = 1e-2
DECAY = 0.5
BATCH_SIZE = 512
REGIMES = ["sharednegatives", "slcwa"]


def _without_decay(**changes: object) -> KGEConfig:
    """A small config that does not name ``lr_decay`` (its default)."""
    return KGEConfig(
        model="DistMult", embedding_dim=8, batch_size=BATCH_SIZE, num_negs_per_pos=4, learning_rate=LEARNING_RATE
    ).replace(**changes)


def _config(**changes: object) -> KGEConfig:
    return _without_decay(lr_decay=DECAY).replace(**changes)


@contextlib.contextmanager
def _step_rates() -> Iterator[list[float]]:
    """The learning rate of every optimizer step taken in the block (each parameter group's, which must agree).

    A global torch hook, so it also sees the optimizer PyKEEN rebuilds on each call when the optimizer
    state is not kept."""
    rates: list[float] = []

    def record(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        group_rates = {group["lr"] for group in optimizer.param_groups}
        assert len(group_rates) == 1, group_rates
        rates.append(group_rates.pop())

    handle = register_optimizer_step_pre_hook(record)
    try:
        yield rates
    finally:
        handle.remove()


def _per_epoch(rates: list[float], epochs: int, nations: SimpleNamespace) -> list[list[float]]:
    """The step rates grouped by epoch (one step per batch of positive triples)."""
    batches = math.ceil(nations.train.num_triples / BATCH_SIZE)
    assert len(rates) == epochs * batches
    return [rates[epoch * batches : (epoch + 1) * batches] for epoch in range(epochs)]


def _expected(first_epoch: int, epochs: int, nations: SimpleNamespace) -> list[list[float]]:
    batches = math.ceil(nations.train.num_triples / BATCH_SIZE)
    return [[LEARNING_RATE * DECAY**epoch] * batches for epoch in range(first_epoch, first_epoch + epochs)]


@pytest.mark.parametrize("keep_optimizer_state", [True, False])
@pytest.mark.parametrize("regime", REGIMES)
def test_every_step_of_every_round_trains_at_the_rate_of_the_partys_epoch(
    nations: SimpleNamespace, regime: str, keep_optimizer_state: bool
) -> None:
    trainer = LocalTrainer(nations, _config(training_loop=regime, keep_optimizer_state=keep_optimizer_state))
    done = 0
    for epochs in (2, 1, 3):  # three rounds of different lengths
        with _step_rates() as rates:
            losses = trainer.train(epochs)
        assert len(losses) == epochs and all(math.isfinite(loss) for loss in losses)
        assert _per_epoch(rates, epochs, nations) == _expected(done, epochs, nations), f"round from epoch {done}"
        done += epochs
    assert trainer.epochs_done == done == 6


@pytest.mark.parametrize("keep_optimizer_state", [True, False])
@pytest.mark.parametrize("regime", REGIMES)
def test_a_restored_trainer_continues_the_schedule_as_the_uninterrupted_one(
    nations: SimpleNamespace, regime: str, keep_optimizer_state: bool
) -> None:
    """As a resumed run or a Flower ClientApp's fresh process does: a new trainer (its PyKEEN loop counts from
    epoch 0 again) takes the private state, and trains the party's epochs 2 and 3 at their rates, exactly as
    the trainer that never stopped."""
    config = _config(training_loop=regime, keep_optimizer_state=keep_optimizer_state)
    uninterrupted = LocalTrainer(nations, config)
    uninterrupted.train(2)
    before = LocalTrainer(nations, config)
    before.train(2)
    restored = LocalTrainer(nations, config)
    restored.set_private_state(before.get_private_state(include_entities=True))
    assert restored.epochs_done == 2 and restored.loop._epoch == 0

    with _step_rates() as rates:
        losses = restored.train(2)
    assert _per_epoch(rates, 2, nations) == _expected(2, 2, nations)
    assert losses == uninterrupted.train(2)
    np.testing.assert_array_equal(restored.get_entity_embeddings(), uninterrupted.get_entity_embeddings())
    expected_state = uninterrupted.get_private_state()
    restored_state = restored.get_private_state()
    assert restored_state.keys() == expected_state.keys()
    for key, value in expected_state.items():
        np.testing.assert_array_equal(restored_state[key], value, err_msg=key)


@pytest.mark.parametrize("regime", REGIMES)
def test_lr_decay_one_is_the_default_bit_for_bit_and_leaves_the_optimizer_alone(
    nations: SimpleNamespace, regime: str
) -> None:
    default = LocalTrainer(nations, _without_decay(training_loop=regime))
    explicit = LocalTrainer(nations, _config(training_loop=regime, lr_decay=1.0))
    assert default.config.lr_decay == 1.0
    calls: list[dict[str, object]] = []
    train = explicit.loop.train

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return train(*args, **kwargs)

    explicit.loop.train = spy  # type: ignore[method-assign]
    for epochs in (2, 1):
        with _step_rates() as rates:
            losses = explicit.train(epochs)
        assert set(rates) == {LEARNING_RATE}
        assert losses == default.train(epochs)
    assert all("callbacks" not in kwargs for kwargs in calls)  # no schedule hook on the default path
    np.testing.assert_array_equal(explicit.get_entity_embeddings(), default.get_entity_embeddings())


@pytest.mark.parametrize("regime", REGIMES)
def test_a_decay_keeps_the_first_epoch_and_changes_the_later_ones(nations: SimpleNamespace, regime: str) -> None:
    """Epoch 0 trains at ``learning-rate * decay ** 0``, the same float: the hook changes nothing else (same
    loss, same rows); from epoch 1 on the rate, and so the training, differs."""
    constant = LocalTrainer(nations, _config(training_loop=regime, lr_decay=1.0))
    decayed = LocalTrainer(nations, _config(training_loop=regime))
    assert decayed.train(1) == constant.train(1)
    np.testing.assert_array_equal(decayed.get_entity_embeddings(), constant.get_entity_embeddings())
    assert decayed.train(1) != constant.train(1)
    assert not np.array_equal(decayed.get_entity_embeddings(), constant.get_entity_embeddings())


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5, float("nan"), float("inf")])
def test_a_decay_outside_0_to_1_is_refused_naming_the_key(value: float) -> None:
    with pytest.raises(ConfigError, match=r"lr-decay must be in \(0, 1\]"):
        KGEConfig(lr_decay=value)
    with pytest.raises(ConfigError, match=r"lr-decay must be in \(0, 1\]"):
        KGEConfig.from_run_config({"lr-decay": value})


def test_the_key_is_a_model_defining_run_config_key() -> None:
    from client.kge.run_config import REGISTRY

    key = REGISTRY["lr-decay"]
    assert key.owner == "kge" and key.type is float and key.default == 1.0 and key.model_defining
    assert KGEConfig.from_run_config({"lr-decay": 0.9}).lr_decay == 0.9
    assert KGEConfig.from_run_config({"lr-decay": 1}).lr_decay == 1.0  # an integer 1 is the float 1.0


# --- the in-process runners (FedE, isolation, collection) and their resume ---------------------------------


class _Interrupt(Exception):
    """Stands in for a killed process, raised from the progress line of round 3."""


@pytest.fixture(scope="module")
def kinships():
    from kg_datasets import load_federated

    return load_federated("Kinships", num_clients=3, seed=0)


@pytest.mark.parametrize("runner_name", ["run_fede_in_process", "run_isolation", "run_collection"])
def test_each_in_process_runner_follows_the_schedule_and_resumes_it(kinships, tmp_path, runner_name: str) -> None:
    """One local epoch per round: round r trains every party at ``lr * decay ** (r - 1)``; a run stopped after
    round 2 and resumed from its checkpoint trains round 3 at ``lr * decay ** 2`` and ends as the uninterrupted
    run (same valid history and test)."""
    from client.kge import centralized
    from kg_datasets.triples import labels_in_id_order
    from server.checkpoint import FolderCheckpoint

    runner = getattr(centralized, runner_name)
    config = KGEConfig(
        model="DistMult",
        embedding_dim=16,
        batch_size=512,
        num_negs_per_pos=8,
        learning_rate=0.02,
        lr_decay=DECAY,
        local_epochs=1,
        eval_every=1,
    )
    vocabulary = labels_in_id_order(kinships.entity_to_id)

    def checkpoint(folder: str) -> FolderCheckpoint:
        return FolderCheckpoint(tmp_path / folder, config.to_run_config(), vocabulary)

    with _step_rates() as rates:
        whole = runner(kinships, config, 3, progress=lambda line: None, checkpoint=checkpoint("whole"))
    assert rates == sorted(rates, reverse=True)
    assert set(rates) == {0.02 * DECAY**epoch for epoch in range(3)}

    def stop_after_round_2(line: str) -> None:
        if "round 3/3" in line:
            raise _Interrupt(line)

    with pytest.raises(_Interrupt):
        runner(kinships, config, 3, progress=stop_after_round_2, checkpoint=checkpoint("parts"))
    with _step_rates() as rates:
        resumed = runner(kinships, config, 3, progress=lambda line: None, checkpoint=checkpoint("parts"))
    assert resumed["resumed_after_round"] == 2
    assert rates and set(rates) == {0.02 * DECAY**2}
    assert [e["valid"]["overall"]["mrr"] for e in resumed["history"]] == [
        e["valid"]["overall"]["mrr"] for e in whole["history"]
    ]
    assert resumed["test"] == whole["test"]
