"""FID-style metrics as numbers to trust: the Frechet distance against scipy's sqrtm, KID against the
closed-form unbiased estimator, precision/recall against brute force, the Inception path end to end
on a randomly initialised network saved to a file, resize policies against their references, cached
statistics without pickle, the Inception-Score-style figure, the memorisation check, `kuosan eval`."""

import json
import math

import numpy as np
import pytest
import torch

scipy_linalg = pytest.importorskip("scipy.linalg")

from cli_helpers import kuosan  # noqa: E402
from kuosan.data import load_digits  # noqa: E402
from kuosan.judges.digits import DigitsFeatureExtractor  # noqa: E402
from kuosan.metrics import frechet_distance, gaussian_stats  # noqa: E402
from kuosan.metrics.fid import fid, load_stats, reference_stats, save_stats  # noqa: E402
from kuosan.metrics.inception import (  # noqa: E402
    FIDInceptionV3,
    InceptionFeatureExtractor,
    load_fid_inception,
    preprocess,
    resize_tf1_bilinear,
)
from kuosan.metrics.inception_score import inception_score_from_probs  # noqa: E402
from kuosan.metrics.kid import kid, mmd2_unbiased, polynomial_kernel  # noqa: E402
from kuosan.metrics.memorization import memorization_report  # noqa: E402
from kuosan.metrics.precision_recall import precision_recall  # noqa: E402


def _sqrtm_fd(mu1, s1, mu2, s2):
    """The textbook formula with scipy's sqrtm of the symmetric form (real part; exact PSD math)."""
    r1 = np.real(scipy_linalg.sqrtm(s1))
    covmean = np.real(scipy_linalg.sqrtm(r1 @ s2 @ r1))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("seed", range(12))
def test_frechet_matches_sqrtm_on_random_rank_deficient_inputs(seed):
    rng = np.random.default_rng(100 + seed)
    dim = int(rng.integers(2, 48))
    stats = []
    for _ in range(2):
        rank = int(rng.integers(1, dim + 1))
        n = int(rng.integers(max(rank + 1, 3), 3 * dim + 4))
        f = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, dim)) * rng.uniform(0.1, 10)
        stats += list(gaussian_stats(f + rng.standard_normal(dim)))
    assert frechet_distance(*stats) == pytest.approx(_sqrtm_fd(*stats), rel=1e-6, abs=1e-9 * np.trace(stats[1]))


def test_kid_matches_closed_form_unbiased_estimator():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((30, 5)) + 0.3
    k = lambda a, b: (a @ b / 5 + 1) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    closed = xx + yy - 2 * xy
    kxx, kxy, kyy = polynomial_kernel(x, x), polynomial_kernel(x, y), polynomial_kernel(y, y)
    assert mmd2_unbiased(kxx, kxy, kyy) == pytest.approx(closed, rel=1e-12)
    # one subset of everything is the full estimator (rows permuted: the estimator is symmetric)
    out = kid(x, y, subsets=1, subset_size=1000)
    assert out["subset_size"] == 30 and out["kid"] == pytest.approx(closed, rel=1e-10)


def test_kid_is_unbiased_and_torch_fidelity_shaped():
    rng = np.random.default_rng(1)
    same_a, same_b = rng.standard_normal((400, 8)), rng.standard_normal((400, 8))
    out = kid(same_a, same_b, subsets=50, subset_size=100)
    biased = []
    for _ in range(50):  # the biased V-statistic of the same subsets is positive on average
        a, b = same_a[rng.choice(400, 100, False)], same_b[rng.choice(400, 100, False)]
        kaa, kbb, kab = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
        biased.append(kaa.mean() + kbb.mean() - 2 * kab.mean())
    assert abs(out["kid"]) < 3 * out["kid_std"] / math.sqrt(50) + 1e-3 < np.mean(biased)
    far = kid(same_a, same_b + 2.0, subsets=10, subset_size=100)
    assert far["kid"] > 100 * abs(out["kid"])
    assert set(out) == {"kid", "kid_std", "subset_size", "subsets"}


def _brute_pr(real, fake, k):
    def radii(s):
        return np.array([np.sort(np.linalg.norm(s - p, axis=1))[k] for p in s])

    def cover(q, s, r):
        return np.mean([any(np.linalg.norm(p - s[j]) <= r[j] for j in range(len(s))) for p in q])

    return cover(fake, real, radii(real)), cover(real, fake, radii(fake))


def test_precision_recall_match_brute_force():
    rng = np.random.default_rng(2)
    real, fake = rng.standard_normal((60, 3)), rng.standard_normal((50, 3)) * 0.5 + 0.7
    out = precision_recall(real, fake, k=3)
    p, r = _brute_pr(real, fake, 3)
    assert out["precision"] == pytest.approx(p) and out["recall"] == pytest.approx(r)
    assert r < 0.9  # the narrow generated set misses part of the real manifold
    same = precision_recall(real, real)
    assert same["precision"] == same["recall"] == 1.0
    apart = precision_recall(real, fake + 100)
    assert apart == {"precision": 0.0, "recall": 0.0, "f_score": 0.0}


def test_inception_score_limits():
    onehot = np.eye(10)[np.arange(1000) % 10]
    assert inception_score_from_probs(onehot)["is"] == pytest.approx(10.0)
    assert inception_score_from_probs(np.tile(onehot[:1], (1000, 1)))["is"] == pytest.approx(1.0)
    uniform = np.full((1000, 10), 0.1)
    assert inception_score_from_probs(uniform)["is"] == pytest.approx(1.0)


def test_memorization_detects_copies():
    train, test = load_digits("train"), load_digits("test")
    copies = memorization_report(train[:200], train, test)
    assert copies["copy_fraction"] == 1.0 and copies["nn_dist_median"] == 0.0 and copies["nn_dist_ratio"] == 0.0
    fresh = memorization_report(test, train, test)
    assert fresh["nn_dist_ratio"] == 1.0 and fresh["copy_fraction"] == fresh["heldout_copy_fraction"] < 0.1
    noisy = memorization_report((train[:200] + 0.5 * torch.randn(200, 1, 8, 8)).clamp(-1, 1), train, test)
    assert noisy["copy_fraction"] < 0.5 and noisy["below_heldout_p05"] < 0.5


def _tf1_reference(x, size):
    """torch-fidelity's interpolate_bilinear_2d_like_tensorflow1x ('slow' method), transcribed."""

    def axis(n_in):
        g = torch.arange(size, dtype=torch.float64) * (n_in / size)
        lo = g.long()
        return lo, (lo + 1).clamp(max=n_in - 1), g - lo

    ylo, yhi, dy = axis(x.shape[2])
    xlo, xhi, dx = axis(x.shape[3])
    a, b = x[:, :, ylo][:, :, :, xlo], x[:, :, ylo][:, :, :, xhi]
    c, d = x[:, :, yhi][:, :, :, xlo], x[:, :, yhi][:, :, :, xhi]
    top, bot = a + (b - a) * dx, c + (d - c) * dx
    return top + (bot - top) * dy[:, None]


def test_resize_policies_match_their_references():
    from PIL import Image

    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 255
    torch.testing.assert_close(resize_tf1_bilinear(x, 299), _tf1_reference(x, 299), rtol=0, atol=1e-9)
    # clean-fid: PIL bicubic on float ('F') images, then clipped to [0, 255]
    img = torch.rand(1, 1, 8, 8) * 2 - 1
    ours = preprocess(img, "clean-bicubic")[0, 0].double() * 128 + 128
    q = ((img[0, 0].double() + 1) * 127.5).round().numpy().astype(np.float32)
    pil = np.asarray(Image.fromarray(q, mode="F").resize((299, 299), Image.BICUBIC)).clip(0, 255)
    assert np.abs(ours.numpy() - pil).max() < 0.05  # grey levels out of 255
    bilinear = preprocess(img, "torch-bilinear")
    assert bilinear.shape == (1, 3, 299, 299) and bilinear.min() >= -1 and bilinear.max() <= 1


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    torch.manual_seed(0)
    net = FIDInceptionV3()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, as in trained weights
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    d = tmp_path_factory.mktemp("inception")
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(d / "fid_inception.safetensors"))
    torch.save(state, d / "pt_inception.pth")
    return net.eval(), d


def test_inception_weights_have_pytorch_fid_names(random_inception):
    net, _ = random_inception
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7c.branch3x3dbl_3b.bn.running_var"] == (384,)
    assert shapes["fc.weight"] == (1008, 2048)
    assert (
        sum(v.numel() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k)
        == 23_850_960
    )  # torchvision's Inception3 (27,161,264) without its aux head, with 1008 classes


def test_inception_fid_end_to_end_from_a_weights_file(random_inception, tmp_path):
    net, d = random_inception
    a = load_fid_inception(d / "fid_inception.safetensors")
    b = load_fid_inception(d / "pt_inception.pth")
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        inp = preprocess(x)
        assert inp.shape == (2, 3, 299, 299)
        fa, fb, ref = a.features(inp), b.features(inp), net.features(inp)
    assert fa.shape == (2, 2048) and torch.isfinite(fa).all() and fa.abs().sum() > 0
    torch.testing.assert_close(fa, ref)
    torch.testing.assert_close(fb, ref)

    ext = InceptionFeatureExtractor(d / "fid_inception.safetensors", batch_size=2)
    samples, reference = x, load_digits("test")[:3]
    cache = tmp_path / "ref_stats.npz"
    value = fid(samples, reference, ext, cache=cache)  # one 2048-d Frechet distance
    assert math.isfinite(value) and value > 0
    mu, sigma, meta = load_stats(cache)  # np.load(allow_pickle=False) inside
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (2048, 2048)
    assert meta["extractor"] == ext.name and meta["n"] == 3 and "tf1-bilinear" in ext.name
    with np.load(cache, allow_pickle=False) as f:
        assert all(f[k].dtype != object for k in f.files)
    cached = reference_stats(ext, reference, cache=cache)
    assert np.array_equal(cached[0], mu) and np.array_equal(cached[1], sigma)


def test_cached_stats_are_reused_only_for_the_same_extractor_and_data(tmp_path):
    ext = DigitsFeatureExtractor()
    test = load_digits("test")
    cache = tmp_path / "digits.npz"
    mu, sigma = reference_stats(ext, test, cache=cache)
    save_stats(cache, mu + 1.0, sigma, extractor=ext.name, data_sha256=load_stats(cache)[2]["data_sha256"], n=360)
    assert np.allclose(reference_stats(ext, test, cache=cache)[0], mu + 1.0)  # hit: read, not recomputed
    mu2, _ = reference_stats(ext, test[:100], cache=cache)  # other data: recomputed and rewritten
    assert not np.allclose(mu2, mu + 1.0) and load_stats(cache)[2]["n"] == 100
    with pytest.raises(TypeError):
        save_stats(cache, mu, sigma, extractor=["not", "a", "string"])
    assert fid(test, test, ext) == pytest.approx(0.0, abs=1e-6)


def test_cli_eval_prints_every_metric(tmp_path):
    samples = tmp_path / "s.npy"
    np.save(samples, load_digits("train")[:300].numpy())
    report = json.loads(kuosan("eval", samples, "--dataset", "digits").stdout)
    for key in (
        "fd",
        "fd_floor",
        "kid",
        "kid_std",
        "precision",
        "recall",
        "is",
        "is_std",
        "confident",
        "class_entropy",
        "memorization",
    ):
        assert key in report, key
    assert report["memorization"]["copy_fraction"] == 1.0  # the "samples" are training images
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((5, 3)))
    for args in ([str(bad)], [str(tmp_path / "missing.npy")], [str(samples), "--dataset", "cifar"]):
        r = kuosan("eval", *args, check=False)
        assert r.returncode == 2 and r.stderr.startswith("kuosan eval: error:"), r.stderr


def _pytorch_fid(mu1, s1, mu2, s2):
    """pytorch-fid 0.3's calculate_frechet_distance, re-typed (its package imports torchvision)."""
    diff = mu1 - mu2
    covmean = scipy_linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy_linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_equals_pytorch_fid_on_ordinary_statistics():
    rng = np.random.default_rng(7)
    for d in (16, 128):
        f1, f2 = rng.standard_normal((4 * d, d)), rng.standard_normal((4 * d, d)) @ rng.standard_normal((d, d)) * 0.3
        stats = (*gaussian_stats(f1), *gaussian_stats(f2 + 0.1))
        assert frechet_distance(*stats) == pytest.approx(_pytorch_fid(*stats), rel=1e-6)


@pytest.mark.parametrize("d, smallest", [(512, 1e-10), (2048, 1e-14)])
def test_frechet_is_unbiased_on_near_singular_statistics(d, smallest):
    """Covariances sharing eigenvectors, eigenvalues from 1 down to ``smallest``: the closed form is
    sum_i (sqrt a_i - sqrt b_i)^2, evaluated in 50-digit arithmetic. kuosan is within 1e-9 of it (and
    0 for equal statistics, to 1e-9), where pytorch-fid's sqrtm formula is off by 3e-7 at d = 512 (4e-6
    at d = 2048, measured; its 2048-wide Schur root takes 20 s, so the test compares it at 512 only)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    rng = np.random.default_rng(d)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = np.logspace(0, np.log10(smallest), d)
    b = a * rng.uniform(0.5, 2.0, d)
    s1, s2, mu = (q * a) @ q.T, (q * b) @ q.T, np.zeros(d)
    exact = float(sum((mpmath.sqrt(mpmath.mpf(x)) - mpmath.sqrt(mpmath.mpf(y))) ** 2 for x, y in zip(a, b)))
    ours = frechet_distance(mu, s1, mu, s2)
    assert abs(ours - exact) < 1e-9
    if d <= 512:
        assert abs(_pytorch_fid(mu, s1, mu, s2) - exact) > 1e-8
    assert frechet_distance(mu, s1, mu, s1) < 1e-9


def _png_folder(path, n: int, size: int, seed: int):
    from PIL import Image

    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path / f"{i:03d}.png")
    return path


def test_cli_eval_any_images_against_a_reference(random_inception, tmp_path):
    """`kuosan eval FOLDER --ref FOLDER2 --inception-weights FILE`: FID, KID, precision/recall, IS in
    the Inception features (random weights here); a reference against itself has FID 0 and full
    precision and recall; the reference's features are cached by content and a statistics file works
    as a reference for the FID; bad input is one line."""
    _, d = random_inception
    weights = str(d / "fid_inception.safetensors")
    s, r = _png_folder(tmp_path / "s", 8, 16, 0), _png_folder(tmp_path / "r", 8, 16, 1)
    cache = tmp_path / "ref.npz"
    report = json.loads(kuosan("eval", s, "--ref", r, "--inception-weights", weights, "--stats-cache", cache).stdout)
    for key in ("fid", "kid", "kid_std", "precision", "recall", "is", "is_ref"):
        assert key in report and math.isfinite(report[key]), key
    assert report["n"] == report["n_ref"] == 8 and report["fid"] > 0
    same = json.loads(kuosan("eval", r, "--ref", r, "--inception-weights", weights).stdout)
    assert same["fid"] < 1e-6 * report["fid"] and same["precision"] == same["recall"] == 1.0
    # an array of the same images (uint8, N H W C) and the cached statistics as the reference
    from PIL import Image

    arr = np.stack([np.asarray(Image.open(f)) for f in sorted(s.iterdir())])
    np.save(tmp_path / "s.npy", arr)
    again = json.loads(kuosan("eval", tmp_path / "s.npy", "--ref", r, "--inception-weights", weights,
                              "--stats-cache", cache).stdout)  # fmt: skip
    assert again["fid"] == pytest.approx(report["fid"], rel=1e-9) and again["kid"] == pytest.approx(report["kid"])
    stats_only = json.loads(kuosan("eval", s, "--ref", cache, "--inception-weights", weights).stdout)
    assert stats_only["fid"] == pytest.approx(report["fid"], rel=1e-9) and "kid" not in stats_only
    mixed = _png_folder(tmp_path / "mixed", 2, 16, 2)
    Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(mixed / "odd.png")
    (tmp_path / "empty").mkdir()
    for argv, needle in (
        ([s, "--ref", r, "--inception-weights", tmp_path / "nope.pth"], "file not found"),
        ([s, "--ref", r], "--inception-weights"),
        ([mixed, "--ref", r, "--inception-weights", weights], "differ in size"),
        ([tmp_path / "empty", "--ref", r, "--inception-weights", weights], "no images"),
        ([s, "--ref", r, "--dataset", "digits", "--inception-weights", weights], "not both"),
    ):
        r_ = kuosan("eval", *argv, check=False)
        assert r_.returncode == 2 and needle in r_.stderr and len(r_.stderr.strip().splitlines()) == 1, r_.stderr
