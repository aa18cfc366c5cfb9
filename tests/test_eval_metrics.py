"""Set and pair metrics (`llmga.eval.metrics`), the FID Inception and VGG LPIPS networks with random weights written
in their public file layouts (`llmga.eval.networks`), and cached feature extraction (`llmga.eval.features`)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from scipy import signal
from torchvision.models import inception_v3

from llmga.eval import features as features_module
from llmga.eval.features import (
    FeatureCache,
    clip_image_extractor,
    extract_features,
    inception_extractor,
    list_images,
    pick_images,
    stats_for,
)
from llmga.eval.metrics import (
    FeatureStats,
    clip_score,
    feature_stats,
    fid,
    frechet_distance,
    inception_score,
    psnr,
    softmax,
    ssim,
)
from llmga.eval.networks import (
    INCEPTION_FILE,
    INCEPTION_URL,
    LPIPS,
    LPIPS_LIN_FILE,
    LPIPS_LIN_URL,
    LPIPS_VGG_FILE,
    LPIPS_VGG_URL,
    InceptionFeatures,
    load_inception,
    load_lpips,
)
from llmga.eval.pairs import EvalInputError
from llmga.eval.weights import EVAL_MODELS_ENV, find_diffrir_weights, find_metric_weights, metric_folders
from llmga.hub import ModelNotFoundError

# --- FID, IS, CLIP score ----------------------------------------------------------------------------------------

def test_fid_of_a_set_with_itself_is_zero():
    stats = feature_stats(np.random.default_rng(0).normal(size=(200, 16)))
    assert fid(stats, stats) == pytest.approx(0, abs=1e-6)


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_gaussian_samples_matches_an_eigenvalue_computation():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 1.5
    sa, sb = feature_stats(a), feature_stats(b)
    # Tr sqrt(S1 S2) = sum of the square roots of the (real, non-negative) eigenvalues of S1 S2.
    trace_sqrt = np.sum(np.sqrt(np.linalg.eigvals(sa.sigma @ sb.sigma).real.clip(0)))
    expected = np.sum((sa.mu - sb.mu) ** 2) + np.trace(sa.sigma) + np.trace(sb.sigma) - 2 * trace_sqrt
    assert fid(sa, sb) == pytest.approx(expected, rel=1e-6)
    assert sa.count == 500 and sa.sigma.shape == (6, 6)


def test_frechet_distance_survives_singular_covariances():
    rng = np.random.default_rng(3)
    few = feature_stats(rng.normal(size=(3, 10)))  # rank 2 of 10
    assert np.isfinite(fid(few, feature_stats(rng.normal(size=(4, 10)))))


def test_frechet_distance_rejects_statistics_of_different_sizes():
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_need_two_rows():
    with pytest.raises(ValueError, match="at least 2"):
        feature_stats(np.ones((1, 4)))


def test_feature_stats_round_trip_and_read_pytorch_fid_files(tmp_path: Path):
    stats = feature_stats(np.random.default_rng(4).normal(size=(10, 3)))
    stats.save(tmp_path / "stats.npz")
    loaded = FeatureStats.load(tmp_path / "stats.npz")
    assert np.array_equal(loaded.mu, stats.mu) and np.array_equal(loaded.sigma, stats.sigma) and loaded.count == 10
    assert [p.name for p in tmp_path.iterdir()] == ["stats.npz"]  # no temporary file left
    np.savez_compressed(tmp_path / "fid.npz", mu=stats.mu.astype(np.float32), sigma=stats.sigma)  # pytorch-fid's
    assert FeatureStats.load(tmp_path / "fid.npz").count == 0
    np.savez(tmp_path / "other.npz", features=np.ones(3))
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        FeatureStats.load(tmp_path / "other.npz")


def test_inception_score_of_a_uniform_classifier_is_one():
    mean, std = inception_score(np.full((100, 7), 1 / 7))
    assert mean == pytest.approx(1) and std == pytest.approx(0)


def test_inception_score_of_a_confident_classifier_over_balanced_classes_is_the_class_count():
    probs = np.eye(10)[np.arange(1000) % 10]  # each split of 100 holds every class 10 times
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(10) and std == pytest.approx(0, abs=1e-9)
    assert inception_score(softmax(np.log(probs * 0.99 + 0.001)))[0] > 8


def test_inception_score_needs_as_many_images_as_splits():
    with pytest.raises(ValueError, match="10 chunks"):
        inception_score(np.full((5, 3), 1 / 3))


def test_softmax_rows_are_distributions():
    probs = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    assert np.allclose(probs, [[1, 0], [0.5, 0.5]])


def test_clip_score_known_values():
    images = np.array([[1.0, 0, 0], [0, 2, 0], [1, 1, 0]])
    texts = np.array([[0.0, 5, 0], [0, 1, 0], [-1, -1, 0]])
    assert np.allclose(clip_score(images, texts), [0, 100, 0])  # orthogonal, identical direction, negative
    assert clip_score(np.array([1.0, 1]), np.array([1.0, 0]))[0] == pytest.approx(100 / np.sqrt(2))


# --- PSNR, SSIM ---------------------------------------------------------------------------------------------------

def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM written out with a 2-D valid correlation (BasicSR's formula, cv2's Gaussian kernel), channel by channel."""
    taps = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    window = np.outer(taps, taps) / taps.sum() ** 2
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for channel in range(a.shape[2]):
        x, y = a[..., channel] * 255.0, b[..., channel] * 255.0

        def blur(image):
            return signal.correlate2d(image, window, mode="valid")

        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        values.append((((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean())
    return float(np.mean(values))


def test_identical_images_have_infinite_psnr_and_ssim_one():
    image = np.random.default_rng(5).uniform(size=(16, 20, 3))
    assert psnr(image, image) == float("inf")
    assert ssim(image, image) == pytest.approx(1)


def test_psnr_of_a_constant_offset():
    image = np.full((8, 8, 3), 0.5)
    assert psnr(image, image + 0.1) == pytest.approx(20)  # MSE = 25.5^2 on the 0-255 scale
    assert psnr(image * 255, image * 255 + 25.5, max_value=255) == pytest.approx(20)


def test_ssim_matches_a_direct_computation_and_is_symmetric():
    rng = np.random.default_rng(6)
    a = rng.uniform(size=(17, 23, 3))
    b = np.clip(a + rng.normal(scale=0.1, size=a.shape), 0, 1)
    assert ssim(a, b) == pytest.approx(reference_ssim(a, b), rel=1e-10)
    assert ssim(a, b) == pytest.approx(ssim(b, a), rel=1e-12)
    assert ssim(a[..., 0], b[..., 0]) == pytest.approx(reference_ssim(a[..., :1], b[..., :1]), rel=1e-10)


def test_ssim_decreases_with_noise():
    rng = np.random.default_rng(7)
    image = np.tile(np.linspace(0, 1, 32), (32, 1))[..., None].repeat(3, axis=2)
    noise = rng.normal(size=image.shape)
    scores = [ssim(image, np.clip(image + level * noise, 0, 1)) for level in (0.01, 0.05, 0.2)]
    assert 1 > scores[0] > scores[1] > scores[2]


def test_pair_metrics_reject_images_of_different_sizes_or_too_small():
    with pytest.raises(ValueError, match="same size"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((8, 30, 3)), np.zeros((8, 30, 3)))


# --- FID Inception -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inception() -> torch.nn.Module:
    torch.manual_seed(0)
    return InceptionFeatures().eval()


def test_inception_gives_pool_and_logits_for_any_input_size(inception):
    for size in (64, 299):
        images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            pool, logits = inception(images)
            again = inception(images)
        assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
        assert torch.equal(pool, again[0]) and torch.equal(logits, again[1])


def test_inception_has_the_pytorch_fid_weight_layout(inception):
    """pytorch-fid loads the file strictly into torchvision's Inception3(num_classes=1008, aux_logits=False)."""
    layout = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False).state_dict()
    assert set(inception.state_dict()) == set(layout)
    shapes = {key: tuple(value.shape) for key, value in inception.state_dict().items()}
    assert shapes["Mixed_5b.branch1x1.conv.weight"] == (64, 192, 1, 1)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["fc.weight"] == (1008, 2048)
    InceptionFeatures().load_state_dict(layout, strict=True)


def test_inception_logits_are_the_softmax_layer_without_its_bias(inception):
    with torch.no_grad():
        pool, logits = inception(torch.rand(1, 3, 32, 32))
    assert torch.allclose(logits, pool @ inception.fc.weight.T, atol=1e-5)


@pytest.mark.parametrize("form", ["pth-folder", "pth-file", "safetensors"])
def test_load_inception_round_trips_a_saved_state_dict(tmp_path: Path, inception, form: str):
    state = {key: value.clone() for key, value in inception.state_dict().items()
             if not key.endswith("num_batches_tracked")}  # as old files: no BatchNorm step counters
    if form == "safetensors":
        file = tmp_path / "pt_inception-2015-12-05-6726825d.safetensors"
        save_file(state, file)
    else:
        file = tmp_path / INCEPTION_FILE
        torch.save(state, file)
    loaded = load_inception(tmp_path if form == "pth-folder" else file)
    images = torch.rand(2, 3, 40, 48)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded(images), inception(images), strict=True))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.name == ("inception-fid-2015-12-05" if form != "safetensors"
                           else "inception-fid-pt_inception-2015-12-05-6726825d")


def test_load_inception_rejects_other_weights(tmp_path: Path, inception):
    state = dict(inception.state_dict())
    del state["fc.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / INCEPTION_FILE)
    with pytest.raises(ModelNotFoundError, match="1 missing, e.g. fc.weight; 1 unexpected") as error:
        load_inception(tmp_path)
    assert INCEPTION_URL in str(error.value)
    (tmp_path / INCEPTION_FILE).write_bytes(b"not a pickle")
    with pytest.raises(ModelNotFoundError, match="not a readable weight file"):
        load_inception(tmp_path)


# --- LPIPS ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lpips() -> torch.nn.Module:
    torch.manual_seed(1)
    return LPIPS().eval()


def test_lpips_is_zero_for_equal_images_positive_otherwise_and_symmetric(lpips):
    generator = torch.Generator().manual_seed(2)
    x, y = torch.rand(3, 3, 32, 40, generator=generator), torch.rand(3, 3, 32, 40, generator=generator)
    with torch.no_grad():
        same, forward, backward = lpips(x, x), lpips(x, y), lpips(y, x)
    assert same.shape == (3,) and torch.all(same.abs() < 1e-7)
    assert torch.all(forward > 0)
    assert torch.allclose(forward, backward, rtol=1e-5)
    with pytest.raises(ValueError, match="one size"):
        lpips(x, y[:, :, :16])


def write_lpips_files(folder: Path, model: torch.nn.Module) -> tuple[Path, Path]:
    """The model's weights as torchvision's vgg16 file (features.* + classifier.*) and lpips' heads file."""
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    vgg = {key: value.clone() for key, value in state.items() if key.startswith("features.")}
    vgg |= {"classifier.6.weight": torch.zeros(10, 4096), "classifier.6.bias": torch.zeros(10)}
    lin = {f"lin{k}.model.1.weight": state[f"lin{k}.model.1.weight"].clone() for k in range(5)}
    torch.save(vgg, folder / LPIPS_VGG_FILE)
    torch.save(lin, folder / LPIPS_LIN_FILE)
    return folder / LPIPS_VGG_FILE, folder / LPIPS_LIN_FILE


def test_load_lpips_round_trips_files_with_the_official_key_names(tmp_path: Path, lpips):
    vgg, lin = write_lpips_files(tmp_path / "weights", lpips)
    assert sorted(torch.load(lin, weights_only=True)) == [f"lin{k}.model.1.weight" for k in range(5)]
    x, y = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    for loaded in (load_lpips(vgg, lin), load_lpips(tmp_path / "weights", tmp_path / "weights")):
        with torch.no_grad():
            assert torch.equal(loaded(x, y), lpips(x, y))
        assert not loaded.training


def test_load_lpips_names_the_file_that_does_not_fit(tmp_path: Path, lpips):
    vgg, lin = write_lpips_files(tmp_path, lpips)
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, lin)
    with pytest.raises(ModelNotFoundError, match=r"vgg\.pth does not hold .* \(4 missing") as error:
        load_lpips(vgg, lin)
    assert LPIPS_LIN_URL in str(error.value)


@pytest.mark.parametrize("case", ["inception file", "inception folder", "lpips vgg", "lpips lin"])
def test_missing_weights_name_the_file_and_where_to_get_it(tmp_path: Path, lpips, case: str):
    vgg, lin = write_lpips_files(tmp_path / "lpips", lpips)
    call, filename, url = {
        "inception file": (lambda: load_inception(tmp_path / "nowhere" / INCEPTION_FILE), INCEPTION_FILE,
                           INCEPTION_URL),
        "inception folder": (lambda: load_inception(tmp_path), INCEPTION_FILE, INCEPTION_URL),
        "lpips vgg": (lambda: load_lpips(tmp_path / "empty", lin), LPIPS_VGG_FILE, LPIPS_VGG_URL),
        "lpips lin": (lambda: load_lpips(vgg, tmp_path / "missing.pth"), LPIPS_LIN_FILE, LPIPS_LIN_URL),
    }[case]
    with pytest.raises(ModelNotFoundError) as error:
        call()
    assert filename in str(error.value) and url in str(error.value)


# --- where weights are found (llmga.eval.weights) ------------------------------------------------------------------


def test_metric_weights_come_from_the_flag_then_the_env_folder_then_the_eval_folders(tmp_path: Path, monkeypatch):
    env, first, second = (tmp_path / name for name in ("env", "models-a", "models-b"))
    for folder in (env, first, second):
        folder.mkdir()
    (second / INCEPTION_FILE).write_bytes(b"weights")
    monkeypatch.delenv(EVAL_MODELS_ENV, raising=False)
    assert metric_folders([first, second]) == [first, second]
    assert find_metric_weights("inception", None, [first, second]) == second / INCEPTION_FILE
    (first / INCEPTION_FILE).write_bytes(b"weights")
    assert find_metric_weights("inception", None, [first, second]) == first / INCEPTION_FILE
    monkeypatch.setenv(EVAL_MODELS_ENV, str(env))
    assert metric_folders([first]) == [env, first]
    assert find_metric_weights("inception", None, [first, second]) == first / INCEPTION_FILE  # env folder lacks it
    (env / INCEPTION_FILE).write_bytes(b"weights")
    assert find_metric_weights("inception", None, [first, second]) == env / INCEPTION_FILE
    given = tmp_path / "mine.pth"
    given.write_bytes(b"weights")
    assert find_metric_weights("inception", given, [first]) == given


def test_missing_metric_weights_name_the_file_the_folders_and_the_address(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(EVAL_MODELS_ENV, str(tmp_path / "env"))
    with pytest.raises(ModelNotFoundError) as error:
        find_metric_weights("lpips-lin", None, [tmp_path / "models" / "eval"])
    message = str(error.value)
    assert LPIPS_LIN_FILE in message and LPIPS_LIN_URL in message and "--lpips-lin" in message
    assert str(tmp_path / "env") in message and str(tmp_path / "models" / "eval") in message
    with pytest.raises(ModelNotFoundError, match=r"--clip .*gone does not exist.*openai/clip-vit-base-patch32"):
        find_metric_weights("clip", tmp_path / "gone", [tmp_path])


def test_diffrir_weights_are_a_path_or_a_name_in_the_folders(tmp_path: Path):
    folder = tmp_path / "diffrir"
    folder.mkdir()
    (folder / "net.pth").write_bytes(b"weights")
    assert find_diffrir_weights(str(folder / "net.pth"), []) == folder / "net.pth"
    assert find_diffrir_weights("net.pth", [tmp_path / "other", folder]) == folder / "net.pth"
    with pytest.raises(ModelNotFoundError, match=r"'other.pth' are neither a file nor in .*diffrir.*Google Drive"):
        find_diffrir_weights("other.pth", [folder])


# --- feature extraction and cache ----------------------------------------------------------------------------------

class MeanColour:
    """A fake extractor: the mean colour of each image, and the sizes it was called with."""

    name = "mean-colour"
    image_size = None

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        self.calls.append(tuple(images.shape))
        return {"mean": images.mean(dim=(2, 3)).numpy(), "corner": images[:, :, 0, 0].numpy()}


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Five PNGs of two sizes in one folder, colour (10 i, 20 i, 30 i)."""
    folder = tmp_path / "images"
    folder.mkdir()
    return [write_image(folder / f"{i}.png", (10 * i, 20 * i, 30 * i), (8, 8) if i % 2 else (12, 10))
            for i in range(5)]


def expected_means(paths: list[Path]) -> np.ndarray:
    return np.array([[10, 20, 30] for _ in paths]) * np.array([[int(p.stem)] for p in paths]) / 255


def test_rows_follow_the_paths_order_and_mixed_sizes_run_in_separate_batches(images):
    extractor = MeanColour()
    order = [images[3], images[0], images[4], images[1], images[2]]
    result = extract_features(order, extractor, batch_size=2, progress=False)
    assert np.allclose(result["mean"], expected_means(order), atol=1e-6)
    assert result["corner"].shape == (5, 3)
    assert sorted(extractor.calls) == [(1, 3, 10, 12), (2, 3, 8, 8), (2, 3, 10, 12)]  # 3 of 12x10, 2 of 8x8


def test_image_size_resizes_every_image(images):
    extractor = MeanColour()
    result = extract_features(images, extractor, batch_size=8, image_size=6, progress=False)
    assert extractor.calls == [(5, 3, 6, 6)]
    assert np.allclose(result["mean"], expected_means(images), atol=1e-6)


def test_second_extraction_reads_the_cache(tmp_path: Path, images):
    first = MeanColour()
    computed = extract_features(images, first, cache=FeatureCache(tmp_path / "cache"), progress=False)
    second = MeanColour()
    cached = extract_features(images[::-1], second, cache=FeatureCache(tmp_path / "cache"), progress=False)
    assert second.calls == []
    assert np.array_equal(cached["mean"], computed["mean"][::-1])
    resized = MeanColour()
    extract_features(images, resized, cache=FeatureCache(tmp_path / "cache"), image_size=4, progress=False)
    assert sum(shape[0] for shape in resized.calls) == 5  # features of resized images are cached apart


def test_a_modified_file_is_recomputed(tmp_path: Path, images):
    extract_features(images, MeanColour(), cache=FeatureCache(tmp_path / "cache"), progress=False)
    stat = images[2].stat()
    write_image(images[2], (200, 100, 50), (12, 10))
    os.utime(images[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    extractor = MeanColour()
    result = extract_features(images, extractor, cache=FeatureCache(tmp_path / "cache"), progress=False)
    assert extractor.calls == [(1, 3, 10, 12)]
    assert np.allclose(result["mean"][2], np.array([200, 100, 50]) / 255, atol=1e-6)


def test_an_interrupted_write_leaves_a_readable_cache(tmp_path: Path, images, monkeypatch):
    extract_features(images[:3], MeanColour(), cache=FeatureCache(tmp_path / "cache"), progress=False)

    def savez_then_die(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(features_module.np, "savez", savez_then_die)
    with pytest.raises(KeyboardInterrupt):
        extract_features(images, MeanColour(), cache=FeatureCache(tmp_path / "cache"), progress=False)
    monkeypatch.undo()
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    next((tmp_path / "cache").rglob("*.npz")).with_name("00-torn.npz").write_bytes(b"PK torn")
    extractor = MeanColour()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = extract_features(images, extractor, cache=FeatureCache(tmp_path / "cache"), progress=False)
    assert any("00-torn.npz" in str(warning.message) for warning in caught)
    assert sum(shape[0] for shape in extractor.calls) == 2  # the three rows written before are still there
    assert np.allclose(result["mean"], expected_means(images), atol=1e-6)


def test_many_flushes_are_merged_into_few_chunks(tmp_path: Path, images):
    cache = FeatureCache(tmp_path / "cache")
    for round_ in range(20):
        cache.put("fake", images[round_ % 5], {"value": np.array([round_])})
        cache.flush()
    shard = list((tmp_path / "cache").rglob("*.npz"))
    assert len(shard) <= features_module.MERGE_AFTER
    fresh = FeatureCache(tmp_path / "cache")
    assert [int(fresh.get("fake", path)["value"][0]) for path in images] == [15, 16, 17, 18, 19]
    assert fresh.get("other", images[0]) is None


def test_stats_for_a_folder_a_path_list_and_an_npz(tmp_path: Path, images):
    extractor = MeanColour()
    from_folder = stats_for(images[0].parent, extractor, feature="mean", progress=False)
    from_paths = stats_for(images, extractor, feature="mean", progress=False)
    assert list_images(images[0].parent) == sorted(images)
    assert np.allclose(from_folder.mu, from_paths.mu) and from_folder.count == 5
    from_folder.save(tmp_path / "stats.npz")
    assert np.array_equal(stats_for(tmp_path / "stats.npz", extractor).sigma, from_folder.sigma)


def test_evaluation_images_are_all_or_a_seeded_draw_in_name_order(tmp_path: Path, images):
    folder = images[0].parent
    assert pick_images(folder) == list_images(folder)
    drawn = pick_images(folder, 3, seed=4)
    assert drawn == pick_images(folder, 3, seed=4) and drawn == sorted(drawn) and len(set(drawn)) == 3
    assert {tuple(pick_images(folder, 3, seed=seed)) for seed in range(6)} != {tuple(drawn)}
    with pytest.raises(EvalInputError, match=r"--num 6 but .* holds 5 images: give --num between 1 and 5"):
        pick_images(folder, 6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalInputError, match="holds no images"):
        pick_images(tmp_path / "empty")
    with pytest.raises(EvalInputError, match="is not a folder"):
        pick_images(tmp_path / "missing")


def test_inception_extractor_gives_pool_and_logits(images, inception):
    result = extract_features(images[:2], inception_extractor(inception), progress=False)
    assert result["pool"].shape == (2, 2048) and result["logits"].shape == (2, 1008)
    assert result["pool"].dtype == np.float32


def test_clip_image_extractor_hands_clip_the_images_as_read(images):
    seen = []

    def embed_images(pil_images):
        seen.extend(np.asarray(image) for image in pil_images)
        return torch.ones(len(pil_images), 4)

    clip = SimpleNamespace(model=SimpleNamespace(name_or_path="/models/clip-vit-base-patch32"),
                           embed_images=embed_images)
    extractor = clip_image_extractor(clip)
    result = extract_features(images[1:2], extractor, progress=False)
    assert extractor.name == "clip-image-clip-vit-base-patch32"
    assert result["embed"].shape == (1, 4)
    assert np.array_equal(seen[0], np.asarray(Image.open(images[1]).convert("RGB")))
