"""The U-Net's object scores: features read off the maps, the scorer, its fitting, and what
it does on real images."""

from dataclasses import replace

import numpy as np
import pytest

from napari_deepcens.errors import WeightsError
from napari_deepcens.postprocess.object_score import (
    FEATURES,
    ObjectScorer,
    drop_low_scores,
    object_features,
)
from napari_deepcens.training.object_scorer import fit_object_scorer

from .conftest import DSB_VAL


def _column(name: str) -> int:
    return FEATURES.index(name)


def test_features_of_hand_made_objects():
    """Two touching 6×6 squares in the middle, a 4×4 one on the left border, an L shape."""
    labels = np.zeros((20, 30), np.int32)
    labels[5:11, 10:16] = 1
    labels[5:11, 16:22] = 2
    labels[12:16, 0:4] = 3
    labels[14:18, 24:26] = 4
    labels[16:18, 26:28] = 4  # L: 8 + 4 = 12 px in a 4×4 box
    fg = np.full(labels.shape, 0.1, np.float32)
    fg[labels > 0] = 0.9
    fg[7, 12] = 0.55                       # one weak pixel inside square 1 (not on its rim)
    fg[5, 16:22] = 0.7                     # square 2's top side (part of its rim) is weaker
    dist = np.zeros(labels.shape, np.float32)
    dist[8, 13] = 1.0                       # square 1 has a confident centre
    f = object_features(labels, fg, dist, object_scale=0.5)
    assert f.shape == (4, len(FEATURES))
    np.testing.assert_allclose(f[:, _column("log_area")], np.log(np.array([36, 36, 16, 12]) / 0.25),
                               rtol=1e-6)
    np.testing.assert_allclose(f[:, _column("log_rel_area")], np.log(np.array([36, 36, 16, 12]) / 26),
                               rtol=1e-6)
    assert f[0, _column("fg_core_min")] == pytest.approx(0.55)
    assert f[1, _column("fg_core_min")] == pytest.approx(0.9)
    assert f[0, _column("fg_mean")] == pytest.approx((35 * 0.9 + 0.55) / 36)
    assert f[1, _column("fg_rim_mean")] == pytest.approx((6 * 0.7 + 14 * 0.9) / 20)
    assert f[0, _column("fg_rim_mean")] == pytest.approx(0.9)
    np.testing.assert_allclose(f[:, _column("dist_mean")], [1 / 36, 0, 0, 0], rtol=1e-6)
    # a 1-px-wide sliver is all rim: its lowest probability anywhere stands for the core
    sliver = np.zeros((5, 9), np.int32)
    sliver[2, 1:8] = 1
    low = np.full(sliver.shape, 0.9, np.float32)
    low[2, 4] = 0.3
    assert object_features(sliver, low, low * 0)[0, _column("fg_core_min")] == pytest.approx(0.3)
    np.testing.assert_allclose(f[:, _column("dist_max")], [1, 0, 0, 0])
    # the 20-px rim of each square; 6 of it is the shared side
    np.testing.assert_allclose(f[:, _column("shared_rim")], [6 / 20, 6 / 20, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(f[:, _column("border")], [0, 0, 1, 0])
    np.testing.assert_allclose(f[:, _column("extent")], [1, 1, 1, 12 / 16], rtol=1e-6)
    np.testing.assert_allclose(f[:, _column("log_count")], np.log(4), rtol=1e-6)
    np.testing.assert_allclose(f[:, _column("log_object_scale")], np.log(0.5), rtol=1e-6)
    assert object_features(np.zeros((8, 8), np.int32), fg[:8, :8], dist[:8, :8]).shape == (0, len(FEATURES))
    with pytest.raises(ValueError, match="without gaps"):
        object_features(np.where(labels == 2, 0, labels), fg, dist)


def test_drop_low_scores_renumbers_in_order():
    labels = np.array([[1, 1, 0, 2], [3, 3, 0, 4]], np.int32)
    out = drop_low_scores(labels, np.array([0.9, 0.2, 0.5, 0.1]), 0.5)
    np.testing.assert_array_equal(out, [[1, 1, 0, 0], [2, 2, 0, 0]])


def _separable(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    y = x[:, 2] + 0.5 * x[:, 5] > 0.2
    return x, y


def test_fit_learns_a_separable_rule_and_round_trips():
    x, y = _separable()
    scorer = fit_object_scorer(x, y, seed=3)
    again = fit_object_scorer(x, y, seed=3)
    np.testing.assert_array_equal(scorer(x), again(x))           # deterministic
    test_x, test_y = _separable(seed=1)
    assert ((scorer(test_x) > 0.5) == test_y).mean() > 0.95
    copy = ObjectScorer.from_dict(scorer.to_dict())
    np.testing.assert_allclose(copy(test_x), scorer(test_x))
    linear = fit_object_scorer(x, y, hidden=0)
    assert len(linear.layers) == 1 and ((linear(test_x) > 0.5) == test_y).mean() > 0.95


def test_malformed_or_foreign_scorers_are_refused():
    good = fit_object_scorer(*_separable(), hidden=0).to_dict()
    with pytest.raises(WeightsError, match="malformed"):
        ObjectScorer.from_dict({**good, "layers": [[[[1.0, 2.0]], [0.0]]]})
    with pytest.raises(WeightsError, match="malformed"):
        ObjectScorer.from_dict({k: v for k, v in good.items() if k != "mean"})
    with pytest.raises(WeightsError, match="not finite"):
        ObjectScorer.from_dict({**good, "std": [0.0] * len(FEATURES)})
    with pytest.raises(WeightsError, match="not finite"):
        ObjectScorer.from_dict({**good, "mean": [float("nan"), *good["mean"][1:]]})
    with pytest.raises(WeightsError, match="features"):
        ObjectScorer.from_dict({**good, "features": ["area", *good["features"][1:]]})


def test_fit_needs_both_kinds_of_objects():
    from napari_deepcens.errors import DeepCeNSError

    x, _ = _separable()
    with pytest.raises(DeepCeNSError, match="both kinds"):
        fit_object_scorer(x, np.ones(len(x), bool))


def test_bundled_unet_scores_drop_false_objects_on_real_nuclei():
    """Val 0bda515e (dim fluorescence nuclei): with the tuned score threshold the bundled U-Net
    loses false objects and keeps its matches, so AP@0.5 rises; with 0 nothing is dropped."""
    from napari_deepcens import Predictor
    from napari_deepcens.evaluation.metrics import match_image
    from napari_deepcens.io.images import read_image, read_labels

    folder = next(p for p in DSB_VAL.iterdir() if p.name.startswith("0bda"))
    image, truth = read_image(folder / "image.png"), read_labels(folder / "labels.png")
    predictor = Predictor.from_name("unet", device="cpu")
    assert predictor.object_scorer is not None
    raw = predictor.predict(image)
    tuned = predictor.default_params(raw.scale)
    assert 0.2 <= tuned.score_threshold <= 0.6
    scored = predictor.instances(raw, tuned)
    unscored = predictor.instances(raw, replace(tuned, score_threshold=0.0))
    assert scored.scores is not None and len(scored.scores) == scored.labels.max()
    assert scored.scores.min() >= tuned.score_threshold
    assert len(unscored.scores) == unscored.labels.max() > scored.labels.max()
    with_scores, without = match_image(truth, scored.labels), match_image(truth, unscored.labels)
    assert with_scores.counts(0.5)[0] >= without.counts(0.5)[0] - 1      # matches kept
    assert with_scores.ap(0.5) > without.ap(0.5) + 0.02, (with_scores.ap(0.5), without.ap(0.5))


def test_weights_without_a_scorer_keep_every_object(tmp_path):
    from napari_deepcens import Predictor
    from napari_deepcens.models.registry import bundled_weights
    from napari_deepcens.models.weights import load_weights, save_weights

    model, info = load_weights(bundled_weights("unet"))
    plain = save_weights(tmp_path / "plain.safetensors", model, replace(info, object_scorer={}))
    predictor = Predictor.from_weights(plain, device="cpu")
    assert predictor.object_scorer is None
    rng = np.random.default_rng(0)
    fg = rng.random((64, 64)).astype(np.float32)
    from napari_deepcens.inference.predictor import RawOutput
    from napari_deepcens.postprocess.watershed import instances_from_maps

    raw = RawOutput(maps={"foreground": fg, "distance": fg * 0.5}, shape=(64, 64))
    seg = predictor.instances(raw, {"score_threshold": 0.99})
    plain_labels = instances_from_maps(fg, fg * 0.5, replace(predictor.default_params(),
                                                             score_threshold=0.99))
    assert seg.scores is None and seg.labels.max() > 5
    np.testing.assert_array_equal(seg.labels, plain_labels)
    # and its metadata has no scorer entry, so versions before object scores read it too
    import json

    from safetensors import safe_open
    with safe_open(str(plain), framework="pt") as fh:
        assert "object_scorer" not in json.loads(next(iter(fh.metadata().values())))


def test_a_broken_scorer_in_weights_is_a_weights_error(tmp_path):
    from napari_deepcens import Predictor
    from napari_deepcens.models.registry import bundled_weights
    from napari_deepcens.models.weights import load_weights, save_weights

    model, info = load_weights(bundled_weights("unet"))
    broken = save_weights(tmp_path / "broken.safetensors", model,
                          replace(info, object_scorer={"features": ["x"], "layers": "oops"}))
    with pytest.raises(WeightsError, match="object scorer"):
        Predictor.from_weights(broken, device="cpu")


def test_training_images_shown_at_another_zoom_keep_their_objects():
    from napari_deepcens.training.dataset import AnnotatedImage, rescale_items

    def rescaled(item, zoom):
        return rescale_items([item], zoom)[0]

    labels = np.zeros((64, 64), np.int32)
    labels[8:24, 8:24] = 1
    labels[40:56, 30:62] = 2
    item = AnnotatedImage("x", (labels > 0).astype(np.float32), labels)
    small = rescaled(item, 0.25)
    assert small.plane.shape == small.labels.shape == (16, 16)
    assert set(np.unique(small.labels)) == {0, 1, 2}
    assert (small.labels == 1).sum() == 16 and (small.labels == 2).sum() == 32
    big = rescaled(item, 2.0)
    np.testing.assert_array_equal(big.labels[::2, ::2], labels)


def test_the_size_estimate_does_not_depend_on_the_scorer(fluorescence):
    from napari_deepcens import Predictor

    image, _labels = fluorescence
    with_scorer = Predictor.from_name("unet", device="cpu")
    without = Predictor(with_scorer.model, replace(with_scorer.info, object_scorer={}), device="cpu")
    plane = with_scorer.prepare(image)
    a = with_scorer.estimate_diameter(plane, normalised=True)
    b = without.estimate_diameter(plane, normalised=True)
    assert a.diameter == pytest.approx(b.diameter) and a.per_zoom == b.per_zoom


def test_a_fine_tune_keeps_the_scorer_and_a_broken_one_stops_it_at_once(tmp_path, capsys):
    from napari_deepcens.cli import main
    from napari_deepcens.models.registry import bundled_weights
    from napari_deepcens.models.weights import load_weights, save_weights

    bundled = bundled_weights("unet")
    args = ["train", str(DSB_VAL), "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
            "--crop", "64", "--device", "cpu"]
    out = tmp_path / "tuned.safetensors"
    assert main([*args, "-o", str(out), "--init", str(bundled)]) == 0
    assert load_weights(out)[1].object_scorer == load_weights(bundled)[1].object_scorer
    model, info = load_weights(bundled)
    broken = save_weights(tmp_path / "broken.safetensors", model,
                          replace(info, object_scorer={**info.object_scorer, "std": [0.0] * 12}))
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "never.safetensors"), "--init", str(broken)]) == 2
    assert "object scorer" in capsys.readouterr().err
    assert not (tmp_path / "never.safetensors").exists()
