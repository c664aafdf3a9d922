"""TLS and node authentication (issue 6, items 6 and 7).

Certificates are made with ``scripts/make_certs.sh`` (openssl) in a temporary folder; the
parties' keys are OpenSSH ECDSA P-384 keys, as ``ssh-keygen -t ecdsa -b 384`` writes them.
Unit tests check the files before any process starts and the one-line explanation of a
SuperNode's exit; the slow test runs a SuperLink with TLS and SuperNode authentication, two
registered parties that train, a party trusting the wrong CA and a party with an unregistered key.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client import credentials, launcher, pids

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MAKE_CERTS = PROJECT_ROOT / "scripts" / "make_certs.sh"


def _make_certs(folder: Path, *hosts: str) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH: cannot make test certificates")
    # 2048-bit keys: a test CA need not be strong, and 4096-bit generation takes seconds each
    subprocess.run(
        ["bash", str(MAKE_CERTS), str(folder), *hosts],
        check=True,
        capture_output=True,
        env={**os.environ, "KEY_BITS": "2048", "DAYS": "2"},
        timeout=120,
    )
    return folder


def _make_node_key(path: Path, comment: str) -> Path:
    """An OpenSSH ECDSA P-384 key pair, as ``ssh-keygen -t ecdsa -b 384 -N '' -f PATH -C COMMENT``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    Path(f"{path}.pub").write_text(public.decode() + f" {comment}\n")
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A good CA + server certificate (SAN 127.0.0.1, localhost), a second unrelated CA, three node keys."""
    root = tmp_path_factory.mktemp("pki")
    good = _make_certs(root / "good", "127.0.0.1", "localhost")
    other = _make_certs(root / "other", "127.0.0.1", "localhost")
    keys = [_make_node_key(root / f"party{k}", f"party{k}") for k in range(3)]
    return {"good": good, "other": other, "keys": keys, "root": root}


def _tls(folder: Path, ca: Path | None = None) -> credentials.TLSFiles:
    return credentials.TLSFiles(ca or folder / "ca.crt", folder / "server.crt", folder / "server.key")


# --- certificate files are checked before anything starts -------------------------------------


def test_make_certs_names_the_hosts_and_signs_with_the_ca(pki):
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((pki["good"] / "server.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((pki["good"] / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)  # raises when the CA did not sign it
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    _tls(pki["good"]).check(host="127.0.0.1")
    _tls(pki["good"]).check(host="localhost")


def test_a_certificate_from_another_ca_is_refused_even_under_the_same_name(pki):
    # make_certs.sh gives both CAs the same subject: only the signature tells them apart
    with pytest.raises(credentials.CredentialError, match="not signed by the CA of .*other/ca.crt"):
        _tls(pki["good"], ca=pki["other"] / "ca.crt").check()


def test_a_key_of_another_certificate_is_refused(pki):
    files = credentials.TLSFiles(pki["good"] / "ca.crt", pki["good"] / "server.crt", pki["other"] / "server.key")
    with pytest.raises(credentials.CredentialError, match="does not belong to the certificate"):
        files.check()


def test_a_host_missing_from_the_certificate_is_named(pki):
    with pytest.raises(credentials.CredentialError, match=r"does not name 10\.9\.8\.7 .*127\.0\.0\.1"):
        _tls(pki["good"]).check(host="10.9.8.7")


@pytest.mark.parametrize("which", ["ca.crt", "server.crt", "server.key"])
def test_missing_or_malformed_files_are_named(pki, tmp_path, which):
    folder = tmp_path / "certs"
    shutil.copytree(pki["good"], folder)
    (folder / which).unlink()
    with pytest.raises(credentials.CredentialError, match=f"not found: .*{which}"):
        _tls(folder).check()
    (folder / which).write_text("-----BEGIN SOMETHING-----\nnot base64 at all\n")
    with pytest.raises(credentials.CredentialError, match=f"{which} is not a .*PEM"):
        _tls(folder).check()


def test_server_without_certificates_or_insecure_refuses_to_start(tmp_path, capsys):
    from server.cli import main

    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["--run-dir", str(run_dir), "--port", "1"])
    assert exit_info.value.code == 2
    assert "pass --insecure, or all of --ssl-ca-certfile" in capsys.readouterr().err
    assert not run_dir.exists(), "nothing may start before the certificates are checked"


def test_server_names_a_missing_certificate_and_exits_2(pki, tmp_path, capsys):
    from server.cli import main

    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:  # refused while the options are checked
        main(
            [
                "--run-dir",
                str(run_dir),
                "--port",
                "1",
                "--ssl-ca-certfile",
                str(tmp_path / "nope.crt"),
                "--ssl-certfile",
                str(pki["good"] / "server.crt"),
                "--ssl-keyfile",
                str(pki["good"] / "server.key"),
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "nope.crt" in err and "not found" in err
    assert not run_dir.exists()


def test_node_authentication_needs_tls(tmp_path, pki, capsys):
    from server.cli import main

    keys = tmp_path / "parties.pub"
    keys.write_text(Path(f"{pki['keys'][0]}.pub").read_text())
    with pytest.raises(SystemExit) as exit_info:
        main(["--run-dir", str(tmp_path / "run"), "--insecure", "--auth-public-keys", str(keys)])
    assert exit_info.value.code == 2 and "needs TLS" in capsys.readouterr().err
    with pytest.raises(pids.FlowerProcessError, match="needs TLS"):
        launcher.start_superlink(tmp_path, port=1, insecure=True, enable_supernode_auth=True)


def test_client_names_a_bad_root_certificate_or_key_before_connecting(pki, tmp_path, capsys):
    from client.cli import main

    data = tmp_path / "unused"  # the credentials are checked first: no data folder is read
    with pytest.raises(SystemExit) as exit_info:  # refused while the options are checked (exit 2)
        main(["--server", "127.0.0.1:1", "--data", str(data), "--root-certificates", str(tmp_path / "ca.crt")])
    assert exit_info.value.code == 2
    assert "root certificate file (--root-certificates)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--server",
                "127.0.0.1:1",
                "--data",
                str(data),
                "--root-certificates",
                str(pki["good"] / "ca.crt"),
                "--auth-private-key",
                f"{pki['keys'][0]}.pub",
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "party0.pub is not an unencrypted OpenSSH private key" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["--server", "h:1", "--data", str(data), "--insecure", "--auth-private-key", str(pki["keys"][0])])
    assert exit_info.value.code == 2


# --- the parties' public keys -------------------------------------------------------------------


def test_authorized_keys_are_read_one_per_line_with_comments(pki, tmp_path):
    lines = ["# parties of the federation", ""] + [Path(f"{k}.pub").read_text().strip() for k in pki["keys"][:2]]
    path = tmp_path / "parties.pub"
    path.write_text("\n".join(lines) + "\n")
    keys = credentials.read_authorized_keys(path)
    assert [k.comment for k in keys] == ["party0", "party1"]
    assert [k.source for k in keys] == [f"{path}:3", f"{path}:4"]
    assert keys[0].text == lines[2]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG1hbGZvcm1lZA== x", "not an OpenSSH public key"),
        ("ecdsa-sha2-nistp384 AAAA!!!", "not an OpenSSH public key"),
        ("DUPLICATE", "the same key as .*:1"),
    ],
)
def test_malformed_or_duplicated_keys_name_file_and_line(pki, tmp_path, bad_line, message):
    first = Path(f"{pki['keys'][0]}.pub").read_text().strip()
    path = tmp_path / "parties.pub"
    path.write_text(first + "\n" + (first if bad_line == "DUPLICATE" else bad_line) + "\n")
    with pytest.raises(credentials.CredentialError, match=f"parties.pub:2: {message}"):
        credentials.read_authorized_keys(path)


def test_an_rsa_key_is_refused_because_flower_needs_ec(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "rsa"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    with pytest.raises(credentials.CredentialError, match="Flower needs an EC key"):
        credentials.check_auth_private_key(path)
    pub = tmp_path / "rsa.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    with pytest.raises(credentials.CredentialError, match="rsa.pub:1: .*Flower needs an EC key"):
        credentials.read_authorized_keys(pub)


# --- why a SuperNode ended: from Flower 1.42's own messages ----------------------------------

# what flower-supernode 1.42 logged in probes here (ANSI colours included, as in its log file)
WRONG_CA_LOG = """\x1b[92mINFO \x1b[0m:      Starting Flower SuperNode
\x1b[91mERROR \x1b[0m:     SSL/TLS handshake error detected.
\x1b[91mERROR \x1b[0m:     Exit Code: 305
Failed to initialize the connection to the SuperLink.
[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate (_ssl.c:1006)
The SuperNode could not establish a connection to the SuperLink.
"""
UNREGISTERED_LOG = """\x1b[91mERROR \x1b[0m:     Exit Code: 305
Failed to initialize the connection to the SuperLink.
[code: 2004] Failed to activate SuperNode.
The SuperNode could not establish a connection to the SuperLink.
"""

UNREACHABLE_LOG = """\x1b[93mWARNING \x1b[0m:   Connection attempt failed, retrying in 2.53 seconds
\x1b[93mWARNING \x1b[0m:   Giving up reconnection after 5.03 seconds and 5 tries.
\x1b[91mERROR \x1b[0m:     Exit Code: 305
Failed to initialize the connection to the SuperLink.
[Errno 111] Connection refused
The SuperNode could not establish a connection to the SuperLink.

For more information, visit: <https://flower.ai/docs/framework/1.42/en/ref-exit-codes/305.html>
"""


def test_supernode_exit_is_explained_in_one_line_naming_server_and_file():
    ca, key = Path("/etc/party/ca.crt"), Path("/etc/party/key")
    line = launcher.explain_supernode_exit(WRONG_CA_LOG, returncode=1, server="10.0.0.1:9092", root_certificates=ca)
    assert "\n" not in line and "TLS handshake with 10.0.0.1:9092 failed" in line and str(ca) in line
    assert "unable to get local issuer certificate" in line
    line = launcher.explain_supernode_exit(UNREGISTERED_LOG, returncode=1, server="h:1", auth_private_key=key)
    assert "\n" not in line and "h:1 refused this party" in line and str(key) in line and "not registered" in line
    line = launcher.explain_supernode_exit(UNREACHABLE_LOG, returncode=1, server="h:1")
    assert line == "could not connect to h:1: [Errno 111] Connection refused (gave up after 5.03 seconds and 5 tries)"
    line = launcher.explain_supernode_exit("something else", returncode=7, server="h:1", log_path=Path("/x.log"))
    assert line == "the SuperNode for h:1 exited with code 7 (log: /x.log)"


# --- real processes: TLS + SuperNode authentication -------------------------------------------

TINY = ["embedding-dim=8", "local-epochs=1", "num-negs-per-pos=4", "batch-size=512", "eval-every=1", "simskip-rounds=0"]


def _script(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not in {path} (exit {proc.poll()}):\n{path.read_text(errors='replace')[-3000:]}")


@pytest.mark.slow  # ~1.5-3 minutes on 2 cores: 1 round, a ClientApp process (torch + PyKEEN) per message
@pytest.mark.timeout(600)
def test_tls_and_node_auth_registered_parties_train_and_strangers_are_refused(pki, tmp_path):
    from kg_datasets import load_federated

    data = tmp_path / "data"
    load_federated("Kinships", num_clients=3, partition="relation", seed=0).write(data)
    good, keys = pki["good"], pki["keys"]
    registered = tmp_path / "parties.pub"
    registered.write_text("".join(Path(f"{k}.pub").read_text() for k in keys[:2]))  # party 2 is not registered
    run_dir, port = tmp_path / "run", pids.free_port()
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    server_cmd = [
        _script("simskip-server"),
        "--run-dir",
        str(run_dir),
        "--port",
        str(port),
        "--min-clients",
        "2",
        "--rounds",
        "1",
        "--ssl-ca-certfile",
        str(good / "ca.crt"),
        "--ssl-certfile",
        str(good / "server.crt"),
        "--ssl-keyfile",
        str(good / "server.key"),
        "--auth-public-keys",
        str(registered),
    ]
    for item in TINY:
        server_cmd += ["--set", item]

    def client(name: str, partition: int, ca: Path, key: Path) -> subprocess.Popen:
        cmd = [
            _script("simskip-client"),
            "--server",
            f"127.0.0.1:{port}",
            "--data",
            str(data / str(partition)),
            "--root-certificates",
            str(ca),
            "--auth-private-key",
            str(key),
            "--output-dir",
            str(tmp_path / name),
            "--max-wait-time",
            "60",
        ]
        return subprocess.Popen(
            cmd,
            env=env,
            cwd=tmp_path,
            stdout=open(tmp_path / f"{name}.log", "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    processes: list[subprocess.Popen] = []
    try:
        server = subprocess.Popen(
            server_cmd,
            env=env,
            cwd=tmp_path,
            stdout=open(tmp_path / "server.log", "wb"),  # noqa: SIM115 - the child's log
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(server)
        # the keys are registered before this line: parties may connect from now on
        _wait_for_text(tmp_path / "server.log", "waiting for parties", server, timeout=120)
        assert "2 registered public keys" in (tmp_path / "server.log").read_text()
        wrong_ca = client("wrong-ca", 2, pki["other"] / "ca.crt", keys[2])
        stranger = client("stranger", 2, good / "ca.crt", keys[2])
        processes += [wrong_ca, stranger]
        parties = [client(f"party{k}", k, good / "ca.crt", keys[k]) for k in range(2)]
        processes += parties

        # both refused parties end by themselves, non-zero, with one readable line
        for proc, name in ((wrong_ca, "wrong-ca"), (stranger, "stranger")):
            started = time.monotonic()
            code = proc.wait(timeout=120)
            output = (tmp_path / f"{name}.log").read_text(errors="replace")
            assert code != 0, output
            assert time.monotonic() - started < 120
            errors = [ln for ln in output.splitlines() if ln.startswith("simskip-client: error:")]
            assert len(errors) == 1, output
            if name == "wrong-ca":
                assert f"TLS handshake with 127.0.0.1:{port} failed" in errors[0]
                assert str(pki["other"] / "ca.crt") in errors[0]
            else:
                assert f"127.0.0.1:{port} refused this party" in errors[0] and "not registered" in errors[0]

        assert server.wait(timeout=480) == 0, (tmp_path / "server.log").read_text(errors="replace")[-3000:]
    finally:
        for proc in reversed(processes):  # each stops its own SuperLink/SuperNode on SIGTERM
            pids.stop_process(proc, timeout=30)

    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert set(final["test"]) == {"0", "1"}, "only the registered parties took part"
    assert final["missing_clients"] == [] and final["rounds_run"] == 1
    assert all(0.0 < m["mrr"] <= 1.0 for m in final["test"].values())
    assert all(p.poll() is not None for p in processes)
