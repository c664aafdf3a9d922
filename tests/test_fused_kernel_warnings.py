"""The fused evaluation kernels raise no deprecated-torch-API warning (torch 2.13).

Their ``torch.compile`` makes Inductor import ``torch.utils.mkldnn``, whose classes call the
deprecated ``torch.jit.script_method`` (see :mod:`client.kge.candidate_scoring`). Each check runs
in a fresh interpreter with ``-W error::DeprecationWarning``: in this test process another test
may already have imported that module, and then no warning could be raised at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: Compiles both fused kernels on tiny CPU tensors and checks that neither fell back to eager
#: (a warning turned into an error inside the compile makes FusedKernel fall back, and say so).
COMPILE_BOTH_KERNELS = """
import torch
from client.kge import candidate_scoring, evaluation
query, candidates = torch.randn(3, 4), torch.randn(9, 4)
scores, true = torch.randn(3, 9), torch.randn(3, 1)
with torch.no_grad():
    assert torch.equal(candidate_scoring.l1_distance(query, candidates), torch.cdist(query, candidates, p=1.0))
    evaluation._count_ranks(scores, true, work=scores.numel())
for kernel in (candidate_scoring._l1_tile, evaluation._count_ranks):
    assert kernel._compiled is not None and not kernel._failed, kernel.function.__name__
print("compiled")
"""


def _python_with_deprecations_as_errors(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SIMSKIP_FUSED_KERNELS": "always"}
    return subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        check=False,
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # a cold Inductor cache on a loaded machine; subprocess.run kills it on timeout
    )


def test_torch_itself_still_warns_on_the_module_inductor_imports():
    # the premise of the filter in candidate_scoring: when this fails, torch no longer warns and
    # candidate_scoring._import_inductor's filter can go
    result = _python_with_deprecations_as_errors("import torch.utils.mkldnn")
    assert result.returncode != 0
    assert "`torch.jit.script_method` is deprecated" in result.stderr


def test_compiling_the_fused_kernels_raises_no_deprecation_warning():
    result = _python_with_deprecations_as_errors(COMPILE_BOTH_KERNELS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "compiled"
    assert "script_method" not in result.stderr


#: Imports Inductor the kernels' way, then checks that the warning filters are as before and that
#: the same warning raised by other code is still an error (-W error::DeprecationWarning).
SCOPED_FILTER = """
import sys, warnings
import torch._inductor.config  # its own imports (sympy) add filters of their own
from client.kge import candidate_scoring
assert candidate_scoring.INDUCTOR_TORCHSCRIPT_MODULE not in sys.modules
before = list(warnings.filters)
candidate_scoring._import_inductor()
assert candidate_scoring.INDUCTOR_TORCHSCRIPT_MODULE in sys.modules
assert warnings.filters == before, "the filter outlived the import"
try:
    warnings.warn("`torch.jit.script_method` is deprecated. (raised by other code)", DeprecationWarning)
except DeprecationWarning:
    print("still shown")
"""


def test_the_warning_filter_is_scoped_to_that_import():
    result = _python_with_deprecations_as_errors(SCOPED_FILTER)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "still shown"


#: The L1 kernel on a Fed3-sized tile, compared with cdist; prints the Inductor cache folder used.
L1_AGAINST_CDIST = """
import os, torch
from client.kge import candidate_scoring
torch.manual_seed(0)
query, candidates = torch.randn(64, 128), torch.randn(2100, 128)
with torch.no_grad():
    got = candidate_scoring.l1_distance(query, candidates)
assert not candidate_scoring._l1_tile._failed, "the compiled kernel was dropped"
assert torch.equal(got, torch.cdist(query, candidates, p=1.0)), float((got - torch.cdist(query, candidates, p=1.0)).abs().max())
print(os.environ[candidate_scoring.INDUCTOR_CACHE_ENV])
"""


def test_processes_of_different_cpu_capabilities_share_an_inductor_cache_folder_safely(tmp_path):
    """A native process and one under ATEN_CPU_CAPABILITY=avx2 (simskip-sim pins it), given the same
    TORCHINDUCTOR_CACHE_DIR, each compile into their capability's own subfolder and get cdist's values.
    Without the per-capability folder the second loaded the first's kernel (L1 distances ~1e36, or a
    corrupted heap the other way round)."""
    folders = []
    for capability in ({}, {"ATEN_CPU_CAPABILITY": "avx2"}, {}):
        env = {**os.environ, "SIMSKIP_FUSED_KERNELS": "always", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), **capability}
        result = subprocess.run(
            [sys.executable, "-c", L1_AGAINST_CDIST],
            check=False,
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        folders.append(result.stdout.strip())
    assert all(Path(folder).parent == tmp_path for folder in folders)
    assert folders[0] == folders[2] and Path(folders[1]).name == "isa-avx2"
