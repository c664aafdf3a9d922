"""Start Flower's processes (SuperLink, SuperNode, ``flwr run``) for this app, by PID, and read
what they report (the run's status, the streamed log's console lines).

Checks of TLS and authentication files are in :mod:`client.credentials`; finding and stopping
process trees in :mod:`client.pids`.

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
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from client import pids
from client.console import ANSI_CODES, console_text
from client.credentials import AuthorizedKey, TLSFiles, check_auth_private_key, check_pem_certificate
from client.pids import FlowerProcessError

__all__ = [
    "PROJECT_ROOT",
    "check_run_completed",
    "explain_supernode_exit",
    "flower_env",
    "log_note",
    "register_supernodes",
    "run_app",
    "start_superlink",
    "start_supernode",
    "wait_until_listening",
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
    "RAY_DEDUP_LOGS": "0",  # no "[repeated Nx across cluster]" notes: each forwarded line as printed
}


def register_supernodes(flwr_home: Path, keys: Sequence[AuthorizedKey], connection: str = CONNECTION_NAME) -> list[int]:
    """Register each key with a SuperLink started with ``enable_supernode_auth`` and return the node ids.

    Uses Flower's own ``flwr supernode register KEYFILE CONNECTION`` (Control API), one key at a
    time: that command takes one key file, so each key is written to ``$FLWR_HOME/auth/``.

    :raises FlowerProcessError: naming the key's ``FILE:LINE`` and Flower's answer.
    """
    folder = Path(flwr_home) / "auth"
    folder.mkdir(parents=True, exist_ok=True)
    node_ids = []
    for index, key in enumerate(keys):
        key_file = folder / f"party-{index}.pub"
        key_file.write_text(key.text + "\n")
        args = ["supernode", "register", str(key_file), connection, "--format", "json"]
        if key.comment:
            args += ["--name", key.comment[:64]]
        done = _flwr(args, flwr_home, capture_output=True, text=True)
        try:
            answer = json.loads(done.stdout)
        except json.JSONDecodeError:
            answer = {}
        if done.returncode != 0 or not answer.get("success"):
            detail = (answer.get("error-message") or done.stderr or done.stdout).strip().splitlines()
            raise FlowerProcessError(
                f"could not register the public key of {key.source}: "
                f"{detail[-1] if detail else f'flwr exited with code {done.returncode}'}"
            )
        node_ids.append(int(answer["node-id"]))
    return node_ids


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


def start_superlink(
    flwr_home: Path,
    *,
    host: str = "127.0.0.1",
    port: int,
    insecure: bool = False,
    tls: TLSFiles | None = None,
    simulation: bool = False,
    enable_supernode_auth: bool = False,
    database: Path | None = None,
    log_path: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """Start ``flower-superlink`` (Fleet + Control API on one port) and return its process.

    :param flwr_home: Flower's state folder (database ``superlink.db`` goes there).
    :param insecure: plain HTTP; required when ``tls`` is not given.
    :param tls: certificate files for TLS.
    :param simulation: run ClientApps with Flower's simulation runtime (Ray) instead of SuperNodes.
    :param enable_supernode_auth: only SuperNodes whose public key was registered
        (:func:`register_supernodes`) may connect; Flower requires TLS for it.
    :param database: the SuperLink's state database (runs, registered nodes); default
        ``flwr_home/superlink.db``.
    :param log_path: file receiving the SuperLink's stdout/stderr.
    :param extra_env: environment of the SuperLink and of what it starts (with ``simulation``:
        the ServerApp, Ray and the ClientApps), e.g. :func:`server.sim_resources.numerics_env`.
    :raises FlowerProcessError: neither ``insecure`` nor ``tls`` given, or node authentication
        without TLS.
    :raises CredentialError: a certificate file is missing or malformed.
    """
    if not insecure and tls is None:
        raise FlowerProcessError("pass insecure=True or TLS certificate files")
    if enable_supernode_auth and tls is None:
        raise FlowerProcessError("SuperNode authentication needs TLS (Flower refuses it with --insecure)")
    flwr_home = Path(flwr_home)
    flwr_home.mkdir(parents=True, exist_ok=True)
    command = [
        _script("flower-superlink"),
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(database if database is not None else flwr_home / "superlink.db"),
    ]
    if insecure:
        command.append("--insecure")
    else:
        tls.check()
        command += [
            "--ssl-ca-certfile",
            str(tls.ca_certfile),
            "--ssl-certfile",
            str(tls.certfile),
            "--ssl-keyfile",
            str(tls.keyfile),
        ]
    if simulation:
        command.append("--simulation")
    if enable_supernode_auth:
        command.append("--enable-supernode-auth")
    return _popen(command, flwr_home, log_path, extra_env=extra_env)


def start_supernode(
    flwr_home: Path,
    *,
    superlink: str,
    node_config: Mapping[str, Any],
    clientappio_port: int,
    insecure: bool = False,
    root_certificates: Path | None = None,
    auth_private_key: Path | None = None,
    max_retries: int = 60,
    max_wait_time: float = 600.0,
    log_path: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """Start ``flower-supernode`` for one party and return its process.

    :param superlink: ``HOST:PORT`` of the SuperLink.
    :param node_config: e.g. ``{"data-dir": "/data/0", "partition-id": 0}``.
    :param clientappio_port: the SuperNode's own local port (one per SuperNode on a host).
    :param root_certificates: CA certificate to verify a TLS SuperLink.
    :param auth_private_key: OpenSSH EC private key of this party (SuperNode authentication).
    :param max_retries: / max_wait_time: Flower gives up reconnecting after this many tries or
        seconds (its default is to retry forever). A TLS handshake failure or a refused key
        ends the SuperNode at once.
    :param extra_env: environment for the SuperNode and the ClientApp processes it starts
        (``PATH`` is prepended to the usual one, e.g. the warm-start shim's folder).
    :raises CredentialError: a certificate or key file is missing or malformed.
    """
    if not insecure and root_certificates is None:
        raise FlowerProcessError("pass insecure=True or root certificates")
    command = [
        # Flower's flower-supernode with a 0.2 s instead of 3 s idle poll (client/supernode.py)
        sys.executable,
        "-m",
        "client.supernode",
        "--superlink",
        superlink,
        "--port",
        str(clientappio_port),
        "--node-config",
        format_node_config(node_config),
        "--max-retries",
        str(int(max_retries)),
        "--max-wait-time",
        str(float(max_wait_time)),
    ]
    if insecure:
        command.append("--insecure")
    else:
        check_pem_certificate(Path(root_certificates), "root certificate file (--root-certificates)")
        command += ["--root-certificates", str(root_certificates)]
    if auth_private_key is not None:
        check_auth_private_key(Path(auth_private_key))
        command += ["--auth-supernode-private-key", str(auth_private_key)]
    return _popen(command, Path(flwr_home), log_path, extra_env=extra_env)


def explain_supernode_exit(
    log_text: str,
    *,
    returncode: int,
    server: str,
    root_certificates: Path | None = None,
    auth_private_key: Path | None = None,
    log_path: Path | None = None,
) -> str:
    """One line saying why a SuperNode ended, from the tail of its log.

    :param log_text: the SuperNode's output (its ANSI colours are ignored).
    :param returncode: its exit status.
    :param server: the ``HOST:PORT`` it tried.
    """
    text = ANSI_CODES.sub("", log_text)
    where = f" (log: {log_path})" if log_path is not None else ""
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSL/TLS handshake error" in text:
        reason = re.search(r"certificate verify failed: ([^\n(]+)", text)
        detail = f" ({reason.group(1).strip()})" if reason else ""
        return (
            f"TLS handshake with {server} failed: the server's certificate is not trusted by the CA in "
            f"{root_certificates}{detail}; pass the CA certificate that signed the server's certificate{where}"
        )
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return f"TLS handshake with {server} failed: the server does not speak TLS (started with --insecure?){where}"
    if "[code: 2004]" in text or "Failed to activate SuperNode" in text:
        return (
            f"{server} refused this party: the public key of {auth_private_key} is not registered with the "
            f"server (its operator adds the .pub file to --auth-public-keys){where}"
        )
    if "[code: 2001]" in text:
        return f"{server} requires node authentication: pass --auth-private-key with a registered key{where}"
    if "Giving up reconnection" in text or "Failed to initialize the connection" in text:
        # Flower prints the cause on the line after this one (e.g. "[Errno 111] Connection refused")
        cause = re.search(r"Failed to initialize the connection to the SuperLink\.\s*\n([^\n]+)", text)
        tries = re.search(r"Giving up reconnection after ([0-9.]+ seconds and \d+ tries)", text)
        detail = f": {cause.group(1).strip()}" if cause else ""
        detail += f" (gave up after {tries.group(1)})" if tries else ""
        return f"could not connect to {server}{detail}{where}"
    return f"the SuperNode for {server} exited with code {returncode}{where}"


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


def _popen(
    command: Sequence[str], flwr_home: Path, log_path: Path | None, extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    flwr_home.mkdir(parents=True, exist_ok=True)
    env = flower_env(flwr_home)
    for key, value in (extra_env or {}).items():
        env[key] = value + os.pathsep + env["PATH"] if key == "PATH" else value
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    else:
        out = subprocess.DEVNULL
    try:
        # A new session: the process and its children (ServerApp, ClientApps, Ray) share one
        # process group that stop_process can signal as a whole.
        proc = subprocess.Popen(
            list(command),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(flwr_home),
        )
    finally:
        if log_path is not None:
            out.close()
    proc.log_path = log_path  # named by the error when the process fails (log_note)
    return proc


def log_note(source: subprocess.Popen | Path | None) -> str:
    """`` (log: PATH)`` for a failure message: the log of a process started here, or a path."""
    path = getattr(source, "log_path", None) if isinstance(source, subprocess.Popen) else source
    return f" (log: {path})" if path is not None else ""


def wait_until_listening(host: str, port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """:func:`client.pids.wait_for_health`, its error naming the process's log.

    :raises FlowerProcessError: the process exited, or did not listen within ``timeout`` seconds.
    """
    try:
        pids.wait_for_health(host, port, proc, timeout=timeout)
    except FlowerProcessError as err:
        raise FlowerProcessError(f"{err}{log_note(proc)}") from err


def write_connection(
    flwr_home: Path,
    address: str,
    *,
    insecure: bool,
    root_certificates: Path | None = None,
    name: str = CONNECTION_NAME,
) -> str:
    """Write ``$FLWR_HOME/config.toml`` with one SuperLink connection and return its name.

    Kept out of the committed pyproject.toml: ``flwr run`` rewrites a pyproject holding
    federations, and each run has its own address.
    """
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
    return subprocess.run(
        [_script("flwr"), *args], check=False, env=flower_env(flwr_home), cwd=str(PROJECT_ROOT), **kwargs
    )


def run_app(
    flwr_home: Path,
    run_config: Mapping[str, Any],
    *,
    connection: str = CONNECTION_NAME,
    federation_config: Mapping[str, Any] | None = None,
    superlink: subprocess.Popen | None = None,
    log_path: Path | None = None,
    quiet: bool = False,
) -> tuple[int, str]:
    """Submit this app with ``flwr run --stream``, wait for its end, return ``(run_id, status)``.

    ``flwr run`` exits 0 even when the ServerApp raised, so the final status is read back with
    ``flwr ls --format json``; only ``finished:completed`` means success.

    :param run_config: overrides of ``[tool.flwr.app.config]`` (written to a TOML file).
    :param federation_config: simulation options (``num-supernodes``, ``client-resources-num-cpus``...).
    :param superlink: the SuperLink process, to fail fast when it dies.
    :param log_path: where the streamed run log is copied unchanged (it is also printed, as
        :func:`client.console.console_text` makes it: no Ray prefixes, colours only on a terminal, less
        :data:`CONSOLE_NOISE`; with ``quiet`` only problems and summary lines).
    :raises FlowerProcessError: the submission failed or the SuperLink died.
    """
    overrides = Path(flwr_home) / "run_config.toml"
    overrides.write_text(tomli_w.dumps(dict(run_config)))
    args = ["run", str(PROJECT_ROOT), connection, "--run-config", str(overrides), "--stream"]
    if federation_config:
        args += ["--federation-config", " ".join(f"{k}={_toml_value(v)}" for k, v in federation_config.items())]
    proc = subprocess.Popen(
        [_script("flwr"), *args],
        env=flower_env(flwr_home),
        cwd=str(PROJECT_ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    log_file = open(log_path, "a") if log_path is not None else None  # noqa: SIM115
    run_id = None
    try:
        color = sys.stdout.isatty()
        for line in proc.stdout:
            shown = console_text(line, quiet, color)
            if shown is not None:
                sys.stdout.write(shown)
                sys.stdout.flush()
            if log_file is not None:
                log_file.write(line)
                log_file.flush()
            if run_id is None and "run " in line.lower():
                run_id = _parse_run_id(line)
            if superlink is not None and superlink.poll() is not None:
                proc.terminate()
                raise FlowerProcessError(
                    f"flower-superlink died (exit code {superlink.returncode}){log_note(superlink)}"
                )
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if log_file is not None:
            log_file.close()
    if proc.returncode != 0:
        raise FlowerProcessError(f"flwr run exited with code {proc.returncode}{log_note(log_path)}")
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
