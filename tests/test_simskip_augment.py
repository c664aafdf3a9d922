"""Augmentations: masking rate, scale-relative noise, composition order, reproducibility."""

from __future__ import annotations

import pytest
import torch

from simskip_core import FeatureMasking, GaussianNoise, build_augmentation


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_masking_zeroes_about_p_of_the_coordinates_and_keeps_the_rest() -> None:
    x = torch.rand(2000, 50) + 1.0  # no zeros to begin with
    out = FeatureMasking(0.3)(x, gen())
    zero_fraction = (out == 0).float().mean().item()
    assert zero_fraction == pytest.approx(0.3, abs=0.01)
    kept = out != 0
    assert torch.equal(out[kept], x[kept])


def test_noise_is_relative_to_per_feature_std() -> None:
    x = torch.randn(4000, 3) * torch.tensor([1.0, 10.0, 0.0])
    std = x.std(dim=0, unbiased=False)
    noise = GaussianNoise(0.2, std)(x, gen()) - x
    measured = noise.std(dim=0)
    assert measured[0].item() == pytest.approx(0.2, rel=0.08)
    assert measured[1].item() == pytest.approx(2.0, rel=0.08)
    assert measured[2].item() == 0.0  # a constant feature gets no noise


def test_views_are_scale_equivariant() -> None:
    """Scaling X scales its views: the augmentation does not depend on the embeddings' scale."""
    x = torch.randn(100, 8)
    names = ("gaussian_noise", "feature_mask")
    small = build_augmentation(names, mask_prob=0.2, noise_std=0.3, feature_std=x.std(0, unbiased=False))(x, gen(1))
    big_x = 1000 * x
    big = build_augmentation(names, mask_prob=0.2, noise_std=0.3, feature_std=big_x.std(0, unbiased=False))(
        big_x, gen(1)
    )
    torch.testing.assert_close(big, 1000 * small, rtol=1e-4, atol=1e-3)


def test_composition_order_matters_and_mask_last_leaves_exact_zeros() -> None:
    x = torch.randn(500, 10)
    std = x.std(0, unbiased=False)
    noise_then_mask = build_augmentation(
        ("gaussian_noise", "feature_mask"), mask_prob=0.5, noise_std=1.0, feature_std=std
    )(x, gen())
    mask_then_noise = build_augmentation(
        ("feature_mask", "gaussian_noise"), mask_prob=0.5, noise_std=1.0, feature_std=std
    )(x, gen())
    assert (noise_then_mask == 0).float().mean() > 0.4
    assert (mask_then_noise == 0).float().mean() < 0.01


def test_same_generator_seed_same_view_and_empty_list_is_identity() -> None:
    x = torch.randn(20, 4)
    aug = build_augmentation(
        ("gaussian_noise", "feature_mask"), mask_prob=0.2, noise_std=0.1, feature_std=torch.ones(4)
    )
    assert torch.equal(aug(x, gen(3)), aug(x, gen(3)))
    assert not torch.equal(aug(x, gen(3)), aug(x, gen(4)))
    assert torch.equal(build_augmentation((), mask_prob=0.2, noise_std=0.1, feature_std=torch.ones(4))(x, gen()), x)


def test_unknown_augmentation_name() -> None:
    with pytest.raises(KeyError, match="rotate"):
        build_augmentation(("rotate",), mask_prob=0.1, noise_std=0.1, feature_std=torch.ones(2))
