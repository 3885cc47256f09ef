from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_deepcens.errors import WeightsError
from napari_deepcens.models.registry import build_model
from napari_deepcens.models.weights import WeightsInfo, load_weights, read_info, save_weights


def small_unet(**kw):
    return build_model("unet", {"base_channels": 4, "depth": 2, **kw})


def test_round_trip_keeps_config_and_tensors(tmp_path):
    model = small_unet()
    info = WeightsInfo("unet", model.config.to_dict(), median_diameter=21.5,
                       thresholds={"fg_threshold": 0.4, "seed_threshold": 0.6, "min_size": 12})
    path = save_weights(tmp_path / "w.safetensors", model, info)
    loaded, got = load_weights(path, expected_model="unet")
    assert got.median_diameter == 21.5 and got.thresholds["min_size"] == 12
    assert loaded.config == model.config
    x = torch.randn(1, 1, 16, 16)
    model.eval()
    with torch.inference_mode():
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=2e-2)  # fp16 storage


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "nope.safetensors")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        load_weights(bad)


def test_truncated_file(tmp_path):
    model = small_unet()
    path = save_weights(tmp_path / "w.safetensors", model, WeightsInfo("unet", model.config.to_dict()))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError):
        load_weights(path)


def test_foreign_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(WeightsError, match="not napari-deepcens weights"):
        read_info(path)


def test_weights_for_another_model(tmp_path):
    model = small_unet()
    path = save_weights(tmp_path / "w.safetensors", model, WeightsInfo("unet", model.config.to_dict()))
    with pytest.raises(WeightsError, match="for model 'unet', not 'centerunet'"):
        load_weights(path, expected_model="centerunet")


def test_tensors_that_do_not_fit_the_declared_architecture(tmp_path):
    model = small_unet()
    wrong = WeightsInfo("unet", small_unet(base_channels=8).config.to_dict())
    path = save_weights(tmp_path / "w.safetensors", model, wrong)
    with pytest.raises(WeightsError, match="do not fit"):
        load_weights(path)


def test_bundled_weights_load_and_describe_themselves():
    from napari_deepcens.models.registry import bundled_weights

    path = bundled_weights("unet")
    assert path.stat().st_size < 5_000_000
    _model, info = load_weights(path, expected_model="unet")
    assert 10 < info.median_diameter < 40
    assert info.metrics["val"]["AP@0.5"] > 0.7


def test_working_diameter_sets_the_zoom_and_is_left_out_when_unset(tmp_path):
    """The zoom brings objects to the working diameter where the weights record one, to the
    training median otherwise; files without one say nothing of it (older versions read
    them)."""
    from napari_deepcens import Predictor

    model = small_unet()
    info = WeightsInfo("unet", model.config.to_dict(), median_diameter=20.0)
    assert "working_diameter" not in info.to_json()
    plain = Predictor(model, info, device="cpu")
    assert plain.scale_for(10.0) == pytest.approx(2.0) and plain.scale_for(None) == 1.0
    path = save_weights(tmp_path / "w.safetensors", model, replace(info, working_diameter=22.0))
    assert read_info(path).working_diameter == 22.0
    zoomed = Predictor.from_weights(path, device="cpu")
    assert zoomed.scale_for(10.0) == pytest.approx(2.2) and zoomed.scale_for(None) == 1.0
    image = np.random.default_rng(0).random((40, 48), dtype=np.float32)
    raw = zoomed.predict(image, diameter=10.0, normalised=True)
    assert raw.scale == pytest.approx(2.2) and raw.maps["foreground"].shape == (40, 48)


@pytest.mark.parametrize("field,value", [("working_diameter", -5.0), ("working_diameter", "big"),
                                         ("median_diameter", float("nan")),
                                         ("working_diameter", 1e-9)])  # "out of memory" zooms
def test_a_size_that_is_not_a_size_is_refused_at_load(tmp_path, field, value):
    """A hand-edited size would otherwise zoom images by a negative or NaN factor."""
    model = small_unet()
    info = replace(WeightsInfo("unet", model.config.to_dict(), median_diameter=20.0), **{field: value})
    path = save_weights(tmp_path / "w.safetensors", model, info)
    with pytest.raises(WeightsError, match=field.replace("_", " ")):
        read_info(path)


@pytest.mark.parametrize("thresholds", ["x", {"fg_threshold": 5.0}, {"min_size": float("nan")},
                                        {"min_size": float("inf")}, {"fg_threshold": True}])
def test_unusable_stored_thresholds_are_refused_at_load(tmp_path, thresholds):
    """Not after an epoch of fine-tuning, as an 'unexpected TypeError'."""
    model = small_unet()
    info = replace(WeightsInfo("unet", model.config.to_dict(), median_diameter=20.0),
                   thresholds=thresholds)
    path = save_weights(tmp_path / "w.safetensors", model, info)
    with pytest.raises(WeightsError, match="thresholds"):
        read_info(path)


def test_numbers_that_are_not_finite_never_reach_a_network(tmp_path):
    """One NaN in a DeepCeNS's tensors killed the process in torchvision's deformable
    convolution (SIGSEGV); in a U-Net it found nothing without a word. fp16 storage must not
    turn a large running variance into inf either, nor a diverged training be saved."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = small_unet()
    info = WeightsInfo("unet", model.config.to_dict(), median_diameter=20.0)
    path = save_weights(tmp_path / "w.safetensors", model, info)
    tensors = load_file(str(path))
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.ndim == 4)
    tensors[name][0, 0, 0, 0] = float("nan")
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="not finite"):
        load_weights(tmp_path / "nan.safetensors")
    var = next(k for k in model.state_dict() if k.endswith("running_var"))
    model.state_dict()[var].fill_(1e5)  # beyond fp16's 65504
    loaded, _ = load_weights(save_weights(tmp_path / "big.safetensors", model, info))
    assert torch.isfinite(loaded.state_dict()[var]).all()
    model.state_dict()[var][0] = float("inf")
    with pytest.raises(WeightsError, match="not saved"):
        save_weights(tmp_path / "inf.safetensors", model, info)
    assert not (tmp_path / "inf.safetensors").exists()


def test_other_nonsense_in_the_metadata_is_refused(tmp_path):
    """A DeepCeNS input spread of 0 crashed the process too; a model name that is a list
    read as an 'unexpected TypeError'."""
    with pytest.raises(ValueError, match="pixel_std"):
        build_model("deepcens", {"pixel_std": [0.0]})
    with pytest.raises(ValueError, match="min_score"):
        build_model("deepcens", {"min_score": float("nan")})
    model = small_unet()
    path = save_weights(tmp_path / "w.safetensors", model,
                        WeightsInfo(["unet"], model.config.to_dict()))
    with pytest.raises(WeightsError, match="unknown model"):
        read_info(path)
    with pytest.raises(WeightsError, match="appeared while this ran"):  # tune never replaces
        save_weights(path, model, WeightsInfo("unet", model.config.to_dict()), overwrite=False)


def test_devices_are_checked_however_they_are_named():
    from napari_deepcens.errors import DeepCeNSError
    from napari_deepcens.inference.device import resolve_device

    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("cudafoo", "cuda:x", "mps"):
        with pytest.raises(DeepCeNSError, match="unknown device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(DeepCeNSError, match="no CUDA GPU"):
            resolve_device(torch.device("cuda"))


def test_tune_keeps_a_stored_minimum_size_it_does_not_search():
    from napari_deepcens import Predictor
    from napari_deepcens.training.loop import search_space

    model = small_unet()
    info = WeightsInfo("unet", model.config.to_dict(), median_diameter=20.0,
                       thresholds={"min_size": 200})
    assert {p.min_size for p in search_space(Predictor(model, info, device="cpu"))} == {200}
