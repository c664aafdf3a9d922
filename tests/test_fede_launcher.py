"""The process helpers behind simskip-server / simskip-client / simskip-sim (no process started
except one short-lived stand-in that is stopped by PID)."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from server import launcher


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
    with pytest.raises(launcher.FlowerProcessError, match="insecure"):
        launcher.start_superlink(tmp_path, port=1)
    with pytest.raises(launcher.FlowerProcessError, match="not found"):
        launcher.start_superlink(tmp_path, port=1, tls=launcher.TLSFiles(tmp_path / "a", tmp_path / "b", tmp_path / "c"))


def test_stop_process_ends_the_process_group(tmp_path):
    # a parent that starts a child in its own group: both must be gone afterwards
    code = "import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        launcher.stop_process(proc, timeout=5)
        assert proc.poll() is not None
        alive = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert alive == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
