"""A federation of real processes on loopback for one test: ``simskip-server`` and one
``simskip-client`` per party, each with its log in the test's folder.

Used as a context manager: on exit every process started through it is stopped by PID
(server first; each stops its own SuperLink / SuperNode on SIGTERM), whatever the test did.
Import it as ``from loopback import Loopback`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

from client.pids import free_port, stop_process

#: Flower's telemetry and update check off (no network here)
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def script(name: str) -> str:
    """The path of a console script of this virtual environment."""
    return os.path.join(os.path.dirname(sys.executable), name)


def wait_for(path: Path, pattern: str, deadline: float, watched: subprocess.Popen, poll: float = 1.0) -> re.Match:
    """Wait until ``pattern`` shows in the file ``path``; fail (showing its tail) at ``deadline``
    (a :func:`time.monotonic` time) or as soon as ``watched`` has exited."""
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if match := re.search(pattern, text):
            return match
        if watched.poll() is not None:
            break
        time.sleep(poll)
    raise AssertionError(f"{pattern!r} not seen in {path}:\n{text[-3000:]}")


class Loopback:
    """Processes of one test's federation.

    :param folder: the test's folder: logs ``server.log`` and ``party<k>[-<attempt>].log``,
        party outputs ``party<k>/``, data ``data/<k>/`` (:meth:`write_data`).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.port = free_port()
        self.data = self.folder / "data"
        self.run_dir = self.folder / "server-run"
        self.processes: list[subprocess.Popen] = []

    def write_data(self, dataset: str = "Kinships", num_clients: int = 3) -> Path:
        """Partition a bundled PyKEEN dataset FedE-style (by relation) into ``data/<k>``."""
        from kg_datasets import load_federated

        load_federated(dataset, num_clients=num_clients, partition="relation", seed=0).write(self.data)
        return self.data

    def _start(self, command: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.folder / log, "wb") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                command,
                env={**ENV, **(env or {})},
                cwd=self.folder,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(proc)
        return proc

    def server(self, *args: str, sets: list[str] | tuple[str, ...] = ()) -> subprocess.Popen:
        """``simskip-server --insecure`` on this federation's port and run folder, plus ``args``
        and ``--set`` of each of ``sets``."""
        command = [
            script("simskip-server"),
            "--run-dir",
            str(self.run_dir),
            "--port",
            str(self.port),
            "--insecure",
            *args,
        ]
        for item in sets:
            command += ["--set", item]
        return self._start(command, "server.log")

    def client(self, k: int, attempt: int | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
        """``simskip-client --insecure`` of party ``k`` (data ``data/<k>``, output ``party<k>/``);
        ``attempt`` names a restart's log ``party<k>-<attempt>.log``; ``env`` adds variables
        (e.g. ``client.client_app.HOLD_TRAIN_ENV``)."""
        command = [
            script("simskip-client"),
            "--server",
            f"127.0.0.1:{self.port}",
            "--data",
            str(self.data / str(k)),
            "--insecure",
            "--output-dir",
            str(self.folder / f"party{k}"),
        ]
        return self._start(command, f"party{k}.log" if attempt is None else f"party{k}-{attempt}.log", env)

    def log(self, name: str = "server.log") -> str:
        """The text of a log in the folder (``""`` while it does not exist)."""
        path = self.folder / name
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        servers = [p for p in self.processes if "simskip-server" in p.args[0]]
        for proc in servers + [p for p in reversed(self.processes) if p not in servers]:
            stop_process(proc, timeout=30)
