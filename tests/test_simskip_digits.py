"""The paper's claim on real data: refinement does not make a linear probe worse.

scikit-learn's bundled digits (8x8 pixel vectors, standardized on the train split) stand in for
embeddings. With the default config (chosen on a validation split of the TRAIN part, see
``scripts/bench_simskip.py digits-sweep``), SimSkip is fitted on the train rows only, and a
logistic-regression probe's test accuracy on the refined embeddings must not be lower than on the
input by more than 0.5 points.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simskip_core import SimSkipConfig, SimSkipTrainer

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


@pytest.fixture()
def one_thread():
    """Run on one thread: these ops are too small to gain from two, and on a loaded machine
    two OpenMP threads per process lose much time waiting for each other."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def probe_accuracy(Z_train, y_train, Z_test, y_test) -> float:
    return float(LogisticRegression(max_iter=5000).fit(Z_train, y_train).score(Z_test, y_test))


def test_refined_digits_probe_accuracy_not_lower_than_input(one_thread) -> None:
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    scaler = StandardScaler().fit(X_train)
    Z_train, Z_test = scaler.transform(X_train).astype(np.float32), scaler.transform(X_test).astype(np.float32)

    trainer = SimSkipTrainer(Z_train.shape[1], SimSkipConfig(device="cpu"))
    losses = trainer.fit(Z_train)
    assert losses[-1] < losses[0], "contrastive training did not reduce its loss"
    refined_train, refined_test = trainer.transform(Z_train), trainer.transform(Z_test)
    assert np.abs(refined_test - Z_test).max() > 1e-3, "refinement left the embeddings unchanged"

    input_acc = probe_accuracy(Z_train, y_train, Z_test, y_test)
    refined_acc = probe_accuracy(refined_train, y_train, refined_test, y_test)
    assert refined_acc >= input_acc - 0.005, f"refined {refined_acc:.4f} vs input {input_acc:.4f}"
