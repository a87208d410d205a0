"""Sample-quality metrics: the digits classifier, FID/KID/IS, precision/recall, SampleQualityMetrics."""

import pytest
import torch

import dtr_lab.metrics.digits_classifier as dc
import dtr_lab.metrics.features as feats
from dtr_lab.data.digits import digits_split, load_digits_tensors
from dtr_lab.errors import DTRLabError
from dtr_lab.metrics import (
    Memorisation,
    SampleQualityMetrics,
    feature_extractor,
    frechet_distance,
    inception_score,
    kernel_distance,
    knn_radii,
    load_digits_classifier,
    manifold_coverage,
    precision_recall,
    train_digits_classifier,
)
from dtr_lab.metrics.features import to_uint8


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """Every test reads and writes the classifier cache in a temporary folder, never ~/.cache."""
    path = tmp_path_factory.mktemp("dtr_lab_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DTR_LAB_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def classifier(cache_dir):
    return load_digits_classifier()  # trains once, into cache_dir


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits_tensors()
    train_idx, val_idx = digits_split()
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


@pytest.fixture(scope="module")
def quality(classifier, digits):
    return SampleQualityMetrics(digits[0], feature="digits", kid_subset_size=100)


def noise_images(n, size=8, seed=1):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- the digits classifier -------------------------------------------------------------------


def test_digits_split_is_a_seeded_partition_with_a_tenth_held_out():
    train_idx, val_idx = digits_split(0)
    assert len(val_idx) == 180 and len(train_idx) == 1797 - 180
    assert sorted(torch.cat([train_idx, val_idx]).tolist()) == list(range(1797))
    again_train, again_val = digits_split(0)
    assert torch.equal(again_train, train_idx) and torch.equal(again_val, val_idx)
    assert not torch.equal(digits_split(1)[1], val_idx)


def test_digits_tensors_span_minus_one_to_one():
    x, y = load_digits_tensors()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1  # pixel 0 -> -1, pixel 16 -> 1
    assert sorted(y.unique().tolist()) == list(range(10))


def test_classifier_is_accurate_on_the_held_out_split(classifier, digits):
    _, _, x_val, y_val = digits
    acc = (classifier.predict(x_val) == y_val).float().mean().item()
    assert acc >= 0.95
    assert classifier.val_accuracy == pytest.approx(acc)


def test_classifier_is_cached_and_reloaded_without_training(classifier, cache_dir, monkeypatch):
    assert (cache_dir / "digits_classifier-v1.pt").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("retrained although the cache was valid")

    monkeypatch.setattr(dc, "train_digits_classifier", fail)
    reloaded = load_digits_classifier()
    for name, value in classifier.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value)


def test_corrupt_cache_is_retrained_and_rewritten(classifier, tmp_path, monkeypatch):
    path = tmp_path / "digits_classifier-v1.pt"
    path.write_bytes(b"not a checkpoint")
    calls = []
    monkeypatch.setattr(dc, "train_digits_classifier", lambda: calls.append(1) or classifier)
    load_digits_classifier(path)
    assert calls == [1]
    monkeypatch.setattr(dc, "train_digits_classifier", lambda: calls.append(2) or classifier)
    load_digits_classifier(path)  # now readable: no second training
    assert calls == [1]


def test_unwritable_cache_names_the_variable(classifier, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("DTR_LAB_CACHE", str(blocker))  # a file where a folder should be
    monkeypatch.setattr(dc, "train_digits_classifier", lambda: classifier)
    with pytest.raises(DTRLabError, match="DTR_LAB_CACHE") as err:
        load_digits_classifier()
    assert "\n" not in str(err.value)


def test_training_is_deterministic_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a = train_digits_classifier(seed=0, epochs=1)
    b = train_digits_classifier(seed=0, epochs=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_classifier_takes_any_size_by_area_averaging(classifier, digits):
    x = digits[2][:16]
    big = x.repeat_interleave(3, dim=2).repeat_interleave(3, dim=3)  # (16, 1, 24, 24), each pixel a 3×3 block
    assert classifier.features(x).shape == (16, classifier.num_features)
    torch.testing.assert_close(classifier.features(big), classifier.features(x))
    assert classifier.predict(big).shape == (16,)


# --- FID, KID, IS on precomputed features ----------------------------------------------------


def test_fid_of_a_set_against_itself_is_zero_and_against_noise_large():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(500, 16, generator=g) @ torch.randn(16, 16, generator=g)
    noise = torch.rand(500, 16, generator=g) * 10
    assert abs(frechet_distance(real, real)) < 1e-4
    assert frechet_distance(real, noise) > 100


def test_fid_of_a_shifted_copy_is_the_squared_shift():
    # Equal covariances cancel in the trace term, leaving ‖μ_r − μ_g‖².
    real = torch.randn(400, 8, generator=torch.Generator().manual_seed(0))
    shift = torch.tensor([3.0, 0, 0, 4.0, 0, 0, 0, 0])
    assert frechet_distance(real, real + shift) == pytest.approx(25.0, rel=1e-4)


def test_kid_is_near_zero_for_one_distribution_and_large_across_two():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    same, _ = kernel_distance(a, b, subsets=20, subset_size=100)
    apart, _ = kernel_distance(a, b + 3, subsets=20, subset_size=100)
    assert abs(same) < 0.05 and apart > 1


def test_kid_is_seeded_and_leaves_the_global_rng_alone():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g) + 0.5
    state = torch.get_rng_state()
    assert kernel_distance(a, b, 10, 50, seed=3) == kernel_distance(a, b, 10, 50, seed=3)
    assert torch.equal(torch.get_rng_state(), state)


def test_inception_score_bounds_by_hand():
    # Confident predictions spread evenly over K classes give IS = exp(H(uniform)) = K;
    # identical ones give 1. One split, so the marginal is exactly uniform.
    k, n = 5, 500
    confident = torch.nn.functional.one_hot(torch.arange(n) % k, k).double() * 50
    assert inception_score(confident, splits=1)[0] == pytest.approx(k, rel=1e-6)
    assert inception_score(torch.zeros(n, k), splits=5)[0] == pytest.approx(1.0)


# --- improved precision / recall -------------------------------------------------------------


def test_knn_radii_match_brute_force():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    d = torch.tensor([[float((p - q).norm()) for q in x] for p in x])
    d.fill_diagonal_(float("inf"))
    expected = d.sort(dim=1).values[:, 2]  # 3rd nearest other point
    torch.testing.assert_close(knn_radii(x, k=3, batch_size=7), expected, rtol=1e-5, atol=1e-5)


def test_manifold_coverage_on_a_line_by_hand():
    support = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    radii = knn_radii(support, k=1)  # all 1
    assert radii.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert manifold_coverage(torch.tensor([[0.5], [10.0]]), support, radii) == 0.5
    assert manifold_coverage(torch.tensor([[4.0], [-1.5]]), support, radii) == 0.5


def gaussians(n=1000, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)


def test_precision_recall_identical_and_same_distribution_are_near_one():
    real, fake = gaussians()
    assert precision_recall(real, real) == (1.0, 1.0)
    precision, recall = precision_recall(real, fake)
    assert precision > 0.9 and recall > 0.9


def test_precision_recall_of_disjoint_sets_are_zero():
    real, fake = gaussians()
    assert precision_recall(real, fake + 20) == (0.0, 0.0)


def test_precision_recall_order_with_overlap():
    real, fake = gaussians()
    # Samples packed in the real mode: realistic (high precision) but not diverse (low recall).
    precision, recall = precision_recall(real, 0.3 * fake)
    assert precision > 0.95 and recall < 0.5
    # Samples spread wider than the data: diverse but often unrealistic.
    precision, recall = precision_recall(real, 2.0 * fake)
    assert recall > 0.9 and precision < 0.5
    # A growing shift lowers both.
    shifts = [precision_recall(real, fake + s) for s in (0.0, 1.0, 2.0, 4.0)]
    for (p0, r0), (p1, r1) in zip(shifts, shifts[1:], strict=False):
        assert p1 < p0 and r1 < r0


# --- SampleQualityMetrics --------------------------------------------------------------------


def test_digits_fid_of_held_out_digits_is_far_below_noise(quality, digits):
    _, _, x_val, y_val = digits
    held_out = quality(x_val, y_val)
    noise = quality(noise_images(len(x_val)), y_val)
    keys = {
        "fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall", "memorised", "accuracy"
    }
    assert set(held_out) == keys
    assert held_out["fid"] < 0.2 * noise["fid"]
    assert held_out["kid_mean"] < 0.2 * noise["kid_mean"]
    assert held_out["precision"] > 0.8 and noise["precision"] < 0.2
    assert held_out["recall"] > 0.8 and noise["recall"] < 0.2
    assert held_out["is_mean"] > noise["is_mean"]
    assert held_out["accuracy"] >= 0.95 and noise["accuracy"] < 0.3
    # held-out digits are fresh draws (about the quantile, 5 %, score as copies); copies of training
    # images score 1 beside an FID near the held-out one
    copies = quality(digits[0][:180], digits[1][:180])
    assert copies["memorised"] == 1.0 and held_out["memorised"] < 0.2 and noise["memorised"] == 0.0


# --- memorisation ----------------------------------------------------------------------------


def test_memorisation_on_points_worked_by_hand():
    # training "images" on a line at 0, 1, 3, 6, 10 (1×1×1 pixels): leave-one-out nearest distances
    # 1, 1, 2, 3, 4; their median (q = 0.5) is τ = 2
    train = torch.tensor([0.0, 1.0, 3.0, 6.0, 10.0]).div(10).view(5, 1, 1, 1)
    memo = Memorisation(train, quantile=0.5)
    assert memo.threshold == pytest.approx(0.2)
    # nearest training distances 0 (a copy of 3), 0.1 (to 6), 0.15 (to 6): copies; 0.3 and 0.5 (to 10): not
    samples = torch.tensor([3.0, 5.0, 7.5, 13.0, 15.0]).div(10).view(5, 1, 1, 1)
    assert memo.distances(samples).tolist() == pytest.approx([0.0, 0.1, 0.15, 0.3, 0.5])
    assert memo(samples) == pytest.approx(3 / 5)


def test_memorisation_copies_score_one_and_held_out_draws_about_the_quantile():
    gen = torch.Generator().manual_seed(0)
    data = torch.rand(1200, 1, 8, 8, generator=gen) * 2 - 1  # one distribution, split in two
    train, held_out = data[:1000], data[1000:]
    memo = Memorisation(train, quantile=0.05)
    assert memo(train[torch.randperm(1000, generator=gen)[:200]]) == 1.0
    assert memo(held_out) < 0.15  # ≈ 0.05 in expectation
    assert memo(to_uint8(train[:50])) == 1.0  # uint8 images are the same copies


def test_memorisation_rejects_a_quantile_outside_0_1():
    with pytest.raises(DTRLabError, match="quantile=1.5 must be in"):
        Memorisation(torch.zeros(3, 1, 2, 2), quantile=1.5)


def test_digits_kid_is_on_a_scale_that_separates_quality(quality, digits):
    """KID's cubic kernel sees the digits features divided by the real set's RMS per dimension: held-out
    real digits score near zero and blurred ones clearly above, beyond the spread over subsets. On the
    raw features (mean square ≈ 127 per dimension) held-out digits scored ≈ 8000 ± 25000."""
    _, _, x_val, _ = digits
    features = quality.real_features
    assert quality.kid_scale == pytest.approx(((features**2).sum(1).mean() / features.shape[1]).sqrt().item())
    assert quality.kid_scale > 5  # the rescaling matters for these features
    held_out = quality(x_val)
    blurred = quality(torch.nn.functional.avg_pool2d(x_val.float(), 3, 1, 1))
    assert abs(held_out["kid_mean"]) < 0.1 and held_out["kid_std"] < 0.2
    assert blurred["kid_mean"] > 0.5 and blurred["kid_mean"] > 3 * blurred["kid_std"]


def test_accuracy_counts_the_conditioning_label(quality, digits):
    _, _, x_val, y_val = digits
    wrong = (y_val + 1) % 10
    assert quality(x_val, wrong)["accuracy"] < 0.05
    assert "accuracy" not in quality(x_val)


def test_uint8_and_float_images_score_alike(quality, digits):
    x_val = digits[2]
    as_uint8 = ((x_val + 1) * 127.5).round().to(torch.uint8)
    a, b = quality(x_val), quality(as_uint8)
    assert a["fid"] == pytest.approx(b["fid"], rel=0.02)
    assert a["precision"] == pytest.approx(b["precision"], abs=0.02)


def test_larger_images_are_scored_after_area_resizing(quality, digits):
    x_val = digits[2]
    big = x_val.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # (N, 1, 16, 16)
    assert quality(big)["fid"] == pytest.approx(quality(x_val)["fid"], rel=1e-4)


# --- bad input -------------------------------------------------------------------------------


def one_line(err):
    assert "\n" not in str(err.value)


def test_fewer_samples_than_the_kid_subset_size(quality, digits):
    with pytest.raises(DTRLabError, match="kid_subset_size=100") as err:
        quality(digits[2][:50])
    one_line(err)
    with pytest.raises(DTRLabError, match="kid_subset_size=500"):
        SampleQualityMetrics(digits[2], kid_subset_size=500)


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.zeros(120, 8, 8), r"\(N, C, H, W\)"),
        (torch.zeros(120, 1, 8, 8, dtype=torch.int64), "uint8"),
        (torch.full((120, 1, 8, 8), 200.0), r"\[-1, 1\]"),
        (torch.zeros(120, 3, 8, 8), "channels"),
    ],
)
def test_bad_generated_images(quality, images, match):
    with pytest.raises(DTRLabError, match=match) as err:
        quality(images)
    one_line(err)


def test_labels_of_the_wrong_length(quality, digits):
    with pytest.raises(DTRLabError, match="labels") as err:
        quality(digits[2], digits[3][:10])
    one_line(err)


def test_rgb_images_with_digits_features(classifier):
    with pytest.raises(DTRLabError, match="feature: inception") as err:
        SampleQualityMetrics(torch.zeros(120, 3, 8, 8))
    one_line(err)


def test_unknown_feature_and_bad_k(classifier, digits):
    with pytest.raises(DTRLabError, match="'vgg'.*digits, inception"):
        feature_extractor("vgg")
    with pytest.raises(DTRLabError, match="k=5"):
        precision_recall(torch.zeros(4, 2), torch.zeros(4, 2), k=5)


def test_inception_without_torch_fidelity(monkeypatch):
    monkeypatch.setattr(feats, "_has_torch_fidelity", lambda: False)
    with pytest.raises(DTRLabError, match="torch-fidelity.*feature: digits") as err:
        feature_extractor("inception")
    one_line(err)


def test_inception_offline_without_weights(monkeypatch, tmp_path):
    # As if torch-fidelity were installed but its weights were neither given nor cached:
    # the error must come before anything could try to download them.
    monkeypatch.setattr(feats, "_has_torch_fidelity", lambda: True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(DTRLabError, match="inception_weights.*feature: digits") as err:
        SampleQualityMetrics(torch.zeros(120, 3, 8, 8, dtype=torch.uint8), feature="inception")
    one_line(err)
    with pytest.raises(DTRLabError, match="missing.pth is not a file"):
        feature_extractor("inception", inception_weights=tmp_path / "missing.pth")
