"""Metrics (MAE %, PSNR, SSIM), the hole-ratio buckets, FID (Fréchet distance and Inception loading) and the
classical inpainting methods."""
import numpy as np
import pytest
import torch
from scipy import linalg, signal
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio
from skimage.transform import resize

from mhtma_model import fid, metrics
from mhtma_model.classical import CLASSICAL_METHODS, OPENCV_METHODS, classical_inpaint, opencv_available
from mhtma_kernels.testing import assert_close

F64 = torch.float64


def _t(x):
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _random_pair(seed, shape=(2, 3, 40, 48)):
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=gen, dtype=F64)
    b = (a + 0.2 * torch.randn(shape, generator=gen, dtype=F64)).clamp(0, 1)
    return a, b


# ---------------------------------------------------------------------------------------------- known cases

def test_identical_images_give_zero_error_capped_psnr_and_unit_ssim():
    a, _ = _random_pair(0)
    values = metrics.image_metrics(a, a.clone())
    assert_close(_t(values["mae_percent"]), _t([0.0, 0.0]), F64, "mae")
    assert_close(_t(values["psnr"]), _t([metrics.PSNR_CAP_DB] * 2), F64, "psnr cap")
    assert_close(_t(values["ssim"]), _t([1.0, 1.0]), F64, "ssim")
    assert np.isfinite(values["psnr"]).all()


@pytest.mark.parametrize("offset", [0.1, 0.01], ids=["offset0.1", "offset0.01"])
def test_constant_offset_has_known_mae_and_psnr(offset):
    a = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1), dtype=F64) * (1 - offset)
    b = a + offset
    assert_close(_t(metrics.mae_percent(b, a)), _t([offset * 100]), F64, "mae")
    assert_close(_t(metrics.psnr(b, a)), _t([-20 * np.log10(offset)]), F64, "psnr")


@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed{s}")
def test_psnr_matches_scikit_image(seed):
    a, b = _random_pair(seed)
    ours = metrics.psnr(b, a)
    theirs = [peak_signal_noise_ratio(x.permute(1, 2, 0).numpy(), y.permute(1, 2, 0).numpy(), data_range=1.0)
              for x, y in zip(a, b)]
    assert_close(_t(ours), _t(theirs), F64, "psnr vs skimage")


def _ssim_from_formula(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. 2004 written out: 11x11 Gaussian (σ 1.5, normalised), valid positions only, population
    statistics, C1 = 0.01², C2 = 0.03², averaged over positions, then over channels. x, y: [H, W, C]."""
    ax = np.arange(11) - 5
    g = np.exp(-(ax ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    per_channel = []
    for ch in range(x.shape[2]):
        a, b = x[..., ch], y[..., ch]
        f = lambda z: signal.correlate2d(z, w, mode="valid")  # noqa: E731
        ma, mb = f(a), f(b)
        va, vb, cov = f(a * a) - ma ** 2, f(b * b) - mb ** 2, f(a * b) - ma * mb
        s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
        per_channel.append(s.mean())
    return float(np.mean(per_channel))


@pytest.mark.parametrize("seed", [0, 1], ids=lambda s: f"seed{s}")
def test_ssim_is_the_design_convention(seed):
    """Pins scikit-image's structural_similarity (as configured in metrics.ssim) to the docs/design.md §4 formula:
    Gaussian window 11, σ 1.5, population covariance, C1 0.01², C2 0.03², border excluded, channel mean."""
    a, b = _random_pair(seed)
    ours = metrics.ssim(b, a)
    expected = [_ssim_from_formula(y.permute(1, 2, 0).numpy(), x.permute(1, 2, 0).numpy()) for x, y in zip(a, b)]
    assert_close(_t(ours), _t(expected), F64, "ssim vs formula")
    assert (ours < 1).all()


def test_metrics_accept_uint8_numpy_and_tensors_alike():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, size=(2, 20, 20, 3), dtype=np.uint8)
    b = rng.integers(0, 256, size=(2, 20, 20, 3), dtype=np.uint8)
    ta = torch.from_numpy(a).permute(0, 3, 1, 2).double() / 255
    tb = torch.from_numpy(b).permute(0, 3, 1, 2).double() / 255
    for key, value in metrics.image_metrics(a, b).items():
        assert_close(_t(value), _t(metrics.image_metrics(ta, tb)[key]), F64, key)


@pytest.mark.parametrize("bad, error", [
    pytest.param(torch.full((1, 3, 16, 16), 1.5), ValueError, id="out-of-range"),
    pytest.param(torch.zeros(1, 3, 16, 15), ValueError, id="shape-mismatch"),
    pytest.param(torch.zeros(1, 3, 16, 16, dtype=torch.int64), TypeError, id="int-tensor"),
    pytest.param([[0.0]], TypeError, id="list"),
])
def test_bad_inputs_are_rejected(bad, error):
    with pytest.raises(error):
        metrics.image_metrics(bad, torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize("ratio, label", [
    (0.0, "0.0-0.1"), (0.0999, "0.0-0.1"), (0.1, "0.1-0.2"), (0.55, "0.5-0.6"), (0.6, ">0.6"), (1.0, ">0.6"),
], ids=lambda v: str(v))
def test_bucket_labels(ratio, label):
    assert metrics.bucket_label(ratio) == label


def test_summary_counts_every_image_once():
    rng = np.random.default_rng(0)
    records = [{"hole_ratio": r, "mae_percent": 1.0, "psnr": 30.0, "ssim": 0.9} for r in rng.uniform(0, 0.8, 40)]
    summary = metrics.summarise(records, fid_fn=lambda idx: float(len(idx)))
    assert summary["overall"]["count"] == 40
    assert sum(row["count"] for row in summary["buckets"]) == 40
    assert [row["bucket"] for row in summary["buckets"]][:6] == [label for label, _, _ in metrics.BUCKETS[:6]]
    for row in summary["buckets"]:
        assert row["fid"] == (row["count"] if row["count"] >= 2 else None)


def test_summary_omits_the_over_0_6_row_when_empty():
    records = [{"hole_ratio": 0.05, "mae_percent": 2.0, "psnr": 25.0, "ssim": 0.8}]
    summary = metrics.summarise(records)
    assert ">0.6" not in [row["bucket"] for row in summary["buckets"]]
    assert summary["overall"]["mae_percent"] == 2.0 and "fid" not in summary["overall"]


def test_summary_averages_lpips_and_merges_set_values():
    records = [{"hole_ratio": r, "mae_percent": 1.0, "psnr": 30.0, "ssim": 0.9, "lpips": lp}
               for r, lp in ((0.05, 0.1), (0.06, 0.3), (0.35, 0.5))]
    summary = metrics.summarise(records, set_fn=lambda idx: {"p_ids": None if len(idx) < 3 else 0.25})
    assert summary["overall"]["lpips"] == pytest.approx(0.3) and summary["overall"]["p_ids"] == 0.25
    first = summary["buckets"][0]
    assert first["count"] == 2 and first["lpips"] == pytest.approx(0.2) and first["p_ids"] is None


def test_composite_8bit_rounds_the_hole_and_copies_the_rest():
    from mhtma_model.evaluator import composite_8bit

    truth = np.full((1, 2, 2, 3), 10, np.uint8)
    holes = np.array([[[True, False], [False, True]]])
    out = composite_8bit(np.full((1, 2, 2, 3), 200.6, np.float32), truth, holes)
    assert out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == [201] * 3 and out[0, 1, 1].tolist() == [201] * 3
    assert out[0, 0, 1].tolist() == [10] * 3 and out[0, 1, 0].tolist() == [10] * 3
    with pytest.raises(ValueError, match="must agree"):
        composite_8bit(np.zeros((1, 3, 3, 3)), truth, holes)


# ----------------------------------------------------------------------------------------------------- FID

@pytest.mark.parametrize("m1, s1, m2, s2", [(0.0, 1.0, 0.0, 1.0), (1.0, 2.0, -0.5, 0.5), (3.0, 0.1, 3.0, 4.0)],
                         ids=["same", "shift-and-scale", "scale-only"])
def test_frechet_distance_1d_closed_form(m1, s1, m2, s2):
    """For 1-D Gaussians: d² = (m1 − m2)² + (s1 − s2)² (s = standard deviation)."""
    got = fid.frechet_distance([m1], [[s1 ** 2]], [m2], [[s2 ** 2]])
    assert_close(_t(got), _t((m1 - m2) ** 2 + (s1 - s2) ** 2), F64, "1-D FID")


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert_close(_t(fid.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))), _t(expected), F64, "diag FID")


def test_frechet_distance_general_covariances_match_scipy_sqrtm():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert_close(_t(fid.frechet_distance(mu1, s1, mu2, s2)), _t(expected), F64, "general FID")


@pytest.mark.parametrize("n, m", [(5, 7), (3, 2), (40, 30), (40, 5)], ids=["few", "tiny", "many", "mixed"])
def test_fid_from_features_low_rank_route_equals_the_covariance_formula(n, m):
    rng = np.random.default_rng(n * 100 + m)
    a, b = rng.normal(size=(n, 16)), rng.normal(loc=0.3, scale=1.5, size=(m, 16))
    expected = fid.frechet_distance(*fid.feature_statistics(a), *fid.feature_statistics(b))
    assert_close(_t(fid.fid_from_features(a, b)), _t(expected), F64, "low-rank FID")


def test_fid_of_a_feature_set_with_itself_is_zero_even_when_singular():
    feats = np.random.default_rng(2).normal(size=(3, 16))  # 3 samples in 16-D: rank-2 covariance
    assert fid.fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-8)
    assert fid.fid_from_features(feats, feats + 1.0) == pytest.approx(16.0, rel=1e-6)


@pytest.mark.parametrize("variant, aux", [("torchvision", True), ("tf-fid", False)], ids=["torchvision", "tf-fid"])
def test_inception_features_load_a_state_dict_file(tmp_path, variant, aux):
    torch.manual_seed(0)
    net = fid.build_inception(variant, aux_logits=aux)
    path = tmp_path / "inception.pt"
    torch.save(net.state_dict(), path)
    extractor = fid.InceptionFeatures(path)
    assert extractor.variant == variant
    images = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    feats = extractor(images)
    assert feats.shape == (1, fid.FEATURE_DIM) and torch.isfinite(feats).all()
    # The pool features are what the reference network computes before its classifier.
    net.eval().fc = torch.nn.Identity()
    with torch.no_grad():
        x = torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        expected = net(x * 2 - 1)
    assert_close(feats, expected.double(), torch.float32, "pool features")


def test_inception_features_reject_a_foreign_state_dict(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), path)
    with pytest.raises(ValueError, match="not an Inception-v3 state dict"):
        fid.InceptionFeatures(path)
    with pytest.raises(FileNotFoundError):
        fid.InceptionFeatures(tmp_path / "absent.pt")


# ----------------------------------------------------------------------------------------- classical methods

def _photo_and_mask(size=48):
    """A smooth colour image (the astronaut photo, heavily blurred) with a 12x14 hole."""
    img = resize(skdata.astronaut(), (size // 6, size // 6), anti_aliasing=True)
    img = np.round(resize(img, (size, size), order=3) .clip(0, 1) * 255).astype(np.uint8)
    mask = np.zeros((size, size), np.float32)
    mask[size // 3: size // 3 + 12, size // 4: size // 4 + 14] = 1
    return img, mask


@pytest.mark.parametrize("method", [
    pytest.param(m, id=m, marks=pytest.mark.skipif(m in OPENCV_METHODS and not opencv_available(),
                                                    reason="opencv-python-headless not installed"))
    for m in CLASSICAL_METHODS
])
def test_classical_methods_fill_the_hole_sensibly(method):
    img, mask = _photo_and_mask()
    out = classical_inpaint(img, mask, method)
    hole = mask > 0
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out[~hole], img[~hole])
    # On a smooth image every method must beat filling the hole with the mean known colour.
    err = np.abs(out[hole].astype(float) - img[hole]).mean()
    mean_fill = img[~hole].astype(float).mean(axis=0)
    assert err < np.abs(mean_fill - img[hole]).mean()


def test_classical_rejects_bad_arguments():
    img, mask = _photo_and_mask(16)
    with pytest.raises(ValueError, match="method"):
        classical_inpaint(img, mask, "magic")
    with pytest.raises(ValueError, match="mask shape"):
        classical_inpaint(img, mask[:-1], "biharmonic")
    with pytest.raises(TypeError, match="uint8"):
        classical_inpaint(img.astype(np.float32), mask, "biharmonic")


# ---------------------------------------------------------------------------------------- LPIPS, IDS

from mhtma_model import ids as idsmod  # noqa: E402
from mhtma_model import lpips_metric  # noqa: E402

needs_lpips = pytest.mark.skipif(not lpips_metric.lpips_available(), reason="lpips not installed (mhtma[eval])")
needs_sklearn = pytest.mark.skipif(not idsmod.sklearn_available(), reason="scikit-learn not installed (mhtma[eval])")


def _random_backbone(net, seed=0):
    import torchvision

    torch.manual_seed(seed)
    return (torchvision.models.alexnet if net == "alex" else torchvision.models.vgg16)(weights=None)


@needs_lpips
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_the_package_for_the_same_backbone(tmp_path, net):
    backbone = _random_backbone(net)
    path = tmp_path / f"{net}.pt"
    torch.save(backbone.state_dict(), path)
    ours = lpips_metric.LpipsDistance(path, net)
    # The reference: the package's network with torchvision's own layer modules put into its slices.
    reference = lpips_metric.build_lpips(net)
    for part in reference.net.children():
        for index in list(part._modules):
            part._modules[index] = backbone.features[int(index)]
    reference.eval()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 3, 48, 40, generator=gen), torch.rand(3, 3, 48, 40, generator=gen)
    got = ours(x, y)
    with torch.no_grad():
        want = reference(x, y, normalize=True).reshape(3)
    assert got.shape == (3,) and torch.all(got > 0)
    assert torch.allclose(got.double(), want.double(), atol=1e-5, rtol=0), (got, want)
    assert torch.allclose(ours(x, x), torch.zeros(3), atol=1e-6)


@needs_lpips
def test_lpips_builds_offline_and_quietly(tmp_path, capsys, monkeypatch):
    import warnings

    torch.save(_random_backbone("alex").state_dict(), tmp_path / "alex.pt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # a download would land here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lpips_metric.LpipsDistance(tmp_path / "alex.pt")
    assert not caught, [str(w.message) for w in caught]
    assert capsys.readouterr() == ("", "")
    assert not (tmp_path / "torch-home").exists()


@needs_lpips
def test_lpips_refuses_the_wrong_backbone_and_missing_files(tmp_path):
    path = tmp_path / "alex.pt"
    torch.save(_random_backbone("alex").state_dict(), path)
    with pytest.raises(ValueError, match="holds a alexnet backbone, not the vgg16"):
        lpips_metric.LpipsDistance(path, "vgg")
    with pytest.raises(FileNotFoundError, match="LPIPS backbone file not found"):
        lpips_metric.LpipsDistance(tmp_path / "nope.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="features.0.weight"):
        lpips_metric.LpipsDistance(tmp_path / "other.pt")


@needs_sklearn
def test_ids_of_identical_sets_is_chance_and_never_paired_better():
    real = np.random.default_rng(0).normal(size=(40, 16))
    scores = idsmod.inception_discriminative_scores(real, real.copy())
    assert scores["u_ids"] == pytest.approx(0.5, abs=1e-12)
    assert scores["p_ids"] == 0.0  # equal decision values: the fake is never strictly more "real"


@needs_sklearn
def test_ids_of_separable_sets_is_zero():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(30, 8))
    fake = rng.normal(size=(30, 8)) + 20.0
    assert idsmod.inception_discriminative_scores(real, fake) == {"p_ids": 0.0, "u_ids": 0.0}


@needs_sklearn
def test_ids_of_swapped_pairs_counts_the_pairs():
    """Two far clusters A, B; reals = A ∪ B, fakes = B ∪ B (pair i: real A_i with fake B_i, then real B_i with
    itself). The best linear rule calls A real and B fake: wrong only on the 20 real B points of 80 -> U-IDS
    0.25; no fake scores above its real (A-pairs: lower; B-pairs: equal) -> P-IDS 0."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(20, 4)) - 5.0, rng.normal(size=(20, 4)) + 5.0
    real = np.concatenate([a, b])
    fake = np.concatenate([b, b])
    scores = idsmod.inception_discriminative_scores(real, fake)
    assert scores == {"p_ids": 0.0, "u_ids": pytest.approx(0.25)}


@needs_sklearn
def test_ids_needs_enough_pairs_and_matching_shapes():
    feats = np.zeros((idsmod.IDS_MIN_IMAGES - 1, 4))
    assert idsmod.ids_or_none(feats, feats) is None
    with pytest.raises(ValueError, match="same shape"):
        idsmod.inception_discriminative_scores(np.zeros((4, 3)), np.zeros((5, 3)))
