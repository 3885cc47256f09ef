"""Noisy images are denoised before segmenting (inference/denoise.py), on real nuclei."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deepcens.evaluation.metrics import match_image, summarize
from napari_deepcens.inference import denoise as denoising
from napari_deepcens.io.images import noise_sigma, to_plane


def photon_limited(image: np.ndarray, photons: float, seed: int = 0) -> np.ndarray:
    """``image`` as a camera sees it with ``photons`` per brightest pixel: Poisson noise, an
    offset of 100 and read noise of 2 grey levels, 16-bit."""
    rng = np.random.default_rng(seed)
    x = np.clip(to_plane(image), 0, None)
    return np.clip(100 + rng.poisson(x * photons) + rng.normal(0, 2, x.shape), 0, None).astype(np.uint16)


def test_clean_images_are_left_alone(dsb_samples, predictor):
    """Every bundled crop (fluorescence, histology, brightfield) is far above the threshold,
    as every training and val image is (lowest 22.9 and 25.8 noise σ)."""
    for _id, image, _lab, _mod in dsb_samples:
        assert denoising.snr(to_plane(image)) > 2 * denoising.NOISY_SNR
    image = dsb_samples[0][1]
    assert predictor.predict(image).meta["denoised"] is False


def test_photon_limited_nuclei_are_found_after_denoising(predictor, fluorescence):
    """The 256² fluorescence crop (53 nuclei) at 20 photons: 12 noise σ of range. Unfiltered
    the U-Net reads AP@0.5 0.475; denoised 0.587 (0.68 clean)."""
    image, truth = fluorescence
    noisy = photon_limited(image, 20)
    assert denoising.snr(to_plane(noisy)) < denoising.NOISY_SNR
    auto, off = predictor.predict(noisy), predictor.predict(noisy, denoise=False)
    assert auto.meta["denoised"] and not off.meta["denoised"]
    ap_auto = summarize([match_image(truth, predictor.postprocess(auto))])["AP@0.5"]
    ap_off = summarize([match_image(truth, predictor.postprocess(off))])["AP@0.5"]
    assert ap_auto > 0.56 and ap_off < 0.50, (ap_auto, ap_off)
    # the size estimate on its own denoises too, and reads the clean image's size (9.6 / 10.4)
    clean_d = predictor.estimate_diameter(image).diameter
    assert predictor.estimate_diameter(noisy).diameter == pytest.approx(clean_d, rel=0.2)
    # forced on a clean image it filters too (the maps change), and is recorded
    forced, plain = predictor.predict(image, denoise=True), predictor.predict(image)
    assert forced.meta["denoised"] and not plain.meta["denoised"]
    assert np.abs(forced.maps["foreground"] - plain.maps["foreground"]).max() > 0.05


@pytest.mark.parametrize("kind", ["gauss", "poisson"])
def test_camera_noise_alone_stays_empty(predictor, kind):
    """An empty well is denoised (its range is the 12 σ floor) but, smoothed, not stretched
    into blobs: the range after filtering is kept at ≥ 4 of its original noise σ."""
    rng = np.random.default_rng(1)
    field = (rng.normal(100, 5, (384, 384)).astype(np.float32) if kind == "gauss" else
             (rng.poisson(2, (384, 384)) + rng.normal(100, 2, (384, 384))).astype(np.uint16))
    raw = predictor.predict(field)
    assert raw.meta["denoised"]
    assert predictor.postprocess(raw).max() == 0


def test_only_noisy_channels_are_filtered_and_settings_carry_over():
    """A clean channel (80 σ of range, noisy but over the threshold) passes through
    untouched; a noisy one is smoothed (its pixel noise
    falls more than threefold) and normalised again into the networks' range. The settings
    fitted on one part of an image filter another part alike (the chunked path)."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:128, :160]
    blobs = ((np.sin(yy / 9.0) * np.cos(xx / 11.0)) > 0.3).astype(np.float32)
    clean = (blobs * 0.8 + 0.1 + rng.normal(0, 0.01, blobs.shape)).astype(np.float32)  # 80 σ
    noisy = blobs + rng.normal(0, 0.1, blobs.shape)
    noisy = (noisy / np.percentile(noisy, 99.8)).astype(np.float32)      # as to_plane: ~8 σ
    fitted, out = denoising.Denoiser.fit(np.stack([clean, noisy]))
    assert fitted.sigmas[0] == 0 and fitted.sigmas[1] > 0
    assert np.array_equal(out[0], clean)
    assert noise_sigma(out[1]) < noise_sigma(noisy) / 3
    assert out[1].min() >= -0.5 and out[1].max() <= 1.5
    assert np.percentile(out[1], 99.8) == pytest.approx(1.0, abs=0.02)
    part = fitted.apply(np.stack([clean, noisy])[:, :64])
    assert np.array_equal(part[0], clean[:64])
    assert np.abs(part[1][8:56] - out[1][8:56]).max() < 1e-5      # inside its borders: the same


def test_cli_denoise_choice(tmp_path, fluorescence, predictor, capsys):
    """``deepcens segment`` denoises the noisy image by itself and says so; ``--denoise no``
    gives the API's unfiltered labels."""
    import tifffile

    from napari_deepcens.cli import main
    from napari_deepcens.io.images import read_labels

    noisy = photon_limited(fluorescence[0], 20)
    tifffile.imwrite(tmp_path / "noisy.tif", noisy)
    assert main(["segment", str(tmp_path / "noisy.tif"), "-o", str(tmp_path / "auto"),
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "denoised" in captured.out + captured.err
    assert main(["segment", str(tmp_path / "noisy.tif"), "-o", str(tmp_path / "off"),
                 "--device", "cpu", "--denoise", "no"]) == 0
    off = read_labels(tmp_path / "off" / "noisy_labels.tif")
    assert np.array_equal(off, predictor.segment(noisy, denoise=False))
    auto = read_labels(tmp_path / "auto" / "noisy_labels.tif")
    assert np.array_equal(auto, predictor.segment(noisy))


def test_the_filter_yields_between_blocks_so_cancel_need_not_wait(fluorescence, predictor, monkeypatch):
    """A worker can only stop at a yield: the filter yields after each block, and blocks
    (with their margin) give exactly the one-pass result."""
    image, _ = fluorescence
    noisy = photon_limited(image, 20)
    whole = predictor.predict(noisy, estimate=False)
    monkeypatch.setattr(denoising, "BLOCK", 96)                 # 256² → 3 × 3 blocks
    gen = predictor.predict_iter(noisy, estimate=False)
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            blocks = stop.value
            break
    tiles = list(predictor.predict_iter(noisy, estimate=False, denoise=False))
    assert steps == [(0, 1)] * 9 + tiles                        # then the tiles
    assert blocks.meta["denoised"]
    for name in ("foreground", "distance"):
        assert np.abs(blocks.maps[name] - whole.maps[name]).max() < 1e-4
