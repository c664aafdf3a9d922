"""simskip_core stays pure PyTorch + NumPy (+ tqdm): no Flower, no PyKEEN, nothing else."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import simskip_core

ALLOWED_TOP_LEVEL = {"torch", "numpy", "tqdm", "__future__"}
STDLIB_USED = set(sys.stdlib_module_names)  # any standard-library module; no other third-party one


def test_package_imports_only_torch_numpy_tqdm_and_stdlib() -> None:
    package = Path(simskip_core.__file__).parent
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                found.setdefault(module.split(".")[0], set()).add(path.name)
    foreign = {name: files for name, files in found.items() if name not in ALLOWED_TOP_LEVEL | STDLIB_USED}
    assert not foreign, f"simskip_core imports outside torch/numpy/tqdm/stdlib: {foreign}"
    assert "torch" in found  # the scan does see imports


def test_public_api_is_exported() -> None:
    for name in [
        "SimSkipConfig",
        "SimSkipTrainer",
        "refine",
        "nt_xent_loss",
        "SkipEncoder",
        "FeatureMasking",
        "GaussianNoise",
        "WeightsMismatchError",
        "EmbeddingInputError",
        "ConfigError",
    ]:
        assert name in simskip_core.__all__ and hasattr(simskip_core, name)
