"""Metrics: closed forms first, then agreement with clean-fid, then bad input."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from offshelf import metrics
from offshelf.metrics import (
    clip_score, evaluate, extract_features, feature_statistics, fid_from_features,
    frechet_distance, inception_score, load_reference_stats, precision_recall, save_feature_stats,
)
from offshelf.shards import load_sample_dir, load_samples


def _random_covariance(rng, dim):
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def _cleanfid_frechet_distance(*args):
    from cleanfid.fid import frechet_distance as cleanfid_fd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # clean-fid's sqrtm(disp=False) is deprecated in SciPy 1.17
        return cleanfid_fd(*args)


# ----------------------------------------------------------------------------
# Fréchet distance: closed forms.

def test_fid_diagonal_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    a, b = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_fid_commuting_nondiagonal_covariances_matches_closed_form():
    # sigma_i = Q diag(l_i) Q^T share eigenvectors, so Tr (s1 s2)^{1/2} = sum sqrt(l1 l2)
    # and d² = ||mu1 - mu2||² + sum (sqrt(l1) - sqrt(l2))².
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    l1, l2 = rng.uniform(0.2, 4, 12), rng.uniform(0.2, 4, 12)
    sigma1, sigma2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    assert abs(sigma1[0, 1]) > 1e-3  # genuinely non-diagonal
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)


def test_fid_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(2).standard_normal((5000, 64)) * 3 + 1
    stats = feature_statistics(features)
    assert abs(frechet_distance(stats.mu, stats.sigma, stats.mu, stats.sigma)) < 1e-6
    assert abs(fid_from_features(features, features.copy())) < 1e-6


def test_feature_statistics_is_float64_unbiased():
    features = np.random.default_rng(3).standard_normal((50, 4)).astype(np.float32)
    stats = feature_statistics(features)
    assert stats.mu.dtype == np.float64 and stats.sigma.dtype == np.float64 and stats.n == 50
    np.testing.assert_allclose(stats.sigma, np.cov(features.astype(np.float64), rowvar=False), rtol=1e-12)
    centred = features.astype(np.float64) - features.mean(0)
    np.testing.assert_allclose(stats.sigma, centred.T @ centred / 49, rtol=1e-10)


def test_fid_rank_deficient_covariances_are_finite_and_agree_with_cleanfid():
    # 20 samples in 64 dims: rank-19 covariances. sqrtm of the singular product is still
    # finite; the distance is finite, non-negative up to round-off, ~0 for a set with itself,
    # and clean-fid's reference implementation gives the same number.
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((20, 64)), rng.standard_normal((20, 64)) + 0.5
    sa, sb = feature_statistics(a), feature_statistics(b)
    assert np.linalg.matrix_rank(sa.sigma) == 19
    d = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    assert np.isfinite(d) and d > 0
    assert d == pytest.approx(_cleanfid_frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma), abs=1e-6)
    assert abs(frechet_distance(sa.mu, sa.sigma, sa.mu, sa.sigma)) < 1e-4


def test_fid_nonfinite_sqrtm_falls_back_to_eps_regularisation():
    # [[0, 1], [0, 0]] has no square root: sqrtm returns inf. As in pytorch-fid/ADM, eps·I is
    # added to both covariances and the root recomputed, with a warning.
    sigma1, sigma2 = np.array([[0.0, 1.0], [0.0, 0.0]]), np.eye(2)
    with pytest.warns(UserWarning, match="not finite"):
        d = frechet_distance(np.zeros(2), sigma1, np.zeros(2), sigma2, eps=1e-6)
    assert np.isfinite(d)
    assert d == pytest.approx(_cleanfid_frechet_distance(np.zeros(2), sigma1, np.zeros(2), sigma2), abs=1e-6)


def test_fid_agrees_with_cleanfid_on_random_features():
    rng = np.random.default_rng(5)
    for dim in (8, 64):
        a = rng.standard_normal((400, dim)) @ rng.standard_normal((dim, dim))
        b = rng.standard_normal((300, dim)) @ rng.standard_normal((dim, dim)) + 0.3
        sa, sb = feature_statistics(a), feature_statistics(b)
        ours = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
        assert ours == pytest.approx(_cleanfid_frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma), abs=1e-6)
        from cleanfid.fid import fid_from_feats
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert fid_from_features(a, b) == pytest.approx(fid_from_feats(a, b), abs=1e-6)


def test_fid_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ in length"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ----------------------------------------------------------------------------
# Precision / recall.

def _brute_force_precision_recall(reference, samples, k):
    """Straight from the definition, with np.sort and true (not squared) distances."""
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself
    cross = np.linalg.norm(reference[:, None] - samples[None], axis=-1)  # [n_ref, n_samples]
    precision = np.mean((cross <= radii(reference)[:, None]).any(axis=0))
    recall = np.mean((cross <= radii(samples)[None, :]).any(axis=1))
    return precision, recall


def test_precision_recall_identical_sets_is_one():
    features = np.random.default_rng(6).standard_normal((300, 32))
    assert precision_recall(features, features.copy()) == (1.0, 1.0)


def test_precision_recall_far_apart_clusters_is_zero():
    rng = np.random.default_rng(7)
    reference = rng.standard_normal((200, 16))
    samples = rng.standard_normal((150, 16)) + 100.0
    assert precision_recall(reference, samples) == (0.0, 0.0)


def test_precision_recall_tiny_1d_example_by_hand():
    # k = 1. Reference {0, 1, 3}: radii 1 (0->1), 1 (1->0), 2 (3->1); balls [-1,1], [0,2], [1,5].
    # Samples {0.5, 4.5, 9, -3}: 0.5 and 4.5 are inside, 9 and -3 are not -> precision 2/4.
    # Sample radii: 0.5->3.5 (to -3), 4.5->4 (to 0.5), 9->4.5 (to 4.5), -3->3.5 (to 0.5);
    # balls [-3,4], [0.5,8.5], [4.5,13.5], [-6.5,0.5] cover reference 0, 1 and 3 -> recall 1.
    reference = np.array([[0.0], [1.0], [3.0]])
    samples = np.array([[0.5], [4.5], [9.0], [-3.0]])
    assert precision_recall(reference, samples, nhood_size=1) == (0.5, 1.0)
    # Roles swapped: the sample balls above cover all of {0, 1, 3} -> precision 1; the balls
    # [-1,1], [0,2], [1,5] cover 0.5 and 4.5 but not 9 or -3 -> recall 2/4.
    assert precision_recall(samples, reference, nhood_size=1) == (1.0, 0.5)


def test_precision_recall_matches_brute_force_definition():
    rng = np.random.default_rng(8)
    reference = rng.standard_normal((120, 6))
    samples = rng.standard_normal((90, 6)) * 1.3 + 0.4
    for k in (1, 3, 5):
        ours = precision_recall(reference, samples, nhood_size=k, batch_size=37)
        assert ours == pytest.approx(_brute_force_precision_recall(reference, samples, k))


def test_precision_recall_needs_more_points_than_k():
    with pytest.raises(ValueError, match="more than k=3"):
        precision_recall(np.zeros((3, 2)), np.ones((10, 2)))


# ----------------------------------------------------------------------------
# Inception score, CLIP score.

def test_inception_score_evenly_spread_one_hot_is_k():
    k, splits = 7, 10
    labels = np.arange(k * splits * 3) % k  # every split holds every class equally often
    probs = np.eye(k)[labels]
    mean, std = inception_score(probs, splits=splits)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_inception_score_single_class_is_one():
    probs = np.eye(5)[np.zeros(40, dtype=int)]
    assert inception_score(probs, splits=4) == pytest.approx((1.0, 0.0))
    # Logits are softmaxed: equal logits -> uniform p(y|x) = p(y) -> KL 0 -> IS 1.
    assert inception_score(np.zeros((40, 5)), splits=4)[0] == pytest.approx(1.0)


def test_inception_score_logits_equal_softmax_probabilities():
    logits = np.random.default_rng(9).standard_normal((100, 10)) * 3
    probs = torch.softmax(torch.as_tensor(logits), 1).numpy()
    assert inception_score(logits, 5) == pytest.approx(inception_score(probs, 5), rel=1e-10)


def test_clip_score_convention():
    image = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    text = np.array([[2.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    # cos = 1, 1/sqrt(2), -1 (clipped to 0) -> mean 100 * (1 + 0.7071 + 0) / 3
    assert clip_score(image, text) == pytest.approx(100 * (1 + 2 ** -0.5) / 3)


# ----------------------------------------------------------------------------
# Feature extraction through clean-fid's machinery.

class PooledColourFeatures(torch.nn.Module):
    """A small deterministic feature extractor in clean-fid's custom_feat_extractor contract:
    NCHW float in [0, 255] -> [B, 12] (4x4 average-pooled colour grid, squashed)."""

    def forward(self, x):
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
        return torch.tanh(pooled / 64 - 2)


def _write_png_folder(folder, images):
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow"])
def test_feature_fn_matches_cleanfid_folder_pipeline(tmp_path, mode):
    # Same images, once through clean-fid's own folder pipeline (PNG -> ResizeDataset ->
    # resizer -> model), once through offshelf's in-memory wrapper: same features.
    from cleanfid.fid import get_folder_features
    images = np.random.default_rng(10).integers(0, 256, (12, 40, 40, 3), dtype=np.uint8)
    _write_png_folder(tmp_path / "png", images)
    model = PooledColourFeatures()
    theirs = get_folder_features(str(tmp_path / "png"), model, num_workers=0, batch_size=5,
                                 device=torch.device("cpu"), mode=mode, verbose=False)
    ours = extract_features(images, metrics.cleanfid_feature_fn(model, mode), batch_size=5)
    assert ours.shape == (12, 12)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_clean_mode_resizes_to_299_with_pil_bicubic():
    seen = []

    def record_shape(x):
        seen.append(tuple(x.shape))
        return x.mean(dim=(2, 3))

    images = np.random.default_rng(11).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    clean = extract_features(images, metrics.cleanfid_feature_fn(record_shape, "clean"))
    legacy = extract_features(images, metrics.cleanfid_feature_fn(record_shape, "legacy_tensorflow"))
    assert seen == [(3, 3, 299, 299), (3, 3, 32, 32)]
    # legacy_tensorflow feeds exact pixel values (as ADM's TF evaluator) for the graph to resize.
    np.testing.assert_allclose(legacy, images.reshape(3, -1, 3).mean(1), rtol=1e-6)
    assert not np.allclose(clean, legacy, rtol=1e-6)


def test_grey_images_are_expanded_to_rgb():
    images = np.random.default_rng(12).integers(0, 256, (4, 16, 16, 1), dtype=np.uint8)
    fn = metrics.cleanfid_feature_fn(lambda x: x.mean(dim=(2, 3)), "legacy_tensorflow")
    features = extract_features(images, fn)
    np.testing.assert_allclose(features, np.repeat(images.reshape(4, -1).mean(1, keepdims=True), 3, 1), rtol=1e-6)


class _TorchScriptInceptionShape(torch.nn.Module):
    """A tiny TorchScript module with the *interface* of clean-fid's inception-2015-12-05.pt
    (``forward(x, return_features)`` with TF resize inside, ``layers`` for pre-resized input).
    It checks offshelf's loader wiring only; it says nothing about Inception's numbers."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2048))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        # Encode the input height in feature 0 so the test sees what reached the graph.
        out = self.layers(x / 255.0)
        return torch.cat([torch.full_like(out[:, :1], float(x.shape[2])), out[:, 1:]], dim=1)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_inception_loader_wiring_with_torchscript_file(tmp_path):
    path = tmp_path / metrics.INCEPTION_FILENAME
    torch.jit.script(_TorchScriptInceptionShape()).save(str(path))
    images = np.random.default_rng(13).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    legacy = extract_features(images, metrics.inception_feature_fn("legacy_tensorflow", path))
    assert legacy.shape == (2, 2048) and (legacy[:, 0] == 128).all()  # raw 128x128 into the graph
    clean = extract_features(images, metrics.inception_feature_fn("clean", path))
    assert clean.shape == (2, 2048) and not (clean[:, 0] == 128).all()  # pre-resized, via `layers`


def test_real_inception_legacy_tensorflow_features():
    path = Path(os.environ.get("OFFSHELF_INCEPTION", Path.home() / ".cache" / "offshelf" / metrics.INCEPTION_FILENAME))
    if not path.is_file():
        pytest.skip(f"{path} ({metrics.INCEPTION_URL}) is not available offline; set OFFSHELF_INCEPTION to run")
    images = np.random.default_rng(14).integers(0, 256, (4, 128, 128, 3), dtype=np.uint8)
    features = extract_features(images, metrics.inception_feature_fn("legacy_tensorflow", path))
    assert features.shape == (4, 2048) and np.isfinite(features).all() and (features >= 0).all()  # post-ReLU pool


def test_inception_loader_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=metrics.INCEPTION_FILENAME):
        metrics.load_inception(tmp_path / metrics.INCEPTION_FILENAME)
    with pytest.raises(ValueError, match="unknown Inception mode"):
        metrics.load_inception(tmp_path / metrics.INCEPTION_FILENAME, mode="legacy_pytorch")


# ----------------------------------------------------------------------------
# evaluate(): one call per setting.

def test_evaluate_reports_all_metrics():
    rng = np.random.default_rng(15)
    samples = rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    feature_fn = lambda x: x.reshape(len(x), -1)[:, :10].astype(np.float32)
    features = extract_features(samples, feature_fn)
    classifier_fn = lambda x: np.eye(3)[x[:, 0, 0, 0] % 3] * 5.0  # logits
    labels = samples[:, 0, 0, 0] % 3
    labels[45:] = (labels[45:] + 1) % 3  # the classifier is right on exactly 45 of 60

    result = evaluate(samples, labels, feature_fn, reference_features=features, classifier_fn=classifier_fn, batch_size=16)
    assert result["fid"] == pytest.approx(0, abs=1e-6)
    assert result["precision"] == 1.0 and result["recall"] == 1.0
    assert result["accuracy"] == pytest.approx(45 / 60)
    assert 1.0 < result["inception_score"] <= 3.0

    stats = feature_statistics(features + 1.0)  # mean shift of 1 in each of 10 dims
    result = evaluate(samples, labels, feature_fn, reference_stats=stats)
    assert result["fid"] == pytest.approx(10.0, rel=1e-9) and np.isnan(result["precision"])
    assert "accuracy" not in result


# ----------------------------------------------------------------------------
# Files: good and bad input.

def _save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_load_samples_and_dir_concatenate_in_sorted_order(tmp_path):
    rng = np.random.default_rng(16)
    shards = [rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8) for n in (3, 2, 4)]
    for name, shard, offset in zip(["shard_002", "shard_000", "shard_001"], shards, (20, 0, 10)):
        _save_npz(tmp_path / f"{name}.npz", arr_0=shard, arr_1=np.arange(len(shard)) + offset)
    images, labels = load_sample_dir(tmp_path)
    np.testing.assert_array_equal(images, np.concatenate([shards[1], shards[2], shards[0]]))
    np.testing.assert_array_equal(labels, [0, 1, 10, 11, 12, 13, 20, 21, 22])
    assert load_samples(tmp_path / "shard_000.npz")[1].dtype == np.int64


@pytest.mark.parametrize("arrays, message", [
    (dict(arr_0=np.zeros((2, 4, 4, 3), np.float32), arr_1=np.zeros(2, int)), "arr_0 has dtype float32, expected uint8 NHWC"),
    (dict(arr_0=np.random.default_rng(0).random((2, 4, 4, 3)), arr_1=np.zeros(2, int)), r"looks like \[0, 1\] floats"),
    (dict(arr_0=np.zeros((2, 3, 4, 4), np.uint8), arr_1=np.zeros(2, int)), r"shape \(2, 3, 4, 4\), expected uint8 NHWC"),
    (dict(arr_0=np.zeros((4, 4, 3), np.uint8), arr_1=np.zeros(4, int)), "expected uint8 NHWC"),
    (dict(images=np.zeros((2, 4, 4, 3), np.uint8)), "missing key arr_0"),
    (dict(arr_0=np.zeros((2, 4, 4, 3), np.uint8)), "missing key arr_1"),
    (dict(arr_0=np.zeros((2, 4, 4, 3), np.uint8), arr_1=np.zeros(3, int)), "3 labels but arr_0 has 2 images"),
    (dict(arr_0=np.zeros((2, 4, 4, 3), np.uint8), arr_1=np.zeros(2, np.float32)), "expected 1-D integer labels"),
])
def test_load_samples_bad_input_names_file_and_expectation(tmp_path, arrays, message):
    path = _save_npz(tmp_path / "shard_003.npz", **arrays)
    with pytest.raises(ValueError, match=message) as error:
        load_samples(path)
    assert str(path) in str(error.value)


def test_load_samples_not_an_npz(tmp_path):
    path = tmp_path / "shard_000.npz"
    path.write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable .npz") as error:
        load_samples(path)
    assert str(path) in str(error.value)
    with pytest.raises(FileNotFoundError, match="shard_999.npz: sample shard not found"):
        load_samples(tmp_path / "shard_999.npz")


def test_load_samples_without_labels_when_allowed(tmp_path):
    path = _save_npz(tmp_path / "ref.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    images, labels = load_samples(path, require_labels=False)
    assert images.shape == (2, 4, 4, 3) and labels is None


def test_load_sample_dir_empty_and_mismatched(tmp_path):
    with pytest.raises(ValueError, match="no sample shards") as error:
        load_sample_dir(tmp_path)
    assert str(tmp_path) in str(error.value)
    _save_npz(tmp_path / "a.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8), arr_1=np.zeros(2, int))
    _save_npz(tmp_path / "b.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8), arr_1=np.zeros(2, int))
    with pytest.raises(ValueError, match=r"b\.npz: images have shape \(8, 8, 3\)"):
        load_sample_dir(tmp_path)


def test_reference_stats_roundtrip_and_errors(tmp_path):
    rng = np.random.default_rng(17)
    stats = feature_statistics(rng.standard_normal((30, 5)))
    path = tmp_path / "ref_stats.npz"
    save_feature_stats(path, stats)
    loaded = load_reference_stats(path, expected_dim=5)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.n == 30 and list(tmp_path.iterdir()) == [path]  # no temp file left behind

    with pytest.raises(ValueError, match="dimension 5, expected 2048") as error:
        load_reference_stats(path, expected_dim=2048)
    assert str(path) in str(error.value)
    bad = _save_npz(tmp_path / "VIRTUAL_bad.npz", mu=np.zeros(5))
    with pytest.raises(ValueError, match=r"missing key\(s\) \['sigma'\]") as error:
        load_reference_stats(bad)
    assert str(bad) in str(error.value)
    bad = _save_npz(tmp_path / "VIRTUAL_shape.npz", mu=np.zeros(5), sigma=np.eye(4))
    with pytest.raises(ValueError, match="expected \\[D\\] and \\[D, D\\]"):
        load_reference_stats(bad)


# ----------------------------------------------------------------------------
# pytorch-fid's FID Inception (the fid_protocol EluCD's own numbers used) and both protocols wired.

def _random_fid_inception_state(seed: int) -> dict:
    """A state dict in the layout of pytorch-fid's pt_inception-2015-12-05-6726825d.pth (torchvision
    key names, 1008-way fc, no aux head) with random values: He-normal convolutions so activations
    keep their scale through ~50 layers, BatchNorm with random affine and running statistics."""
    import torchvision

    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in net.state_dict().items():
        if not value.is_floating_point():
            state[key] = value.clone()
        elif value.ndim == 4 or value.ndim == 2:
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / value[0].numel()) ** 0.5
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif key.endswith("bn.weight"):
            state[key] = 1 + 0.1 * torch.randn(value.shape, generator=gen)
        else:  # BN bias and running mean, the fc bias
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
    return state


def _pytorch_fid_transcription(state: dict, images: np.ndarray, patched: bool = True) -> np.ndarray:
    """pytorch-fid 0.3.0's features, line by line on torchvision's building blocks: ToTensor (x/255),
    F.interpolate(299, bilinear, align_corners=False), 2x − 1, blocks 0-3 of InceptionV3 with the
    FID patches of FIDInceptionA/C/E_1/E_2 (``patched=False``: torchvision's own blocks)."""
    import torch.nn.functional as F
    import torchvision

    tv = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    tv.load_state_dict(state)
    tv.eval()

    def avg(x):
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    def fid_a(m, x):  # FIDInceptionA.forward
        branch1x1 = m.branch1x1(x)
        branch5x5 = m.branch5x5_2(m.branch5x5_1(x))
        branch3x3dbl = m.branch3x3dbl_3(m.branch3x3dbl_2(m.branch3x3dbl_1(x)))
        branch_pool = m.branch_pool(avg(x))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)

    def fid_c(m, x):  # FIDInceptionC.forward
        branch1x1 = m.branch1x1(x)
        branch7x7 = m.branch7x7_3(m.branch7x7_2(m.branch7x7_1(x)))
        branch7x7dbl = m.branch7x7dbl_1(x)
        branch7x7dbl = m.branch7x7dbl_2(branch7x7dbl)
        branch7x7dbl = m.branch7x7dbl_3(branch7x7dbl)
        branch7x7dbl = m.branch7x7dbl_4(branch7x7dbl)
        branch7x7dbl = m.branch7x7dbl_5(branch7x7dbl)
        branch_pool = m.branch_pool(avg(x))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)

    def fid_e(m, x, pool):  # FIDInceptionE_1 (pool = avg) and FIDInceptionE_2 (pool = max)
        branch1x1 = m.branch1x1(x)
        branch3x3 = m.branch3x3_1(x)
        branch3x3 = torch.cat([m.branch3x3_2a(branch3x3), m.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = m.branch3x3dbl_2(m.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([m.branch3x3dbl_3a(branch3x3dbl), m.branch3x3dbl_3b(branch3x3dbl)], 1)
        branch_pool = m.branch_pool(pool(x))
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)

    def max3(x):
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)

    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)  # TF.ToTensor
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = torch.nn.MaxPool2d(kernel_size=3, stride=2)(tv.Conv2d_2b_3x3(tv.Conv2d_2a_3x3(tv.Conv2d_1a_3x3(x))))
        x = torch.nn.MaxPool2d(kernel_size=3, stride=2)(tv.Conv2d_4a_3x3(tv.Conv2d_3b_1x1(x)))
        if patched:
            x = fid_a(tv.Mixed_5d, fid_a(tv.Mixed_5c, fid_a(tv.Mixed_5b, x)))
            x = tv.Mixed_6a(x)
            x = fid_c(tv.Mixed_6e, fid_c(tv.Mixed_6d, fid_c(tv.Mixed_6c, fid_c(tv.Mixed_6b, x))))
            x = fid_e(tv.Mixed_7c, fid_e(tv.Mixed_7b, tv.Mixed_7a(x), avg), max3)
        else:
            for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                         "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
                x = getattr(tv, name)(x)
        x = torch.nn.AdaptiveAvgPool2d(output_size=(1, 1))(x)
    return x.squeeze(3).squeeze(2).numpy()  # pytorch-fid's pred.squeeze(3).squeeze(2)


def test_pytorch_fid_inception_matches_a_transcription_of_pytorch_fid(tmp_path):
    from offshelf.fid_inception import fid_inception_feature_fn

    state = _random_fid_inception_state(seed=3)
    path = tmp_path / "pt_inception-standin.pth"
    torch.save(state, path)
    images = np.random.default_rng(21).integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)  # any size: resized
    ours = extract_features(images, fid_inception_feature_fn(path))
    expected = _pytorch_fid_transcription(state, images)
    assert ours.shape == (2, 2048) and np.isfinite(ours).all() and ours.std() > 1e-3  # not a dead network
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    # the FID patches matter: torchvision's own pooling gives other features
    plain = _pytorch_fid_transcription(state, images, patched=False)
    assert not np.allclose(ours, plain, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
    # grey images are RGB with three equal channels, as PIL's convert('RGB')
    grey = images[..., :1]
    np.testing.assert_allclose(extract_features(grey, fid_inception_feature_fn(path)),
                               _pytorch_fid_transcription(state, np.repeat(grey, 3, -1)), rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())


def test_pytorch_fid_inception_names_a_bad_file(tmp_path):
    from offshelf.fid_inception import load_fid_inception

    with pytest.raises(FileNotFoundError, match=r"missing\.pth.*pt_inception-2015-12-05-6726825d\.pth"):
        load_fid_inception(tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ValueError, match=r"wrong\.pth: does not fit pytorch-fid's Inception"):
        load_fid_inception(wrong)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pth: not a loadable pytorch-fid Inception state dict"):
        load_fid_inception(junk)
