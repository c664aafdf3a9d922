"""The process helpers behind simskip-server / simskip-client / simskip-sim (no Flower process
started; only short-lived Python stand-ins, each stopped by PID)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib

import psutil
import pytest

from client import credentials, launcher, pids


def test_node_config_is_formatted_as_toml_values():
    text = launcher.format_node_config({"data-dir": "/data/my party", "partition-id": 2, "flag": True})
    assert text == 'data-dir="/data/my party" partition-id=2 flag=true'


def test_connection_file_lives_in_flwr_home_and_names_the_address(tmp_path):
    name = launcher.write_connection(tmp_path, "127.0.0.1:9999", insecure=True)
    config = tomllib.loads((tmp_path / "config.toml").read_text())
    assert config["superlink"]["default"] == name
    assert config["superlink"][name] == {"address": "127.0.0.1:9999", "insecure": True}
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    launcher.write_connection(tmp_path, "h:1", insecure=False, root_certificates=ca)
    secure = tomllib.loads((tmp_path / "config.toml").read_text())["superlink"][name]
    assert secure == {"address": "h:1", "root-certificates": str(ca.resolve())}


def test_environment_turns_telemetry_off_and_keeps_flower_home_local(tmp_path):
    env = launcher.flower_env(tmp_path)
    assert env["FLWR_HOME"] == str(tmp_path.resolve())
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"


def test_superlink_needs_insecure_or_certificates(tmp_path):
    with pytest.raises(pids.FlowerProcessError, match="insecure"):
        launcher.start_superlink(tmp_path, port=1)
    with pytest.raises(pids.FlowerProcessError, match="not found"):
        launcher.start_superlink(
            tmp_path, port=1, tls=credentials.TLSFiles(tmp_path / "a", tmp_path / "b", tmp_path / "c")
        )
    with pytest.raises(credentials.CredentialError, match="not found: .*/a"):
        launcher.start_superlink(
            tmp_path, port=1, tls=credentials.TLSFiles(tmp_path / "a", tmp_path / "b", tmp_path / "c")
        )


def test_stop_process_ends_the_process_group(tmp_path):
    # a parent that starts a child in its own group: both must be gone afterwards
    code = "import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        pids.stop_process(proc, timeout=5)
        assert proc.poll() is not None
        alive = subprocess.run(
            ["pgrep", "-g", str(proc.pid)], check=False, capture_output=True, text=True
        ).stdout.split()
        assert alive == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, ended but not yet reaped, is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_stop_process_also_ends_descendants_in_another_session(tmp_path):
    # Flower's SuperLink starts its SuperExec with start_new_session=True, and the SuperExec starts
    # the ServerApp: a process-group signal misses both, stop_process must find them by PID
    marker = tmp_path / "grandchild.pid"
    code = (
        "import subprocess,sys,time; "
        "p=subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)'], start_new_session=True); "
        f"open({str(marker)!r},'w').write(str(p.pid)); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    grandchild = None
    try:
        deadline = time.monotonic() + 20
        while not marker.exists() or not marker.read_text():
            assert time.monotonic() < deadline, "the stand-in never started its child"
            time.sleep(0.05)
        grandchild = int(marker.read_text())
        assert [pid for pid, _ in pids.process_tree(proc.pid)] == [grandchild]
        assert os.getpgid(grandchild) != os.getpgid(proc.pid), "the child runs in another process group"
        pids.stop_process(proc, timeout=5)
        assert proc.poll() is not None
        deadline = time.monotonic() + 30  # re-parented to init, which reaps it
        while _running(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(grandchild)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if grandchild is not None and _running(grandchild):
            os.kill(grandchild, 9)


def test_process_tree_tells_a_reused_pid_from_the_original():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ((pid, start),) = [(p, s) for p, s in pids.process_tree(os.getpid()) if p == proc.pid]
        assert pids._alive(pid, start)
        assert not pids._alive(pid, psutil.Process(os.getpid())), "another process under the PID: not it"
    finally:
        proc.kill()
        proc.wait()
    assert not pids._alive(pid, start)


def test_supernode_command_carries_tls_auth_key_and_retry_bounds(tmp_path, monkeypatch, pki_files):
    captured = {}
    monkeypatch.setattr(
        launcher, "_popen", lambda command, home, log, extra_env=None: captured.setdefault("command", command)
    )
    launcher.start_supernode(
        tmp_path,
        superlink="h:1",
        node_config={"partition-id": 0},
        clientappio_port=5,
        root_certificates=pki_files["ca"],
        auth_private_key=pki_files["key"],
        max_retries=3,
        max_wait_time=30,
    )
    command = captured["command"]
    assert command[command.index("--root-certificates") + 1] == str(pki_files["ca"])
    assert command[command.index("--auth-supernode-private-key") + 1] == str(pki_files["key"])
    assert (
        command[command.index("--max-retries") + 1] == "3" and command[command.index("--max-wait-time") + 1] == "30.0"
    )
    assert "--insecure" not in command
    with pytest.raises(credentials.CredentialError, match="not a PEM certificate"):
        launcher.start_supernode(
            tmp_path, superlink="h:1", node_config={}, clientappio_port=5, root_certificates=pki_files["key"]
        )


@pytest.fixture
def pki_files(tmp_path):
    """A self-signed certificate and an OpenSSH EC key made with ``cryptography`` (no openssl needed)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    ca = tmp_path / "ca.crt"
    ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    node_key = tmp_path / "node"
    node_key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    return {"ca": ca, "key": node_key}
