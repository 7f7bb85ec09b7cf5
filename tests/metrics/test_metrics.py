"""Metrics: the Frechet distance against scipy's sqrtm and closed forms; the digits classifier and
``digit_quality`` on real data and on noise."""

import math

import numpy as np
import pytest
import torch

scipy_linalg = pytest.importorskip("scipy.linalg")

from kuosan.data import load_digits, load_digits_with_labels  # noqa: E402 (after the scipy skip)
from kuosan.judges import DigitClassifier, digit_quality, load_digit_classifier  # noqa: E402
from kuosan.metrics import frechet_distance, frechet_distance_from_features, gaussian_stats  # noqa: E402


def _sqrtm_psd(a):
    return np.real(scipy_linalg.sqrtm(a))


def reference_fd_pytorch_fid(mu1, s1, mu2, s2):
    """pytorch-fid's formula: tr sqrtm(S1 S2) of the non-symmetric product."""
    covmean = np.real(scipy_linalg.sqrtm(s1 @ s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def reference_fd_nuclear(mu1, s1, mu2, s2):
    """tr (S1^1/2 S2 S1^1/2)^1/2 = ||S1^1/2 S2^1/2||_* (sum of singular values), roots by sqrtm."""
    nuclear = np.linalg.svd(_sqrtm_psd(s1) @ _sqrtm_psd(s2), compute_uv=False).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * nuclear)


def _features(rng, n, dim, rank=None, shift=0.0):
    rank = dim if rank is None else rank
    z = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, dim))
    return z + shift * rng.standard_normal(dim)


def test_gaussian_stats_is_mean_and_unbiased_cov():
    x = np.random.default_rng(0).standard_normal((50, 4))
    mu, sigma = gaussian_stats(torch.from_numpy(x).float())
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (4, 4)
    x32 = x.astype(np.float32).astype(np.float64)  # the values the tensor holds
    np.testing.assert_allclose(mu, x32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x32, rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError):
        gaussian_stats(np.zeros((1, 3)))


@pytest.mark.parametrize("dim", [1, 3, 16])
def test_frechet_matches_sqrtm_reference_full_rank(dim):
    rng = np.random.default_rng(dim)
    a, b = _features(rng, 200, dim), _features(rng, 150, dim, shift=0.5)
    stats = (*gaussian_stats(a), *gaussian_stats(b))
    fd = frechet_distance(*stats)
    assert fd == pytest.approx(reference_fd_pytorch_fid(*stats), rel=1e-6)
    assert fd == pytest.approx(reference_fd_nuclear(*stats), rel=1e-6)
    assert frechet_distance_from_features(a, b) == fd


@pytest.mark.parametrize("dim,rank_a,rank_b", [(16, 5, 5), (16, 3, 16), (32, 8, 12), (20, 20, 1)])
def test_frechet_matches_sqrtm_reference_rank_deficient(dim, rank_a, rank_b):
    rng = np.random.default_rng(dim + rank_a + rank_b)
    a = _features(rng, 100, dim, rank=rank_a)
    b = _features(rng, 80, dim, rank=rank_b, shift=0.3)
    stats = (*gaussian_stats(a), *gaussian_stats(b))
    assert np.linalg.matrix_rank(stats[1]) == rank_a and np.linalg.matrix_rank(stats[3]) == rank_b
    fd = frechet_distance(*stats)
    assert math.isfinite(fd)
    assert fd == pytest.approx(reference_fd_nuclear(*stats), rel=1e-6)


def test_frechet_identity_and_symmetry():
    rng = np.random.default_rng(1)
    a, b = _features(rng, 60, 40), _features(rng, 300, 40, rank=7)  # a: N < dim, singular too
    mu_a, s_a = gaussian_stats(a)
    mu_b, s_b = gaussian_stats(b)
    assert frechet_distance(mu_a, s_a, mu_a, s_a) == pytest.approx(0.0, abs=1e-8 * np.trace(s_a))
    assert frechet_distance(mu_b, s_b, mu_b, s_b) == pytest.approx(0.0, abs=1e-8 * np.trace(s_b))
    ab, ba = frechet_distance(mu_a, s_a, mu_b, s_b), frechet_distance(mu_b, s_b, mu_a, s_a)
    assert ab > 0 and ab == pytest.approx(ba, rel=1e-9)


@pytest.mark.parametrize("m1,s1,m2,s2", [(0.0, 1.0, 0.0, 1.0), (1.0, 2.0, -0.5, 0.5), (3.0, 0.0, 1.0, 1.5)])
def test_frechet_1d_closed_form(m1, s1, m2, s2):
    fd = frechet_distance(np.array([m1]), np.array([[s1**2]]), np.array([m2]), np.array([[s2**2]]))
    assert fd == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, abs=1e-12)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


@pytest.fixture(scope="module")
def classifier():
    return load_digit_classifier()


def test_shipped_classifier_is_accurate(classifier):
    x, y = load_digits_with_labels("test")
    assert isinstance(classifier, DigitClassifier) and not classifier.training
    with torch.no_grad():
        logits, feats = classifier(x), classifier.features(x)
    assert logits.shape == (360, 10) and feats.shape == (360, 128)
    assert (logits.argmax(1) == y).float().mean().item() >= 0.95


def test_load_digit_classifier_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="digit classifier weights"):
        load_digit_classifier(tmp_path / "nope.safetensors")


def test_digit_quality_real_vs_noise(classifier):
    test = load_digits("test")
    real = digit_quality(test, classifier=classifier)
    assert set(real) == {"fd", "fd_floor", "confident", "class_hist", "class_entropy", "n"}
    assert real["n"] == 360 and real["confident"] > 0.9
    assert real["fd"] == pytest.approx(0.0, abs=1e-6)  # samples = reference
    assert len(real["class_hist"]) == 10 and sum(real["class_hist"]) == pytest.approx(1.0)
    assert max(abs(p - 0.1) for p in real["class_hist"]) < 0.02
    assert real["class_entropy"] == pytest.approx(math.log(10), abs=0.01)
    assert 0 < real["fd_floor"] < 10

    # train split against the default reference is exactly the floor
    train = digit_quality(load_digits("train"), classifier=classifier)
    assert train["fd"] == pytest.approx(real["fd_floor"], rel=1e-9)

    g = torch.Generator().manual_seed(0)
    noise = digit_quality(3 * torch.randn(400, 1, 8, 8, generator=g), classifier=classifier)  # clamped
    assert noise["n"] == 400
    assert noise["fd"] > 20 * real["fd_floor"]
    assert noise["confident"] < 0.2
