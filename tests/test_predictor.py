"""The bundled U-Net through the public API, on real validation images."""

import numpy as np
import pytest

from napari_deepcens.errors import DeepCeNSError
from napari_deepcens.evaluation.metrics import match_image
from napari_deepcens.postprocess.params import PostprocessParams

#: AP@0.5 of the shipped U-Net on the bundled val images when it was chosen (minus 0.05).
GOLDEN_AP50 = {"0bda51": 0.641 - 0.05, "150b0f": 0.729 - 0.05, "5d75a6": 0.721 - 0.05}


def test_golden_metrics_on_validation_crops(predictor, dsb_samples):
    """Regression guard for the shipped weights (val images, never trained on)."""
    for sample_id, image, labels, modality in dsb_samples:
        pred = predictor.segment(image)
        score = match_image(labels, pred).ap(0.5)
        assert score >= GOLDEN_AP50[sample_id[:6]], (sample_id, modality, score)


def test_cached_maps_give_the_same_labels_as_a_fresh_run(predictor, fluorescence):
    image, _ = fluorescence
    raw = predictor.predict(image)
    params = PostprocessParams(fg_threshold=0.5, seed_threshold=0.6, min_size=5)
    np.testing.assert_array_equal(predictor.postprocess(raw, params),
                                  predictor.segment(image, params=params))


def test_tiled_equals_untiled(predictor, dsb_samples):
    image, _labels = next((img, lab) for _i, img, lab, _m in dsb_samples if img.shape[0] > 500)
    whole = predictor.predict(image, tile=1024)
    tiled = predictor.predict(image, tile=256, overlap=64)
    fg_diff = np.abs(whole.maps["foreground"] - tiled.maps["foreground"])
    assert np.percentile(fg_diff, 99) < 0.1
    a, b = predictor.postprocess(whole), predictor.postprocess(tiled)
    assert match_image(a, b).ap(0.5) > 0.95


def test_diameter_rescales_and_returns_to_the_original_grid(predictor, fluorescence):
    image, labels = fluorescence
    train = predictor.info.zoom_diameter  # the size the network runs objects at
    big = np.kron(image, np.ones((2, 2), image.dtype))        # nuclei twice as large
    raw = predictor.predict(big, diameter=2 * train)
    assert raw.shape == big.shape and raw.scale == pytest.approx(0.5)
    pred = predictor.postprocess(raw)
    big_labels = np.kron(labels, np.ones((2, 2), labels.dtype))
    native = match_image(labels, predictor.segment(image, estimate=False)).ap(0.5)
    assert match_image(big_labels, pred).ap(0.5) >= native - 0.05   # nothing lost on the way


def test_empty_image_region_gives_no_objects(predictor):
    image = np.zeros((128, 128), np.uint8)
    image[0, 0] = 1                                           # not constant, but no nuclei
    assert predictor.segment(image).max() == 0


def test_cuda_without_gpu_is_a_clear_error():
    import torch

    from napari_deepcens.inference.device import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeepCeNSError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_reduced_precision_gives_the_same_objects(predictor, fluorescence):
    from napari_deepcens import Predictor

    image, _ = fluorescence
    exact = Predictor.from_name("unet", device="cpu", precision="fp32")
    a = exact.predict(image, estimate=False)
    b = predictor.predict(image, estimate=False)       # auto: bf16 where the CPU has it
    assert np.abs(a.maps["foreground"] - b.maps["foreground"]).max() < 0.05
    assert match_image(exact.postprocess(a), predictor.postprocess(b)).ap(0.5) > 0.95
    with pytest.raises(DeepCeNSError, match="precision"):
        Predictor.from_name("unet", device="cpu", precision="int4")


def test_huge_images_are_refused_before_any_allocation(predictor):
    huge = np.broadcast_to(np.zeros(1, np.uint8), (20_000, 20_000))   # a view: no memory
    with pytest.raises(DeepCeNSError, match="too large"):
        predictor.predict(huge)
    small = np.zeros((64, 64), np.uint8)
    small[10:20, 10:20] = 200
    with pytest.raises(DeepCeNSError, match="larger diameter"):
        predictor.predict(small, diameter=0.005)


@pytest.mark.parametrize("model", ["unet", "centerunet"])
def test_noise_only_field_gives_no_objects(model):
    """An empty well: camera noise only. Before the normalisation noise floor the U-Net
    found 6106 'nuclei' here (the noise, stretched, also made the size estimate 1.8 px)."""
    from napari_deepcens import Predictor

    rng = np.random.default_rng(0)
    noise = (100 + 5 * rng.standard_normal((256, 256))).clip(0, 255).astype(np.uint8)
    assert Predictor.from_name(model, device="cpu").segment(noise).max() <= 2


def test_batch_norm_is_folded_for_inference_only(fluorescence):
    """The predictor runs a copy with batch norm folded into the convolutions (faster on the
    CPU) that computes what the network computes; the network it was given keeps its batch
    norms, so training can go on with it."""
    import torch

    from napari_deepcens import Predictor
    from napari_deepcens.models.registry import bundled_weights
    from napari_deepcens.models.weights import load_weights

    net, info = load_weights(bundled_weights("unet"))
    predictor = Predictor(net, info, device="cpu", precision="fp32")
    kinds = {type(m).__name__ for m in predictor.model.modules()}
    assert "BatchNorm2d" not in kinds
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 18
    image, _ = fluorescence
    plane = torch.from_numpy(predictor.prepare(image)[:256, :256].copy())[None, None]
    with torch.inference_mode():
        fused, plain = predictor.model.maps(plane), net.eval().maps(plane)
    for name in plain:
        np.testing.assert_allclose(fused[name].numpy(), plain[name].numpy(), atol=1e-4)


@pytest.mark.parametrize("model", ["unet", "centerunet"])
def test_onnx_runtime_gives_torch_s_maps_and_objects(model, fluorescence, monkeypatch):
    """On fp32 CPUs the dense networks run on ONNX Runtime (faster); the maps match torch's
    and so do the objects. Forcing torch (the environment switch) and an exporter that fails
    both fall back to torch without a word to the user."""
    import pickle

    from napari_deepcens import Predictor
    from napari_deepcens.inference import onnx_cpu
    from napari_deepcens.inference.onnx_cpu import OnnxMaps

    image, labels = fluorescence
    fast = Predictor.from_name(model, device="cpu", precision="fp32")
    raw = fast.predict(image, estimate=False)
    assert isinstance(fast._onnx_runner(), OnnxMaps)

    monkeypatch.setenv(onnx_cpu.RUNTIME_ENV, "torch")
    plain = Predictor.from_name(model, device="cpu", precision="fp32")
    ref = plain.predict(image, estimate=False)
    assert plain._onnx is False and plain._onnx_runner() is None
    for name in ref.maps:
        np.testing.assert_allclose(raw.maps[name], ref.maps[name], atol=1e-4)
    a, b = fast.postprocess(raw), plain.postprocess(ref)
    assert a.max() == b.max() and match_image(labels, a).ap(0.5) > 0.6
    np.testing.assert_array_equal(a, b)
    fast.release_memory()  # the widget's call after each run: the next run is unchanged
    np.testing.assert_array_equal(fast.segment(image, estimate=False), a)

    monkeypatch.delenv(onnx_cpu.RUNTIME_ENV)
    monkeypatch.setattr(onnx_cpu.torch.onnx, "export",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no exporter")))
    broken = Predictor.from_name(model, device="cpu", precision="fp32")
    np.testing.assert_array_equal(broken.segment(image, estimate=False), b)
    assert broken._onnx is False

    # a predictor travels to Dask workers without its sessions and builds them there
    clone = pickle.loads(pickle.dumps(fast))
    assert clone._onnx is None and clone._sessions == {} and fast._sessions


def test_onnx_runtime_is_built_once_across_threads_and_follows_the_thread_count(monkeypatch):
    """Dask's threads share one predictor: the first tiles of several threads at once export
    the network once (torch's exporter is not thread-safe), and a session made for Dask's
    one thread is not kept for a later run with all threads."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from napari_deepcens import Predictor
    from napari_deepcens.inference import onnx_cpu

    calls = []
    real = onnx_cpu.export
    monkeypatch.setattr(onnx_cpu, "export", lambda model: calls.append(1) or real(model))
    predictor = Predictor.from_name("unet", device="cpu", precision="fp32")
    tile = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    before = torch.get_num_threads()
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: predictor._predict_tile(tile), range(8)))
    assert len(calls) == 1 and predictor._onnx
    for out in outs[1:]:
        np.testing.assert_array_equal(out["foreground"], outs[0]["foreground"])
    try:
        torch.set_num_threads(1)
        assert predictor._onnx_runner().threads == 1
    finally:
        torch.set_num_threads(before)
    assert predictor._onnx_runner().threads == before and len(calls) == 1


def test_onnx_runtime_is_left_to_reduced_precision_and_detection():
    """bf16 CPUs and detection models stay on torch (bf16 is faster there; RoI ops do not
    export)."""
    import torch

    from napari_deepcens import Predictor

    half = Predictor.from_name("unet", device="cpu", precision="half")
    half.autocast_dtype = torch.bfloat16  # as on a CPU with native bf16
    half._predict_tile(np.zeros((64, 64), np.float32))
    assert half._onnx is False
    detector = Predictor.from_name("deepcens", device="cpu", precision="fp32")
    assert detector._onnx_runner() is None and detector._onnx is False
