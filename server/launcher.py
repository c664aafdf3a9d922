"""Start Flower's processes (SuperLink, SuperNode, ``flwr run``) for this app, by PID.

Shared by ``simskip-server`` (deployment), ``simskip-client`` and ``simskip-sim`` (simulation
runtime of a SuperLink started with ``--simulation``). Flower's own state (``FLWR_HOME``: the
connection file, the SuperLink database, app bundles) lives under the run folder, never in the
home directory; telemetry, update checks and runtime dependency installation are off.

Why not ``flwr run`` against ``:local:``: that starts a detached SuperLink on fixed ports that
keeps running after the run; here every process is started and stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PROJECT_ROOT",
    "FlowerProcessError",
    "TLSFiles",
    "check_run_completed",
    "flower_env",
    "free_port",
    "run_app",
    "start_superlink",
    "start_supernode",
    "stop_process",
    "wait_for_health",
    "write_connection",
]

#: The Flower app: the folder whose pyproject.toml has [tool.flwr.app].
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONNECTION_NAME = "simskip"
#: Status string of a run that ended without error (``flwr ls --format json``).
COMPLETED = "finished:completed"

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
}


class FlowerProcessError(RuntimeError):
    """A Flower process failed to start, died, or the run did not complete."""


@dataclass(frozen=True)
class TLSFiles:
    """Certificates for a TLS SuperLink (all three PEM paths)."""

    ca_certfile: Path
    certfile: Path
    keyfile: Path

    def check(self) -> None:
        """Raise :class:`FlowerProcessError` naming a missing file."""
        for path in (self.ca_certfile, self.certfile, self.keyfile):
            if not Path(path).is_file():
                raise FlowerProcessError(f"certificate file not found: {path}")


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower processes: ``FLWR_HOME`` set, telemetry off.

    The directory of this Python's scripts goes first on ``PATH`` so that the SuperLink finds
    ``flwr-serverapp`` / ``flwr-simulation`` of the same environment.
    """
    env = dict(os.environ)
    env.update(QUIET_ENV)
    env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYSTOW_HOME", str(Path(flwr_home).resolve() / "pystow"))
    if extra:
        env.update(extra)
    return env


def _script(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_superlink(
    flwr_home: Path,
    *,
    host: str = "127.0.0.1",
    port: int,
    insecure: bool = False,
    tls: TLSFiles | None = None,
    simulation: bool = False,
    log_path: Path | None = None,
) -> subprocess.Popen:
    """Start ``flower-superlink`` (Fleet + Control API on one port) and return its process.

    :param flwr_home: Flower's state folder (database ``superlink.db`` goes there).
    :param insecure: plain HTTP; required when ``tls`` is not given.
    :param tls: certificate files for TLS.
    :param simulation: run ClientApps with Flower's simulation runtime (Ray) instead of SuperNodes.
    :param log_path: file receiving the SuperLink's stdout/stderr.
    :raises FlowerProcessError: neither ``insecure`` nor ``tls`` given.
    """
    if not insecure and tls is None:
        raise FlowerProcessError("pass insecure=True or TLS certificate files")
    flwr_home = Path(flwr_home)
    flwr_home.mkdir(parents=True, exist_ok=True)
    command = [
        _script("flower-superlink"),
        "--disable-runtime-dependency-installation",
        "--host", host,
        "--port", str(port),
        "--database", str(flwr_home / "superlink.db"),
    ]
    if insecure:
        command.append("--insecure")
    else:
        tls.check()
        command += ["--ssl-ca-certfile", str(tls.ca_certfile), "--ssl-certfile", str(tls.certfile),
                    "--ssl-keyfile", str(tls.keyfile)]
    if simulation:
        command.append("--simulation")
    return _popen(command, flwr_home, log_path)


def start_supernode(
    flwr_home: Path,
    *,
    superlink: str,
    node_config: Mapping[str, Any],
    clientappio_port: int,
    insecure: bool = False,
    root_certificates: Path | None = None,
    log_path: Path | None = None,
) -> subprocess.Popen:
    """Start ``flower-supernode`` for one party and return its process.

    :param superlink: ``HOST:PORT`` of the SuperLink.
    :param node_config: e.g. ``{"data-dir": "/data/0", "partition-id": 0}``.
    :param clientappio_port: the SuperNode's own local port (one per SuperNode on a host).
    :param root_certificates: CA certificate to verify a TLS SuperLink.
    """
    if not insecure and root_certificates is None:
        raise FlowerProcessError("pass insecure=True or root certificates")
    command = [
        _script("flower-supernode"),
        "--superlink", superlink,
        "--port", str(clientappio_port),
        "--node-config", format_node_config(node_config),
        "--max-retries", "60",
        "--max-wait-time", "600",
    ]
    if insecure:
        command.append("--insecure")
    else:
        if not Path(root_certificates).is_file():
            raise FlowerProcessError(f"root certificate file not found: {root_certificates}")
        command += ["--root-certificates", str(root_certificates)]
    return _popen(command, Path(flwr_home), log_path)


def format_node_config(node_config: Mapping[str, Any]) -> str:
    """``{"data-dir": "/x", "partition-id": 0}`` -> ``data-dir="/x" partition-id=0`` (TOML values)."""
    parts = []
    for key, value in node_config.items():
        if isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            parts.append(f"{key}={value}")
        else:
            parts.append(f"{key}={json.dumps(str(value))}")
    return " ".join(parts)


def _popen(command: Sequence[str], flwr_home: Path, log_path: Path | None) -> subprocess.Popen:
    flwr_home.mkdir(parents=True, exist_ok=True)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    else:
        out = subprocess.DEVNULL
    try:
        # A new session: the process and its children (ServerApp, ClientApps, Ray) share one
        # process group that stop_process can signal as a whole.
        return subprocess.Popen(
            list(command), env=flower_env(flwr_home), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(flwr_home),
        )
    finally:
        if log_path is not None:
            out.close()


def stop_process(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """Stop ``proc`` and its process group (SIGTERM, then SIGKILL after ``timeout``)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)
    # Children that outlived the leader (e.g. a ServerApp subprocess) share its group id.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for_health(host: str, port: int, proc: subprocess.Popen, timeout: float = 60.0, tls: bool = False) -> None:
    """Wait until the SuperLink answers on ``host:port`` (TCP accept), or raise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FlowerProcessError(f"flower-superlink exited with code {proc.returncode} during start-up")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.3)
    raise FlowerProcessError(f"flower-superlink did not listen on {host}:{port} within {timeout:.0f} s")


def write_connection(
    flwr_home: Path, address: str, *, insecure: bool, root_certificates: Path | None = None,
    name: str = CONNECTION_NAME,
) -> str:
    """Write ``$FLWR_HOME/config.toml`` with one SuperLink connection and return its name.

    Kept out of the committed pyproject.toml: ``flwr run`` rewrites a pyproject holding
    federations, and each run has its own address.
    """
    import tomli_w

    connection: dict[str, Any] = {"address": address}
    if insecure:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(Path(root_certificates).resolve())
    payload = {"superlink": {"default": name, name: connection}}
    path = Path(flwr_home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(payload))
    return name


def _flwr(args: Sequence[str], flwr_home: Path, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run([_script("flwr"), *args], env=flower_env(flwr_home), cwd=str(PROJECT_ROOT), **kwargs)


def run_app(
    flwr_home: Path,
    run_config: Mapping[str, Any],
    *,
    connection: str = CONNECTION_NAME,
    federation_config: Mapping[str, Any] | None = None,
    superlink: subprocess.Popen | None = None,
    log_path: Path | None = None,
) -> tuple[int, str]:
    """Submit this app with ``flwr run --stream``, wait for its end, return ``(run_id, status)``.

    ``flwr run`` exits 0 even when the ServerApp raised, so the final status is read back with
    ``flwr ls --format json``; only ``finished:completed`` means success.

    :param run_config: overrides of ``[tool.flwr.app.config]`` (written to a TOML file).
    :param federation_config: simulation options (``num-supernodes``, ``client-resources-num-cpus``...).
    :param superlink: the SuperLink process, to fail fast when it dies.
    :param log_path: where the streamed run log is copied (it is also printed).
    :raises FlowerProcessError: the submission failed or the SuperLink died.
    """
    import tomli_w

    overrides = Path(flwr_home) / "run_config.toml"
    overrides.write_text(tomli_w.dumps(dict(run_config)))
    args = ["run", str(PROJECT_ROOT), connection, "--run-config", str(overrides), "--stream"]
    if federation_config:
        args += ["--federation-config", " ".join(f"{k}={_toml_value(v)}" for k, v in federation_config.items())]
    proc = subprocess.Popen(
        [_script("flwr"), *args], env=flower_env(flwr_home), cwd=str(PROJECT_ROOT),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )
    log_file = open(log_path, "a") if log_path is not None else None  # noqa: SIM115
    run_id = None
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if log_file is not None:
                log_file.write(line)
                log_file.flush()
            if run_id is None and "run " in line.lower():
                run_id = _parse_run_id(line)
            if superlink is not None and superlink.poll() is not None:
                proc.terminate()
                raise FlowerProcessError(f"flower-superlink died (exit code {superlink.returncode})")
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if log_file is not None:
            log_file.close()
    if proc.returncode != 0:
        raise FlowerProcessError(f"flwr run exited with code {proc.returncode}")
    return run_status(flwr_home, connection, run_id)


def check_run_completed(run_id: int, status: str, run_dir: Path) -> None:
    """Raise unless the run ended ``finished:completed`` and wrote ``run_dir/final_metrics.json``.

    :param run_id: / status: as returned by :func:`run_app`.
    :raises FlowerProcessError: naming the status, or the missing file.
    """
    if status != COMPLETED:
        raise FlowerProcessError(f"run {run_id} ended with status {status!r} (see {run_dir / 'logs'})")
    if not (run_dir / "final_metrics.json").is_file():
        raise FlowerProcessError(f"run {run_id} completed but wrote no final_metrics.json in {run_dir}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value))


def _parse_run_id(line: str) -> int | None:
    import re

    match = re.search(r"run(?: id)?[: ]+(\d{6,})", line, flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def run_status(flwr_home: Path, connection: str, run_id: int | None, timeout: float = 60.0) -> tuple[int, str]:
    """``(run_id, status)`` of ``run_id`` (or of the latest run), polling until it is finished."""
    deadline = time.monotonic() + timeout
    while True:
        args = ["ls", connection, "--format", "json"]
        if run_id is not None:
            args += ["--run-id", str(run_id)]
        done = _flwr(args, flwr_home, capture_output=True, text=True)
        try:
            runs = json.loads(done.stdout).get("runs", [])
        except json.JSONDecodeError as err:
            raise FlowerProcessError(f"flwr ls gave no JSON: {done.stdout[-500:]} {done.stderr[-500:]}") from err
        if not runs:
            raise FlowerProcessError(f"flwr ls found no run (run id {run_id})")
        latest = max(runs, key=lambda r: str(r.get("created-at", r.get("run-id", ""))))
        status = str(latest.get("status", ""))
        if status.startswith("finished") or time.monotonic() > deadline:
            return int(latest.get("run-id", run_id or 0)), status
        time.sleep(1.0)
