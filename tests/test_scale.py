"""Scale-out: lazy OME-Zarr/TIFF input, chunked runs on a local dask.distributed cluster with
objects straddling chunk borders, folder runs that resume and survive a corrupt file, and the
widget's chunked path. Images are small (≤ 512²) and clusters in-process, to stay fast."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from scipy import ndimage as ndi

from napari_deepcens.cli import main
from napari_deepcens.errors import ImageError
from napari_deepcens.evaluation.metrics import match_image
from napari_deepcens.io.images import read_image
from napari_deepcens.scale.chunked import ModelSpec, segment_chunked
from napari_deepcens.scale.lazy import from_array, open_lazy, read_for_napari, read_ome_labels
from napari_deepcens.scale.zarr_out import TABLE_COLUMNS, create_store

from .conftest import DSB_VAL, logged

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def mosaic() -> np.ndarray:
    """384×512 grey fluorescence mosaic: nuclei everywhere, many on the 128-px chunk seams."""
    image = read_image(next(DSB_VAL.glob("0bda*/image.png")))
    grey = image[..., 0] if image.ndim == 3 else image
    return np.block([[grey, grey[:, ::-1]], [grey[::-1][:128], grey[::-1, ::-1][:128]]])


@pytest.fixture(scope="module")
def client():
    """A local dask.distributed cluster: one in-process worker, two threads."""
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                       dashboard_address=":0")
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def write_ome_zarr(path, image: np.ndarray, chunk: int = 96) -> None:
    """An OME-Zarr with two levels whose storage chunks differ from the processing chunks."""
    create_store(path, image.shape, image.dtype, [], chunk)
    zarr.open_array(str(path), path="0", mode="r+")[:] = image
    zarr.open_array(str(path), path="1", mode="r+")[:] = image[::2, ::2]
    for level in range(2, len(zarr.open_group(str(path), mode="r").attrs["multiscales"][0]["datasets"])):
        src = zarr.open_array(str(path), path=str(level - 1), mode="r")[:]
        zarr.open_array(str(path), path=str(level), mode="r+")[:] = src[::2, ::2]


def test_lazy_reads_ome_zarr_tiff_pyramid_and_5d_axes(tmp_path, mosaic):
    write_ome_zarr(tmp_path / "m.zarr", mosaic)
    image = open_lazy(tmp_path / "m.zarr")
    assert image.shape == mosaic.shape and image.multiscale
    assert np.array_equal(image.sources[0].region(slice(10, 50), slice(200, 300)), mosaic[10:50, 200:300])
    layers = read_for_napari(tmp_path / "m.zarr")
    assert layers[0][1]["multiscale"] and layers[0][2] == "image"

    with tifffile.TiffWriter(tmp_path / "p.tif") as tw:   # pyramidal, tiled TIFF
        tw.write(mosaic, tile=(64, 64), subifds=1)
        tw.write(mosaic[::2, ::2], tile=(64, 64), subfiletype=1)
    tif = open_lazy(tmp_path / "p.tif")
    assert len(tif.levels) == 2 and np.array_equal(np.asarray(tif.levels[1]), mosaic[::2, ::2])
    assert np.array_equal(tif.sources[0].region(slice(5, 9), slice(0, 64)), mosaic[5:9, :64])

    # (t, c, z, y, x) with one plane: read as (y, x); RGB (c, y, x): channels last
    root = zarr.open_group(str(tmp_path / "5d.zarr"), mode="w", zarr_format=2)
    root.create_array("0", shape=(1, 3, 1, 64, 80), dtype=np.uint8, chunks=(1, 1, 1, 32, 32))
    rgb = np.random.default_rng(0).integers(0, 255, (3, 64, 80), dtype=np.uint8)
    root["0"][0, :, 0] = rgb
    root.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}], "axes": [
        {"name": a} for a in "tczyx"]}]
    five = open_lazy(tmp_path / "5d.zarr")
    assert five.shape == (64, 80, 3)
    assert np.array_equal(five.sources[0].region(slice(0, 64), slice(0, 80)), np.moveaxis(rgb, 0, -1))


def _best_overlaps(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
    """(label in a, label in b) for each object of ``a`` and the ``b`` object sharing over
    half of its pixels."""
    both = (a > 0) & (b > 0)
    pairs, counts = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    area = np.bincount(a.ravel())
    return [(int(x), int(y)) for (x, y), c in zip(pairs.T, counts, strict=True) if c > area[x] / 2]


def test_chunked_on_local_cluster_matches_one_piece(tmp_path, mosaic, client, predictor):
    """Objects straddling chunk borders come out whole and once, as in one-piece segmentation."""
    write_ome_zarr(tmp_path / "m.zarr", mosaic)
    spec = ModelSpec("unet", device="cpu")
    result = segment_chunked(client, open_lazy(tmp_path / "m.zarr"), tmp_path / "out.zarr", spec,
                             predictor=predictor, chunk=128, halo=64, estimate=False,
                             table=tmp_path / "objects.csv")
    labels = np.asarray(read_ome_labels(result.output)["nucleus"][0])
    whole = predictor.segment(mosaic, estimate=False)

    n = int(labels.max())
    assert result.counts == {"nucleus": n} and np.array_equal(np.unique(labels), np.arange(n + 1))
    # no object split in two pieces carrying one label, nor one object under two labels
    pieces = sum(ndi.label(labels[sl] == i)[1] for i, sl in enumerate(ndi.find_objects(labels), 1))
    assert pieces <= n + 2                           # a pixel or two of ragged edge at most
    seams = [128, 256]
    straddling = {int(v) for s in seams for v in np.unique(labels[s - 1]) if v and v in labels[s]}
    straddling |= {int(v) for s in [128, 256, 384]
                   for v in np.unique(labels[:, s - 1]) if v and v in labels[:, s]}
    assert len(straddling) >= 10                     # the test means something
    match = match_image(whole, labels)
    assert match.ap(0.9) >= 0.95 and match.ap(0.5) >= 0.98, (match.ap(0.9), match.ap(0.5))

    table = pd.read_csv(tmp_path / "objects.csv")
    assert tuple(table.columns) == TABLE_COLUMNS
    assert len(table) == n and table["label"].is_unique
    areas = np.bincount(labels.ravel())
    assert np.array_equal(table.sort_values("label")["area"].to_numpy(), areas[1:])
    assert (table["score"].between(0, 1)).all() and (table["class"] == "nucleus").all()
    # the U-Net's object scores, thresholded once per stitched object, as in one piece
    seg = predictor.instances(predictor.predict(mosaic, estimate=False))
    assert table["score"].min() >= predictor.default_params().score_threshold
    rows = table.set_index("label")
    pairs = [(rows.loc[c, "score"], seg.scores[w - 1]) for c, w in _best_overlaps(labels, seg.labels)]
    diffs = np.abs(np.subtract(*np.array(pairs).T))
    assert len(pairs) >= 0.95 * n and np.median(diffs) < 0.02, (len(pairs), np.median(diffs))
    # the output is an OME-Zarr image with its labels beside it: image copied, pyramid levels
    out = open_lazy(result.output)
    assert np.array_equal(np.asarray(out.levels[0]), mosaic) and out.multiscale
    assert zarr.open_group(str(result.output / "labels"), mode="r").attrs["labels"] == ["nucleus"]
    assert not list(tmp_path.glob(".out.zarr.tmp*"))


def test_chunked_flip_averaging_matches_one_piece(tmp_path, mosaic, client, predictor):
    """``ModelSpec(tta=True)`` reaches every chunk: the labels are those of one-piece flip
    averaging, not those of plain inference."""
    result = segment_chunked(client, from_array(mosaic, "m"), tmp_path / "tta.zarr",
                             ModelSpec("unet", device="cpu", tta=True), predictor=predictor,
                             chunk=128, halo=64, estimate=False)
    labels = np.asarray(read_ome_labels(result.output)["nucleus"][0])
    averaged = predictor.segment(mosaic, estimate=False, tta=True)
    plain = predictor.segment(mosaic, estimate=False)
    assert ModelSpec("unet", device="cpu", tta=True) == ModelSpec("unet", device="cpu")  # one network
    # measured: AP@0.9 1.00 against one-piece flip averaging, 0.93 against plain inference
    assert match_image(averaged, labels).ap(0.9) >= match_image(plain, labels).ap(0.9) + 0.03
    assert match_image(averaged, labels).ap(0.9) >= 0.97


@pytest.fixture
def folder(tmp_path, mosaic):
    """Two small PNGs, a corrupt TIFF and an OME-Zarr (chunked path) in one folder."""
    src = tmp_path / "in"
    src.mkdir()
    for sample in sorted(DSB_VAL.glob("*/image.png"))[:2]:
        shutil.copy(sample, src / f"{sample.parent.name[:6]}.png")
    (src / "broken.tif").write_bytes(b"not a tiff")
    write_ome_zarr(src / "slide.zarr", mosaic[:256, :384])
    return src


def test_folder_run_skips_done_work_and_reports_the_corrupt_file(folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["segment", str(folder), "-o", str(out), "--device", "cpu", "--chunk", "128", "--halo", "64"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "1 of 4 images failed" in err and "broken.tif" in err and "Traceback" not in err
    assert len(list(out.glob("*_labels.tif"))) == 2
    assert (out / "slide.zarr").is_dir() and (out / "slide_objects.csv").is_file()
    stamp = (out / "slide_objects.csv").stat().st_mtime_ns
    assert main(args) == 1                           # again: only the corrupt file is retried
    captured = capsys.readouterr()
    assert captured.out.count("skip") == 3 and "1 of 4 images failed" in captured.err
    assert (out / "slide_objects.csv").stat().st_mtime_ns == stamp


def test_interrupted_folder_run_resumes(folder, tmp_path, monkeypatch, capsys):
    """A run killed halfway leaves whole outputs or none; the next run does only the rest."""
    from napari_deepcens.io import export

    (folder / "broken.tif").unlink()
    shutil.rmtree(folder / "slide.zarr")
    out = tmp_path / "out"
    real, calls = export.write_labels, []

    def dies_on_second(path, labels, overwrite=False):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, labels, overwrite)

    monkeypatch.setattr(export, "write_labels", dies_on_second)
    assert main(["segment", str(folder), "-o", str(out), "--device", "cpu"]) == 130
    assert len(list(out.glob("*_labels.tif"))) == 1 and not list(out.glob(".*"))
    monkeypatch.setattr(export, "write_labels", real)
    capsys.readouterr()
    assert main(["segment", str(folder / "*.png"), "-o", str(out), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("skip") == 1
    assert len(list(out.glob("*_labels.tif"))) == 2


def test_a_noisy_image_is_denoised_alike_in_every_chunk(tmp_path, mosaic, client, predictor,
                                                       monkeypatch):
    """The mosaic at 20 photons per brightest pixel: the noise decision and the filter's
    settings are taken once, on a central crop (here 256 px of the 384×512), so 128-px chunks
    give the one-piece labels."""
    from napari_deepcens.scale import chunked

    from .test_denoise import photon_limited

    monkeypatch.setattr(chunked, "ESTIMATE_CROP", 256)

    noisy = photon_limited(mosaic, 20)
    spec = ModelSpec("unet", device="cpu")
    result = segment_chunked(client, from_array(noisy, "noisy"), tmp_path / "n.zarr", spec,
                             predictor=predictor, chunk=128, halo=64, estimate=False)
    assert result.denoised
    labels = np.asarray(read_ome_labels(result.output)["nucleus"][0])
    whole = predictor.predict(noisy, estimate=False)
    assert whole.meta["denoised"]
    match = match_image(predictor.postprocess(whole), labels)
    assert match.ap(0.5) >= 0.95, match.ap(0.5)


def test_interrupted_chunked_run_writes_nothing_then_completes(tmp_path, mosaic, client, predictor):
    from napari_deepcens.scale import chunked

    image = from_array(mosaic[:256, :256])
    spec = ModelSpec("unet", device="cpu")
    gen = chunked.segment_chunked_iter(client, image, tmp_path / "o.zarr", spec, predictor=predictor,
                                       chunk=128, halo=64, estimate=False)
    for _ in range(3):                               # a few chunks done, then killed
        next(gen)
    gen.close()
    assert not list(tmp_path.iterdir())              # no output, no temporary left behind
    result = segment_chunked(client, image, tmp_path / "o.zarr", spec, predictor=predictor,
                             chunk=128, halo=64, estimate=False)
    assert result.counts["nucleus"] > 20


def test_cli_runs_on_an_existing_scheduler(tmp_path, client, mosaic, capsys, monkeypatch):
    """--scheduler ADDRESS: the same command on a cluster someone else started."""
    from napari_deepcens.scale import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "1s")
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "big.tif", mosaic[:256], tile=(64, 64))
    shutil.copy(next(DSB_VAL.glob("0bda*/image.png")), src / "small.png")
    code = main(["segment", str(src / "*"), "-o", str(tmp_path / "out"), "--device", "cpu",
                 "--scheduler", client.scheduler.address, "--chunked-above", "0.1", "--chunk", "128"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "big.zarr").is_dir() and (tmp_path / "out" / "small_labels.tif").is_file()
    assert main(["segment", str(src), "-o", str(tmp_path / "o2"), "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err


def test_widget_segments_a_large_layer_chunked_into_lazy_labels(make_napari_viewer, qtbot, mosaic,
                                                                monkeypatch):
    import dask.array as da

    from napari_deepcens.scale import chunked
    from napari_deepcens.widget import segment_widget
    from napari_deepcens.widget.segment_widget import SegmentWidget

    monkeypatch.setattr(chunked, "ESTIMATE_CROP", 256)
    viewer = make_napari_viewer()
    layer = viewer.add_image(da.from_array(mosaic[:256, :384], chunks=128), name="slide")
    widget = SegmentWidget(viewer)
    widget.set_options(image=layer, device="cpu", auto_diameter=False)
    monkeypatch.setattr(segment_widget, "CHUNKED_ABOVE", 10_000)
    monkeypatch.setattr(segment_widget, "CHUNK", 128)
    seen = []
    widget._progress.changed.connect(lambda v: seen.append(v))
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    labels = viewer.layers["slide labels"]
    assert not isinstance(labels.data, np.ndarray)    # lazily loaded from the written Zarr
    assert int(np.asarray(labels.data).max()) > 20, widget.status
    assert len(seen) >= 3 and widget._progress.max > 6 and "chunked" in widget.status
    assert "objects" in widget.status
    from napari_deepcens.io.paths import results_root  # kept where a reboot leaves it

    assert Path(labels.metadata["deepcens_zarr"]).parent == results_root()
    widget.set_options(fg=0.9)                        # no maps kept: the slider says so
    assert "next Run" in widget.status

    widget.run()                                      # Cancel: stops, writes nothing
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    assert "cancelled" in widget.status
    assert len([ly for ly in viewer.layers if ly.name.startswith("slide labels")]) == 1


def test_normalisation_is_global_and_survives_empty_coarse_levels(tmp_path, mosaic, monkeypatch):
    from napari_deepcens.io.images import to_plane
    from napari_deepcens.scale import chunked

    create_store(tmp_path / "e.zarr", mosaic.shape, mosaic.dtype, [], 96)   # levels ≥ 1 left empty
    zarr.open_array(str(tmp_path / "e.zarr"), path="0", mode="r+")[:] = mosaic
    monkeypatch.setattr(chunked, "SAMPLE_PIXELS", 5_000)                    # prefers a coarse level
    monkeypatch.setattr(chunked, "EXACT_SAMPLE_BYTES", 0)
    norm = chunked.global_normalisation(open_lazy(tmp_path / "e.zarr"))
    assert norm.hi[0] > norm.lo[0]
    monkeypatch.setattr(chunked, "SAMPLE_PIXELS", 4_000_000)
    monkeypatch.setattr(chunked, "EXACT_SAMPLE_BYTES", 4 * 2**30)
    exact = chunked.global_normalisation(from_array(mosaic))
    rgb = np.stack([mosaic, mosaic // 2, mosaic[::-1]], axis=-1)            # luminance, as to_plane
    assert np.allclose(chunked.global_normalisation(from_array(rgb)).apply(rgb[:50]), to_plane(rgb)[:50])
    # on a small image the global mapping is exactly the in-memory one, chunk after chunk
    assert np.allclose(exact.apply(mosaic[100:200, 50:300]), to_plane(mosaic)[100:200, 50:300], atol=1e-5)


def test_noise_field_is_not_stretched_on_the_chunked_path(tmp_path, monkeypatch):
    """An empty well (camera noise only) keeps the in-memory noise floor when chunked: the
    range spans at least 12 noise σ, exactly as ``to_plane`` maps it on a small image and
    within 10 % from level-0 rows on a large pyramid."""
    from napari_deepcens.io.images import MIN_RANGE_SIGMAS, to_plane
    from napari_deepcens.scale import chunked

    rng = np.random.default_rng(0)
    noise = (100 + 5 * rng.standard_normal((700, 900))).clip(0, 255).astype(np.uint8)
    exact = chunked.global_normalisation(from_array(noise))
    assert exact.hi[0] - exact.lo[0] >= MIN_RANGE_SIGMAS * 5 * 0.9
    assert np.allclose(exact.apply(noise), to_plane(noise), atol=1e-5)
    create_store(tmp_path / "n.zarr", noise.shape, noise.dtype, [], 128)
    group = zarr.open_group(str(tmp_path / "n.zarr"), mode="r+")
    for name in sorted(k for k in group.array_keys() if k.isdigit()):    # pyramid levels
        level = group[name]
        f = -(-noise.shape[0] // level.shape[0])
        level[:] = noise[::f, ::f][: level.shape[0], : level.shape[1]]
    assert len([k for k in group.array_keys() if k.isdigit()]) >= 3
    monkeypatch.setattr(chunked, "SAMPLE_PIXELS", 20_000)                   # prefers a coarse level
    monkeypatch.setattr(chunked, "EXACT_SAMPLE_BYTES", 0)
    coarse = chunked.global_normalisation(open_lazy(tmp_path / "n.zarr"))
    assert coarse.hi[0] - coarse.lo[0] == pytest.approx(exact.hi[0] - exact.lo[0], rel=0.1)


class MaskOracle:
    """A stand-in two-class model for the chunked plumbing: channel 0 holds the cells and
    channel 1 the nuclei of real U2OS annotations (objects separated by their borders), and
    each class's instances are the connected components of its channel. Deterministic, so
    a chunked run must reproduce the one-piece result exactly, class by class."""

    class_names = ("cell", "nucleus")
    in_channels = 3
    kind = "oracle"
    object_scorer = None
    info = type("Info", (), {"median_diameter": 0.0, "thresholds": {}})()

    def scale_for(self, diameter):
        return 1.0

    def default_params(self, scale: float = 1.0):
        from napari_deepcens.postprocess.params import PostprocessParams

        return PostprocessParams()

    def decide_iter(self, plane, diameter=None, estimate=True, denoise=None):
        """Nothing to decide: clean masks, no object size (as the predictor's, a generator)."""
        from napari_deepcens.inference.predictor import Decision

        return plane, Decision(None, diameter, False, False, 1.0)
        yield  # pragma: no cover

    def predict(self, plane, **kwargs):
        from napari_deepcens.inference.predictor import RawOutput

        return RawOutput(maps={"plane": plane}, shape=plane.shape[-2:])

    def instances(self, raw, params=None):
        from napari_deepcens.inference.predictor import Segmentation

        cell, nucleus = (ndi.label(raw.maps["plane"][c] > 0.5)[0].astype(np.int32) for c in (0, 1))
        return Segmentation(nucleus, name="nucleus", others={"cell": Segmentation(cell, name="cell")})


def test_chunked_two_classes_keep_their_own_labels_and_table_rows(tmp_path, client):
    """Cells (large, across several chunks) and nuclei of the same field go through the
    chunked path class by class: one label pyramid each, every object whole and once, and
    table rows per class."""
    from skimage.segmentation import find_boundaries

    from napari_deepcens.io.images import read_labels
    from napari_deepcens.scale.lazy import from_array

    crop = next((Path(__file__).parent / "data" / "u2os_crop").glob("MFG*"))
    planes = []
    for cls in ("cell", "nucleus"):
        lab = read_labels(crop / f"labels_{cls}.png")
        lab = np.block([[lab, lab[:, ::-1]], [lab[::-1], lab[::-1, ::-1]]])   # 512², mirrored
        planes.append(((lab > 0) & ~find_boundaries(lab, mode="thick")).astype(np.uint8) * 200)
    image = np.stack([*planes, np.zeros_like(planes[0])], axis=-1)
    oracle = MaskOracle()
    result = segment_chunked(client, from_array(image, "u2os"), tmp_path / "two.zarr",
                             ModelSpec("mask-oracle-test"), predictor=oracle, chunk=128, halo=64,
                             estimate=False, table=tmp_path / "two.csv")
    out = read_ome_labels(result.output)
    assert sorted(out) == ["cell", "nucleus"]
    whole = oracle.instances(oracle.predict(np.moveaxis(image, -1, 0) / 200.0)).by_class()
    table = pd.read_csv(tmp_path / "two.csv")
    for cls in ("cell", "nucleus"):
        labels, expected = np.asarray(out[cls][0]), whole[cls].labels
        n = int(expected.max())
        assert result.counts[cls] == n == int(labels.max()) and n >= 18
        assert np.array_equal(np.unique(labels), np.arange(n + 1))
        # the same objects, pixel for pixel, under a one-to-one relabelling
        pairs = np.unique(np.stack([labels.ravel(), expected.ravel()]), axis=1)
        assert pairs.shape[1] == n + 1 and np.array_equal(labels > 0, expected > 0)
        crossing = {int(v) for s in (128, 256, 384) for v in np.unique(labels[s - 1]) if v and v in labels[s]}
        assert len(crossing) >= (8 if cls == "cell" else 2), (cls, len(crossing))
        rows = table[table["class"] == cls]
        assert len(rows) == n and rows["label"].is_unique
        assert np.array_equal(rows.sort_values("label")["area"].to_numpy(), np.bincount(labels.ravel())[1:])


def test_every_object_has_its_table_row_whatever_its_shape(tmp_path, client):
    """A long "/" object crossing chunks diagonally, far beyond the halo (its bounding box
    starts in a core it has no pixel near), and round nuclei: one row each, measured whole."""
    from skimage.draw import disk, line

    cells = np.zeros((256, 256), np.uint8)
    for d in range(-4, 5):                                     # a 9-px-thick diagonal band
        rr, cc = line(230, 10 + max(d, 0), 10 - min(d, 0), 230)
        cells[rr, cc] = 200
    nuclei = np.zeros_like(cells)
    for cy, cx in ((30, 30), (100, 120), (200, 200), (60, 250)):
        nuclei[disk((cy, cx), 9, shape=nuclei.shape)] = 200
    image = np.stack([cells, nuclei, np.zeros_like(cells)], axis=-1)
    result = segment_chunked(client, from_array(image, "band"), tmp_path / "band.zarr",
                             ModelSpec("mask-oracle-test"), predictor=MaskOracle(), chunk=64, halo=16,
                             estimate=False, table=tmp_path / "band.csv")
    out = read_ome_labels(result.output)
    table = pd.read_csv(tmp_path / "band.csv").set_index(["class", "label"])
    assert result.counts == {"cell": 1, "nucleus": 4} and len(table) == 5
    for cls, n in result.counts.items():
        labels = np.asarray(out[cls][0])
        for label in range(1, n + 1):
            ys, xs = np.nonzero(labels == label)
            row = table.loc[(cls, label)]
            assert row["area"] == ys.size
            assert (row["bbox_min_y"], row["bbox_min_x"], row["bbox_max_y"], row["bbox_max_x"]) == (
                ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
            assert abs(row["centroid_y"] - ys.mean()) < 0.01 and abs(row["centroid_x"] - xs.mean()) < 0.01
    band = table.loc[("cell", 1)]
    assert band["box_width"] > 280 and 40 < abs(band["box_angle_deg"]) < 50   # the long rotated box


def test_the_object_table_has_one_row_per_object_claimed_first_by_its_top_left_block(tmp_path):
    """A detector's mask split in two by the seam merge looks, to the block right of the seam,
    as if it started there; the table keeps the claim of the block holding its top-left."""
    from napari_deepcens.scale.zarr_out import assemble_table

    left, right = tmp_path / "part_0_0.csv", tmp_path / "part_0_1.csv"
    row = ["7", "cell", "0.9", "2262", "40.0", "230.0", "10", "215", "70", "300"] + ["0"] * 5
    piece = ["7", "cell", "0.9", "290", "45.0", "270.0", "20", "256", "60", "300"] + ["0"] * 5
    other = ["8", "cell", "0.8", "300", "45.0", "400.0", "20", "380", "60", "420"] + ["0"] * 5
    nucleus = ["7", "nucleus", "0.7", "200", "40.0", "230.0", "30", "220", "50", "240"] + ["0"] * 5
    left.write_text("\n".join(",".join(r) for r in (row, nucleus)) + "\n")
    right.write_text("\n".join(",".join(r) for r in (piece, other)) + "\n")
    table = pd.read_csv(assemble_table([left, right], tmp_path / "objects.csv"))
    assert list(table.columns) == list(TABLE_COLUMNS) and len(table) == 3
    assert table.set_index(["label", "class"]).loc[(7, "cell"), "area"] == 2262


def test_a_killed_runs_temporary_store_is_removed_by_the_next_run(tmp_path):
    import os
    import subprocess
    import time

    from napari_deepcens.scale.chunked import _HOST, remove_stale_runs

    gone = subprocess.Popen(["true"])
    gone.wait()                                             # a process that no longer exists
    output = tmp_path / "slide.zarr"
    stale = tmp_path / f".slide.zarr.tmp-{_HOST}-{gone.pid}-1795735053"
    ours = tmp_path / f".slide.zarr.tmp-{_HOST}-{os.getpid()}-1795735099"
    elsewhere = tmp_path / f".slide.zarr.tmp-othernode-{gone.pid}-1795735053"   # shared disk
    fresh = tmp_path / f".slide.zarr.tmp-{_HOST}-{gone.pid}-1795739999"
    other = tmp_path / ".other.zarr.tmp-1-1"
    hour_ago = time.time() - 7200
    for folder in (stale, ours, elsewhere, fresh, other):
        (folder / ".scratch").mkdir(parents=True)
        if folder is not fresh:
            for path in (folder / ".scratch", folder):
                os.utime(path, (hour_ago, hour_ago))
    assert remove_stale_runs(output) == [stale]
    assert all(f.exists() for f in (ours, elsewhere, fresh, other))


def test_two_stain_cells_run_chunked(tmp_path, client):
    """The cells model chunk by chunk on an RGB two-stain field. DeepCeNS tiles must be whole
    multiples of 64 px: edge chunks whose zoomed side was a multiple of 32 only used to fail
    ("tile size 224 must be a multiple of 64"). Measured against one piece on this 512² crop
    of ~145-px cells cut into 224-px chunks: nuclei AP@0.5 1.00, cells 0.77 (11 cells whole,
    12 chunked: a cell's context differs between chunks)."""
    import imageio.v3 as iio

    from napari_deepcens import Predictor
    from napari_deepcens.io.layout import list_samples

    (sample,) = list_samples(Path(__file__).parent / "data" / "u2os_cells")
    rgb = iio.imread(sample.image)
    predictor = Predictor.from_name("cells", device="cpu")
    result = segment_chunked(client, from_array(rgb), tmp_path / "c.zarr", ModelSpec("cells", device="cpu"),
                             predictor=predictor, chunk=224, halo=160, diameter=44.0, estimate=False)
    labels = read_ome_labels(result.output)
    whole = predictor.instances(predictor.predict(rgb, diameter=44.0)).by_class()
    assert set(result.counts) == {"cell", "nucleus"}
    nuclei = match_image(whole["nucleus"].labels, np.asarray(labels["nucleus"][0]))
    cells = match_image(whole["cell"].labels, np.asarray(labels["cell"][0]))
    assert nuclei.ap(0.5) >= 0.9 and cells.ap(0.5) >= 0.5, (nuclei.ap(0.5), cells.ap(0.5))
    assert abs(result.counts["cell"] - int(whole["cell"].labels.max())) <= 4


def test_folders_give_their_images_whatever_the_names_and_links(tmp_path):
    """Dots inside a name do not hide its ``_labels`` output from the skip; linked sample
    folders are searched (as ``evaluate`` and ``train`` read them), a link loop ends, and
    hidden folders are left alone."""
    import os

    from napari_deepcens.scale.fanout import expand_inputs

    tile = np.zeros((8, 8), np.uint8)
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere" / "s1"
    for path in (data / "2021.05.03_well1.tif", data / "2021.05.03_well1_labels.tif",
                 data / "x.ome.tif", data / "x.ome_labels.tif", data / ".cache" / "thumb.tif",
                 elsewhere / "image.tif"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, tile)
    os.symlink(elsewhere, data / "s1")                    # a sample folder linked in
    os.symlink(data, data / "loop")                       # and a loop
    with logged("napari_deepcens") as said:
        found = [p.relative_to(data).as_posix() for p in expand_inputs([data])]
    assert found == ["2021.05.03_well1.tif", "s1/image.tif", "x.ome.tif"]
    assert not said  # every _labels file has its image beside it: outputs, nothing to say
    for cls in ("cell", "nucleus"):                     # a two-class model's outputs too
        tifffile.imwrite(data / f"2021.05.03_well1_{cls}_labels.tif", tile)
    with logged("napari_deepcens") as said:
        expand_inputs([data])
    assert not said
    tifffile.imwrite(data / "DAPI_labels.tif", tile)    # the user's own image, so named
    with logged("napari_deepcens") as said:
        assert len(expand_inputs([data])) == 3
    assert len(said) == 1 and "left out 1 file(s) named like label images" in said[0]
    assert "DAPI_labels.tif" in said[0]


def test_outputs_beside_the_inputs_resume_and_never_replace_them(tmp_path, mosaic, capsys):
    """Outputs inside the input folder (or in it) are not taken for images on a rerun, which
    resumes; a Zarr store whose output would be itself is refused, even with --overwrite."""
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "big.tif", mosaic[:256], tile=(64, 64))
    shutil.copy(next(DSB_VAL.glob("0bda*/image.png")), src / "small.png")
    common = ["--device", "cpu", "--chunked-above", "0.05", "--chunk", "128"]
    inside = ["segment", str(src), "-o", str(src / "seg"), *common]
    assert main(inside) == 0, capsys.readouterr().err
    assert (src / "seg" / "big.zarr").is_dir() and (src / "seg" / "small_labels.tif").is_file()
    capsys.readouterr()
    assert main(inside) == 0, capsys.readouterr().err                # resumes: all done
    assert capsys.readouterr().out.count("skip") == 2
    beside = ["segment", str(src / "*"), "-o", str(src), *common]    # a glob, -o the same folder
    assert main(beside) == 0 and main(beside) == 0, capsys.readouterr().err
    assert not list(src.glob("*_labels_labels.tif")) and not (src / "big_objects_labels.tif").exists()
    store = tmp_path / "z" / "slide.zarr"
    write_ome_zarr(store, mosaic[:256])
    (store / "MY_NOTES.txt").write_text("mine")
    capsys.readouterr()
    assert main(["segment", str(store), "-o", str(store.parent), "--overwrite", *common]) == 1
    assert "would replace the image itself" in capsys.readouterr().err
    assert (store / "MY_NOTES.txt").read_text() == "mine"


def test_chunked_runs_read_the_channel_asked_for_and_deep_unets(tmp_path, mosaic, capsys):
    """--channel picks the nuclear stain on the chunked path too (it used to mix the colours);
    a U-Net of depth 6 gets tiles of 64-px multiples there, and a slide where it finds
    nothing (this one is untrained) is written empty (it used to fail when stitching)."""
    import torch

    from napari_deepcens.models.registry import build_model
    from napari_deepcens.models.weights import WeightsInfo, save_weights

    grey = mosaic[:256]
    rgb = np.stack([grey, grey[::-1, ::-1], np.zeros_like(grey)], axis=-1)
    tifffile.imwrite(tmp_path / "rg.tif", rgb, photometric="rgb")
    for out, extra in (("one", []), ("chunked", ["--chunked-above", "0.01", "--chunk", "128"])):
        assert main(["segment", str(tmp_path / "rg.tif"), "-o", str(tmp_path / out), "--channel",
                     "0", "--device", "cpu", *extra]) == 0, capsys.readouterr().err
    whole = tifffile.imread(tmp_path / "one" / "rg_labels.tif")
    chunked = np.asarray(read_ome_labels(tmp_path / "chunked" / "rg.zarr")["nucleus"][0])
    assert match_image(whole, chunked).ap(0.5) > 0.9
    torch.manual_seed(0)
    model = build_model("unet", {"base_channels": 4, "depth": 6})
    weights = save_weights(tmp_path / "d6.safetensors", model,
                           WeightsInfo("unet", model.config.to_dict(), median_diameter=20.0))
    assert main(["segment", str(tmp_path / "rg.tif"), "-o", str(tmp_path / "d6"), "--channel", "0",
                 "--weights", str(weights), "--device", "cpu", "--chunked-above", "0.01",
                 "--chunk", "128"]) == 0, capsys.readouterr().err
    assert not np.asarray(read_ome_labels(tmp_path / "d6" / "rg.zarr")["nucleus"][0]).any()


def test_multichannel_files_run_chunked_on_the_channel_asked_for(tmp_path, mosaic, capsys):
    """Two stains channels first, as microscopes write them (a CYX TIFF, a (c, y, x)
    OME-Zarr, tifffile's plain (2, H, W)): chunked on --channel as the one-piece run of that
    stain; without --channel one clear line says how many there are."""
    grey = mosaic[:256]
    stains = np.stack([np.zeros_like(grey), grey])                 # the nuclei in channel 1
    tifffile.imwrite(tmp_path / "cyx.tif", stains, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "plain.tif", stains)
    root = zarr.open_group(str(tmp_path / "cyx.zarr"), mode="w", zarr_format=2)
    root.create_array("0", shape=stains.shape, dtype=stains.dtype, chunks=(1, 64, 64))[:] = stains
    space = [{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"]
    scale = [{"type": "scale", "scale": [1.0, 0.325, 0.325]},
             {"type": "translation", "translation": [0.0, 1000.0, 2000.0]}]  # the stage position
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "c", "type": "channel"}, *space],
                                  "datasets": [{"path": "0", "coordinateTransformations": scale}]}]
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    assert main(["segment", str(tmp_path / "grey.tif"), "-o", str(tmp_path / "one"),
                 "--device", "cpu"]) == 0
    whole = tifffile.imread(tmp_path / "one" / "grey_labels.tif")
    chunked = ["--chunked-above", "0.01", "--chunk", "128", "--device", "cpu"]
    for name in ("cyx.tif", "plain.tif", "cyx.zarr"):
        out = tmp_path / name.replace(".", "_")
        capsys.readouterr()
        assert main(["segment", str(tmp_path / name), "-o", str(out), *chunked]) == 1
        assert "has 2 channels: choose the nuclear stain with --channel (0 to 1)" in capsys.readouterr().err
        assert main(["segment", str(tmp_path / name), "-o", str(out), "--channel", "1", *chunked]) == 0
        labels = np.asarray(read_ome_labels(out / f"{name.split('.')[0]}.zarr")["nucleus"][0])
        assert match_image(whole, labels).ap(0.5) > 0.9, name
    # a time-lapse TIFF is a stack, never a colour image, on the chunked path too
    tifffile.imwrite(tmp_path / "tyx.tif", np.stack([grey] * 3), imagej=True, metadata={"axes": "TYX"})
    with pytest.raises(ImageError, match="pick one plane"):
        open_lazy(tmp_path / "tyx.tif")
    # napari opens a two-stain store as a layer per stain
    (stain_layers,) = read_for_napari(tmp_path / "cyx.zarr")
    assert stain_layers[1]["channel_axis"] == -1 and "rgb" not in stain_layers[1]
    # the store's pixel size (0.325 µm) is the output's, so its labels overlay the input
    image_layer, labels_layer = read_for_napari(tmp_path / "cyx_zarr" / "cyx.zarr")
    assert image_layer[1]["scale"] == labels_layer[1]["scale"] == (0.325, 0.325)
    store = zarr.open_group(str(tmp_path / "cyx_zarr" / "cyx.zarr"), mode="r")
    ms = store["labels/nucleus"].attrs["multiscales"][0]
    assert ms["axes"][0]["unit"] == "micrometer"
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [0.65, 0.65]
    # and its position: every level starts where level 0 does (levels take every other pixel)
    for ds in ms["datasets"]:
        assert ds["coordinateTransformations"][1]["translation"] == [1000.0, 2000.0]
    assert image_layer[1]["translate"] == labels_layer[1]["translate"] == (1000.0, 2000.0)
    level1 = np.asarray(read_ome_labels(tmp_path / "cyx_zarr" / "cyx.zarr")["nucleus"][1])
    level0 = np.asarray(read_ome_labels(tmp_path / "cyx_zarr" / "cyx.zarr")["nucleus"][0])
    assert np.array_equal(level1, level0[::2, ::2])


def test_widget_chunks_the_channel_layer_it_is_given(make_napari_viewer, qtbot, mosaic, tmp_path,
                                                     monkeypatch):
    """One channel of a multichannel TIFF (napari opened it as one layer per channel) is
    segmented itself, not the whole file reopened and its colours mixed."""
    from napari_deepcens.scale import chunked
    from napari_deepcens.widget import segment_widget
    from napari_deepcens.widget.segment_widget import SegmentWidget

    monkeypatch.setattr(chunked, "ESTIMATE_CROP", 256)
    grey = mosaic[:256]
    path = tmp_path / "rg.tif"
    tifffile.imwrite(path, np.stack([np.zeros_like(grey), grey[::-1, ::-1], grey], axis=-1),
                     photometric="rgb")
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), channel_axis=2, plugin="napari")
    blue = layers[2]
    assert blue.data.shape == grey.shape and blue.source.path == str(path)
    widget = SegmentWidget(viewer)
    widget.set_options(image=blue, device="cpu", auto_diameter=False)
    monkeypatch.setattr(segment_widget, "CHUNKED_ABOVE", 10_000)
    monkeypatch.setattr(segment_widget, "CHUNK", 128)
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    layer = viewer.layers[f"{blue.name} labels"]
    labels = np.asarray(layer.data[0] if layer.multiscale else layer.data)
    assert "chunked" in widget.status, widget.status
    from napari_deepcens import Predictor

    alone = Predictor.from_name("unet", device="cpu").segment(grey, diameter=widget._diameter.value)
    assert match_image(alone, labels).ap(0.5) > 0.8


def test_a_plain_tiff_is_read_region_by_region(tmp_path):
    """An uncompressed TIFF in one strip (what most tools write) is one zarr chunk, the whole
    image: every chunk's task read the whole slide. It is memory-mapped instead."""
    import tifffile

    from napari_deepcens.scale.lazy import PLAIN, _open_array, open_lazy

    data = np.random.default_rng(0).integers(0, 4000, (2600, 2200), dtype=np.uint16)
    plain, packed = tmp_path / "plain.tif", tmp_path / "packed.tif"
    tifffile.imwrite(plain, data)
    tifffile.imwrite(packed, data, compression="zlib")
    image = open_lazy(plain)
    assert image.sources[0].level == PLAIN
    assert max(image.levels[0].chunksize) <= 2048
    assert np.array_equal(image.sources[0].region(slice(100, 164), slice(1000, 1100)),
                          data[100:164, 1000:1100])
    assert np.array_equal(np.asarray(image.levels[0]), data)
    # every n-th pixel (napari's thumbnails, the modality guess, the sampling), any direction
    for key in ((slice(None, None, 2), slice(3, None, 3)), (slice(900, 100, -7), 5),
                (-1, slice(None, None, -1))):
        assert np.array_equal(image.levels[0][key].compute(), data[key])
    with pytest.raises(IndexError):
        _open_array(str(plain), PLAIN)[data.shape[0], 0]
    assert open_lazy(packed).sources[0].level != PLAIN  # compressed: read through zarr
    # Fiji writes big-endian: read in the machine's byte order (torch refuses the other)
    tifffile.imwrite(tmp_path / "fiji.tif", data, byteorder=">")
    fiji = open_lazy(tmp_path / "fiji.tif").sources[0]
    region = fiji.region(slice(7, 70), slice(5, 50))
    assert region.dtype.isnative and np.array_equal(region, data[7:70, 5:50])
    # a file cut while open (a save over it, an acquisition still writing) is an error to
    # report, not a crash: a memory map of it killed the process (SIGBUS)
    with open(tmp_path / "plain.tif", "r+b") as fh:
        fh.truncate(4096)
    with pytest.raises(ImageError, match="shorter than its header says"):
        image.sources[0].region(slice(2000, 2064), slice(0, 64))


def test_a_damaged_file_on_the_chunked_path_is_said_so(tmp_path, capsys):
    """A half-copied TIFF (large files take the chunked path) read as 'unexpected error
    (TiffFileError)', as if it were a bug; in memory the same file was 'damaged'."""
    data = np.random.default_rng(0).integers(0, 4000, (192, 192), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "whole.tif", data)
    raw = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    assert main(["segment", str(tmp_path / "cut.tif"), "-o", str(tmp_path / "out"),
                 "--chunked-above", "0", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "the file is damaged" in err and "unexpected" not in err
