"""Shared pytest fixtures.

The real KG data of ``../shared/data`` (relative to the project root) is found through
``SIMSKIP_SHARED_DATA`` or that default path; tests that need it skip with a reason when absent.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (``scripts/`` is not a package), loaded afresh on each call."""
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Set before any test module imports PyKEEN or Flower: keep pystow's cache off the home
# directory, and telemetry and update checks off.
os.environ.setdefault("PYSTOW_HOME", os.path.join(tempfile.gettempdir(), "simskip-tests-pystow"))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def evaluation_against_pykeen(model, graph, protocol: str):
    """This project's evaluator and PyKEEN's ``RankBasedEvaluator`` on ``graph``'s test triples (filtered
    by train and valid, batch 7; under the FedE protocol both restricted to the test tails plus ids 0-2).

    :returns: ``(ours, pykeen_results, side)``: our metrics dict, PyKEEN's results, and the side
        (``both`` or ``tail``) whose PyKEEN metrics ours equal.
    """
    import torch
    from pykeen.evaluation import RankBasedEvaluator

    from client.kge.evaluation import evaluate_link_prediction

    test = graph.test.mapped_triples
    filters = [graph.train.mapped_triples, graph.valid.mapped_triples]
    candidates = sorted(set(test[:, 2].tolist()) | {0, 1, 2})  # a strict subset of the 14 entities
    ours = evaluate_link_prediction(
        model, test, filter_triples=filters, protocol=protocol, candidate_entities=candidates, batch_size=7
    )
    side, targets = ("both", ("head", "tail")) if protocol == "standard" else ("tail", ("tail",))
    results = RankBasedEvaluator(filtered=True).evaluate(
        model,
        test,
        batch_size=7,
        use_tqdm=False,
        additional_filter_triples=filters,
        targets=targets,
        restrict_entities_to=torch.tensor(candidates) if protocol == "fede" else None,
        do_time_consuming_checks=False,
    )
    return ours, results, side


def shared_negatives_batch(trainer, factory, size: int = 32, per_side: int = 6):
    """The loss of ``trainer``'s shared-negatives loop on the first ``size`` train triples of the
    ``nations``-like graph its trainer holds, and the loop's draws replayed for a hand reference.

    :returns: ``(batch, loss, heads, tails, known)``: the positives, the loop's loss, the head and tail
        candidates it drew (seed 11; heads first, as the config orders them), and the known train triples.
    """
    import torch

    from client.kge.models import seeded

    graph = trainer.graph
    trainer.loop._create_training_data_loader(factory, sampler=None, batch_size=size, drop_last=False)
    batch = graph.train.mapped_triples[:size]
    with seeded(11):
        loss = trainer.loop._process_batch(batch, 0, size)
    with seeded(11):  # the same draws: head candidates first, then tail candidates (config order)
        heads = torch.randint(graph.num_entities, (per_side,))
        tails = torch.randint(graph.num_entities, (per_side,))
    known = {tuple(t) for t in graph.train.mapped_triples.tolist()}
    return batch, loss, heads, tails, known


def shared_data_dir() -> Path:
    """Return the folder holding the shared KG data (it may not exist)."""
    env = os.environ.get("SIMSKIP_SHARED_DATA")
    return Path(env) if env else PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; skips the test when it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared KG data not found at {path} (set SIMSKIP_SHARED_DATA)")
    return path


@pytest.fixture
def task_identity():
    """Give Flower messages a run/node/task identity outside a Flower runtime; restore it after.

    Use with ``pytestmark = pytest.mark.usefixtures("task_identity")``.
    """
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``-n 2 --dist loadgroup``, the README's command) the ``long`` process
    tests run one after another on one worker: each starts a SuperLink, SuperNodes or a Ray
    cluster and keeps both cores busy for minutes, and two at once only lengthen both. The other
    worker runs everything else meanwhile (unit tests, the short simulations)."""
    for item in items:
        if item.get_closest_marker("long") is not None:
            item.add_marker(pytest.mark.xdist_group("long-processes"))


@pytest.fixture(scope="module")
def nations():
    """PyKEEN's Nations as one party's graph (the ClientGraph attributes LocalTrainer uses)."""
    from types import SimpleNamespace

    from pykeen.datasets import Nations

    dataset = Nations()
    return SimpleNamespace(
        client_id=0,
        train=dataset.training,
        valid=dataset.validation,
        test=dataset.testing,
        num_entities=dataset.training.num_entities,
    )
