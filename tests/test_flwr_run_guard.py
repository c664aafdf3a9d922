"""The ServerApp refuses a run not started by ``simskip-sim`` / ``simskip-server`` (e.g. ``flwr run .``).

``flwr run .`` starts the app with the pyproject's ``[tool.flwr.app.config]`` defaults, where
``run-dir = ""``; only the project's commands set it (and the parties' data paths). No real
``flwr run`` is started here: the check and the Flower entry point are called directly.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from client.kge.settings import SettingsError
from server.server_app import LAUNCH_DOCS, UnsupportedLaunchError, app, check_started_by_launcher, main

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _pyproject_run_config() -> dict:
    """The run config ``flwr run .`` gives the ServerApp: the pyproject's defaults, no overrides."""
    with (PROJECT_ROOT / "pyproject.toml").open("rb") as handle:
        return dict(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])


def _assert_guard_message(message: str) -> None:
    assert "\n" not in message  # one line
    for name in ("run-dir", "simskip-sim", "simskip-server", "flwr run .", LAUNCH_DOCS):
        assert name in message, f"{name!r} missing from: {message}"


def test_the_pyproject_defaults_are_refused_naming_both_commands_and_the_docs():
    config = _pyproject_run_config()
    assert config["run-dir"] == ""  # what `flwr run .` passes: the guard below must refuse it
    with pytest.raises(UnsupportedLaunchError) as caught:
        check_started_by_launcher(config)
    assert isinstance(caught.value, SettingsError)  # a run-config problem, as the other setting errors
    _assert_guard_message(str(caught.value))


@pytest.mark.parametrize("run_config", [{}, {"run-dir": "   "}, {"num-server-rounds": 3}])
def test_a_config_without_run_dir_is_refused(run_config):
    with pytest.raises(UnsupportedLaunchError) as caught:
        check_started_by_launcher(run_config)
    _assert_guard_message(str(caught.value))


def test_the_page_the_message_points_to_exists_and_names_both_commands():
    page = (PROJECT_ROOT / LAUNCH_DOCS).read_text()
    assert "simskip-sim" in page and "simskip-server" in page and "flwr run ." in page


def test_a_config_with_run_dir_passes(tmp_path):
    # what simskip-sim / simskip-server pass (server/simulation.py, server/cli.py)
    assert check_started_by_launcher({**_pyproject_run_config(), "run-dir": str(tmp_path)}) is None


class _UntouchableGrid:
    """A grid that fails the test if the ServerApp uses it (the refusal must come first)."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the ServerApp used the grid ({name}) before refusing the run")


def test_the_server_app_refuses_before_the_handshake():
    assert app._main is main  # the function Flower calls for this ServerApp (flwr 1.42 keeps it there)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=_pyproject_run_config())
    with pytest.raises(UnsupportedLaunchError) as caught:
        main(_UntouchableGrid(), context)
    _assert_guard_message(str(caught.value))
