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
