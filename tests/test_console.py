"""What ``simskip-sim`` prints from the streamed run log (:func:`client.console.console_text`), and
the environment that pins its numerics (:func:`server.sim_resources.numerics_env`).

The fixture is an excerpt of a real quick-start run log (``logs/run.log``, which keeps every line
as Flower streamed it: colour codes, Ray's worker prefixes and deduplication notes).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from client.console import console_line, console_text
from client.launcher import QUIET_ENV
from server.sim_resources import PINNED_KERNELS, numerics_env

RUN_LOG = Path(__file__).parent / "fixtures" / "console" / "quickstart_run_log.txt"


def _console(quiet: bool = False, color: bool = False) -> list[str]:
    lines = RUN_LOG.read_text(encoding="utf-8").splitlines(keepends=True)
    return [shown for line in lines if (shown := console_text(line, quiet, color)) is not None]


def test_the_console_has_no_colour_codes_ray_prefixes_or_dedup_notes_when_not_a_terminal():
    raw = RUN_LOG.read_text(encoding="utf-8")
    assert "\x1b[" in raw and "pid=" in raw and "repeated 2x across cluster" in raw  # what the fixture holds
    shown = "".join(_console())
    assert "\x1b[" not in shown
    assert "pid=" not in shown and "ClientAppActor" not in shown
    assert "repeated" not in shown and "Ray deduplicates" not in shown
    # what stays: Flower's progress, the server's result, and a ClientApp's warning, its text intact
    assert "INFO :      [round 9/30] 0.5s loss" in shown
    assert "INFO :      best round 9; test overall hits@1=0.5214 hits@10=0.9763 hits@3=0.9153 mrr=0.7212\n" in shown
    assert (
        "WARNING :   client 0: no private checkpoint of round <= 3 in /x/clients/0/checkpoint: "
        "starting from a fresh initialisation\n"
    ) in shown
    # forwarded per-client lines lose the prefix and the note, not their text
    assert "INFO :      client 2: as-trained seed 0 unrefined: valid MRR 0.6746, test MRR 0.6926 (standard) " in shown


def test_the_last_progress_line_is_the_last_line_but_for_problems():
    shown = _console()
    last_progress = max(i for i, line in enumerate(shown) if "downstream: 3 of 3 clients done" in line)
    after = shown[last_progress + 1 :]
    assert all("WARNING" in line for line in after), after  # the empty record and actor shutdown notes are gone
    assert not any(line.strip() in ("INFO :", "") for line in shown)


def test_a_terminal_keeps_flowers_colours_but_not_rays_prefix():
    coloured = "".join(_console(color=True))
    assert "\x1b[92mINFO \x1b[0m:      best round 9; test overall" in coloured
    assert "pid=" not in coloured and "\x1b[36m(" not in coloured and "repeated" not in coloured


def test_quiet_keeps_problems_and_the_servers_result_only():
    shown = _console(quiet=True)
    assert [line.split(":", 1)[0].strip() for line in shown] == ["INFO", "WARNING"]
    assert "best round 9; test overall" in shown[0]
    assert "no private checkpoint" in shown[1]
    # a round line names its best round too: not a summary line
    assert not console_line("\x1b[92mINFO \x1b[0m:      [round 3/30] 0.5s loss 0:0.53 (best round 3)\n", quiet=True)


def test_ray_deduplication_is_off_for_flowers_processes():
    assert QUIET_ENV["RAY_DEDUP_LOGS"] == "0"


def test_numerics_are_pinned_to_avx2_paths_and_the_clients_thread_count_on_x86():
    env = numerics_env(2, environ={}, machine="x86_64", has_avx2=True)
    assert env == {"OMP_NUM_THREADS": "2", **PINNED_KERNELS}
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"] == "AVX2"


def test_an_explicit_kernel_choice_wins_but_not_a_shells_thread_count():
    env = numerics_env(
        1, environ={"ATEN_CPU_CAPABILITY": "avx512", "OMP_NUM_THREADS": "8"}, machine="x86_64", has_avx2=True
    )
    assert "ATEN_CPU_CAPABILITY" not in env  # the child inherits the user's own value
    assert env["OMP_NUM_THREADS"] == "1" and env["MKL_CBWR"] == "AVX2"


def test_native_numerics_and_other_architectures_pin_threads_only():
    assert numerics_env(1, environ={"SIMSKIP_NUMERICS": "native"}, machine="x86_64", has_avx2=True) == {
        "OMP_NUM_THREADS": "1"
    }
    assert numerics_env(3, environ={}, machine="aarch64") == {"OMP_NUM_THREADS": "3"}


def test_an_unknown_numerics_choice_is_refused_naming_the_variable():
    with pytest.raises(ValueError, match="SIMSKIP_NUMERICS must be one of pinned, native, got 'fast'"):
        numerics_env(1, environ={"SIMSKIP_NUMERICS": "fast"}, machine="x86_64", has_avx2=True)


def test_no_kernel_pin_without_avx2(tmp_path):
    """A CPU without AVX2 would stop on an illegal instruction in AVX2 kernels: only threads are pinned."""
    from server.sim_resources import cpu_has_avx2

    assert numerics_env(2, environ={}, machine="x86_64", has_avx2=False) == {"OMP_NUM_THREADS": "2"}
    with_avx2 = tmp_path / "cpuinfo-avx2"
    with_avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    without = tmp_path / "cpuinfo-sse"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2x\n")
    assert cpu_has_avx2(with_avx2)
    assert not cpu_has_avx2(without)
    assert not cpu_has_avx2(tmp_path / "missing")
