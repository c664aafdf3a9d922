"""The ``row_view`` hook of simskip_core: a caller-supplied view of each batch row, in the units of
``X``, divided by the trainer's scale, then noise and masking; the default path is untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simskip_core import ROW_VIEW, ConfigError, EmbeddingInputError, SimSkipConfig, SimSkipTrainer, refine
from simskip_core.augment import build_augmentation


def _data(n: int = 40, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * 0.3).astype(np.float32), (rng.normal(size=(n, d)) * 0.3).astype(np.float32)


class _Known:
    """Provider returning rows of a known matrix; records the indices and generators it got."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = torch.as_tensor(matrix)
        self.calls: list[tuple[torch.Tensor, torch.Generator]] = []

    def __call__(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        self.calls.append((index.clone(), generator))
        return self.matrix[index.cpu()]


def test_views_are_the_provider_rows_divided_by_the_scale() -> None:
    x, m = _data()
    provider = _Known(m)
    config = SimSkipConfig(
        augmentations=(ROW_VIEW, "gaussian_noise", "feature_mask"),
        noise_std=0.0,
        mask_prob=0.0,
        batch_size=16,
        epochs=1,
        device="cpu",
    )
    trainer = SimSkipTrainer(6, config)
    seen: list[torch.Tensor] = []
    trainer.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    trainer.fit(x, row_view=provider)
    scale = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    assert trainer.scale == pytest.approx(scale)
    # one encoder call per batch, on the two views stacked; two provider calls per batch
    assert len(seen) == 3 and len(provider.calls) == 6
    for batch, views in enumerate(seen):
        index = provider.calls[2 * batch][0]
        assert torch.equal(index, provider.calls[2 * batch + 1][0])
        expected = torch.as_tensor(m)[index] / scale
        torch.testing.assert_close(views[: len(index)], expected)
        torch.testing.assert_close(views[len(index) :], expected)
    assert all(generator is trainer._augment_generator for _, generator in provider.calls)
    covered = torch.cat([index for index, _ in provider.calls[::2]])
    assert sorted(covered.tolist()) == list(range(len(x)))  # every row once per epoch


def test_noise_and_mask_act_on_the_view() -> None:
    x, m = _data()
    index = torch.arange(10)
    view = build_augmentation(
        (ROW_VIEW, "feature_mask"),
        mask_prob=0.5,
        noise_std=0.0,
        feature_std=torch.ones(6),
        row_view=lambda i, g: torch.as_tensor(m)[i],
        scale=2.0,
    )(torch.as_tensor(x[:10]), torch.Generator().manual_seed(0), index=index)
    kept = view != 0
    assert 0 < kept.sum() < kept.numel()
    torch.testing.assert_close(view[kept], (torch.as_tensor(m[:10]) / 2.0)[kept])


def test_complex_views_use_the_real_pairs_of_x() -> None:
    rng = np.random.default_rng(1)
    xc = (rng.normal(size=(20, 3)) + 1j * rng.normal(size=(20, 3))).astype(np.complex64)
    mc = torch.as_tensor((rng.normal(size=(20, 3)) + 1j * rng.normal(size=(20, 3))).astype(np.complex64))
    real_pairs = torch.view_as_real(mc).reshape(20, 6)
    aug = build_augmentation(
        (ROW_VIEW,), mask_prob=0.0, noise_std=0.0, feature_std=torch.ones(6), row_view=lambda i, g: mc[i]
    )
    out = aug(torch.zeros(4, 6), torch.Generator(), index=torch.tensor([3, 0, 7, 7]))
    torch.testing.assert_close(out, real_pairs[[3, 0, 7, 7]])
    refined = refine(xc, {"augmentations": [ROW_VIEW], "epochs": 1, "batch_size": 8}, row_view=lambda i, g: mc[i])
    assert refined.shape == xc.shape and np.iscomplexobj(refined)


def test_row_view_without_a_provider_fails_naming_the_fix() -> None:
    x, _ = _data()
    trainer = SimSkipTrainer(6, {"augmentations": [ROW_VIEW, "gaussian_noise"], "epochs": 1})
    with pytest.raises(ConfigError, match=r"names 'row_view', but no row-view provider.*fit\(X, row_view=provider\)"):
        trainer.fit(x)
    with pytest.raises(ConfigError, match="does not name 'row_view'"):
        SimSkipTrainer(6, {"epochs": 1}).fit(x, row_view=lambda i, g: torch.zeros(len(i), 6))
    with pytest.raises(ConfigError, match="at most once and first"):
        SimSkipConfig(augmentations=("gaussian_noise", ROW_VIEW))
    with pytest.raises(EmbeddingInputError, match=r"returned shape \(14, 5\) for a batch of shape \(14, 6\)"):
        SimSkipTrainer(6, {"augmentations": [ROW_VIEW], "batch_size": 16}).fit(
            x, epochs=1, row_view=lambda i, g: torch.zeros(len(i), 5)
        )


def test_default_views_do_not_change_with_the_hook() -> None:
    """Without ``row_view`` the views draw exactly as before: a composed augmentation called with
    ``index=`` equals the plain steps called in order on the same generator."""
    x = torch.as_tensor(_data()[0])
    std = x.std(0, unbiased=False)
    composed = build_augmentation(("gaussian_noise", "feature_mask"), mask_prob=0.2, noise_std=0.3, feature_std=std)
    got = composed(x, torch.Generator().manual_seed(5), index=torch.arange(len(x)))
    g = torch.Generator().manual_seed(5)
    noisy = x + torch.randn(x.shape, generator=g) * (0.3 * std)
    expected = noisy * (torch.rand(x.shape, generator=g) >= 0.2)
    assert torch.equal(got, expected)
