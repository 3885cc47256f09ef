"""The ``deepcens`` command line, end to end on real images."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
import tifffile

from napari_deepcens.cli import main
from napari_deepcens.models.registry import bundled_weights
from napari_deepcens.models.weights import load_weights, save_weights

from .conftest import DATA, DSB_VAL, logged

DSB_TINY, DSB_SPARSE = DATA / "dsb_tiny", DATA / "dsb_sparse"


@pytest.fixture
def one_image(tmp_path):
    src = next(p for p in DSB_VAL.iterdir() if p.is_dir() and p.name.startswith("0bda"))
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(src / "image.png", folder / "cells.png")
    return folder / "cells.png", src


def test_segment_writes_labels_and_skips_existing(one_image, tmp_path, capsys):
    image, _src = one_image
    out = tmp_path / "out"
    assert main(["segment", str(image), "-o", str(out), "--device", "cpu"]) == 0
    labels = tifffile.imread(out / "cells_labels.tif")
    assert labels.shape == (256, 256) and 40 <= labels.max() <= 70
    said = capsys.readouterr().out
    size = float(said.split("diameter ")[1].split(" px")[0])
    assert "estimated" in said and 7 <= size <= 13          # median of the truth: 9.4 px
    mtime = (out / "cells_labels.tif").stat().st_mtime_ns
    assert main(["segment", str(image), "-o", str(out)]) == 0
    assert "skip" in capsys.readouterr().out
    assert (out / "cells_labels.tif").stat().st_mtime_ns == mtime


def test_segment_goes_on_past_a_bad_file(one_image, tmp_path, capsys):
    image, _ = one_image
    bad = image.parent / "broken.tif"
    bad.write_bytes(b"garbage")
    out = tmp_path / "out"
    code = main(["segment", str(bad), str(image), "-o", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert "1 of 2 images failed" in err and "broken.tif" in err
    assert (out / "cells_labels.tif").is_file()
    assert "Traceback" not in err


def test_segment_with_corrupt_weights_is_one_clear_line(one_image, tmp_path, capsys):
    image, _ = one_image
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"nope")
    assert main(["segment", str(image), "-o", str(tmp_path / "o"), "--weights", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not a valid safetensors" in err


def test_segment_dataset_layout_then_evaluate(tmp_path, capsys):
    images = sorted(DSB_VAL.glob("*/image.png"))
    out = tmp_path / "pred"
    assert main(["segment", *map(str, images), "-o", str(out), "--device", "cpu"]) == 0
    assert len(list(out.glob("*_labels.tif"))) == len(images)
    capsys.readouterr()
    assert main(["evaluate", str(DSB_VAL), str(out), "--json", str(tmp_path / "m.json")]) == 0
    table = capsys.readouterr().out
    assert "overall" in table and "histology" in table and "DSB" in table
    overall = table.splitlines()[1].split()
    assert float(overall[2]) > 0.6            # AP@0.5 on these three val images


def test_evaluate_refuses_missing_predictions(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(DSB_VAL), str(tmp_path / "empty")]) == 2
    assert "no prediction" in capsys.readouterr().err
    # the dataset given twice: its own labels would score a perfect, meaningless 1.000
    assert main(["evaluate", str(DSB_VAL), str(DSB_VAL)]) == 2
    assert "are its ground truth" in capsys.readouterr().err


def test_train_then_finetune_with_init(tmp_path, capsys):
    w1 = tmp_path / "a.safetensors"
    args = ["train", str(DSB_VAL), "-o", str(w1), "--epochs", "1", "--steps-per-epoch", "3",
            "--batch-size", "2", "--crop", "64", "--base-channels", "4", "--depth", "2",
            "--device", "cpu"]
    assert main(args) == 0
    _model, info = load_weights(w1)
    assert info.config["base_channels"] == 4 and info.median_diameter > 5
    # a tuned working diameter and sharpening are the network's, and stay with its fine-tunes
    zoomed = save_weights(tmp_path / "a_zoomed.safetensors", _model,
                          replace(info, working_diameter=round(1.1 * info.median_diameter, 2),
                                  sharpen_enlarged=True))
    w2 = tmp_path / "b.safetensors"
    assert main([*args[:3], str(w2), *args[4:], "--init", str(zoomed)]) == 0
    _, info2 = load_weights(w2)
    assert info2.training["init"] == str(zoomed)
    assert info2.working_diameter == round(1.1 * info.median_diameter, 2) > 0
    assert info2.sharpen_enlarged
    # fine-tuning started from w1: the weights differ but the architecture is w1's
    assert info2.config == info.config
    a, b = load_weights(w1)[0].state_dict(), load_weights(w2)[0].state_dict()
    assert any(not np.allclose(a[k].numpy(), b[k].numpy()) for k in a)

    # nothing is ever overwritten, and a finished or foreign checkpoint is said, not used
    capsys.readouterr()
    mine = tmp_path / "notes.safetensors"
    mine.write_text("my own file")
    assert main([*args[:3], str(mine), *args[4:]]) == 2
    assert mine.read_text() == "my own file" and "exists" in capsys.readouterr().err
    assert main(args) == 2                                  # the same run again
    assert "already finished" in capsys.readouterr().err
    assert main([*args, "--epochs", "2"]) == 2              # another recipe, same output
    err = capsys.readouterr().err
    assert "another training run" in err and "epochs" in err and "Traceback" not in err


def test_unknown_model_is_a_clear_error(one_image, tmp_path, capsys):
    image, _ = one_image
    assert main(["segment", str(image), "-o", str(tmp_path), "--model", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_centerunet_writes_boxes_csv_and_evaluate_reports_box_ap(tmp_path, capsys):
    import csv

    images = sorted(DSB_VAL.glob("*/image.png"))
    out = tmp_path / "pred"
    assert main(["segment", *map(str, images), "-o", str(out), "--model", "centerunet",
                 "--device", "cpu"]) == 0
    box_files = sorted(out.glob("*_boxes.csv"))
    assert len(box_files) == len(images)
    with box_files[0].open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["label", "score", "cx", "cy", "width", "height", "angle_deg"]
    labels = tifffile.imread(str(box_files[0]).replace("_boxes.csv", "_labels.tif"))
    assert len(rows) - 1 == labels.max()                     # one box per label
    assert all(0 <= float(r[6]) < 180 and float(r[4]) >= float(r[5]) for r in rows[1:])
    capsys.readouterr()
    assert main(["evaluate", str(DSB_VAL), str(out)]) == 0
    table = capsys.readouterr().out
    header, overall = table.splitlines()[0].split(), table.splitlines()[1].split()
    assert "box_AP@0.5" in header
    assert float(overall[header.index("box_AP@0.5")]) > 0.5
    # another model over the same folder (--overwrite): the CenterUNet boxes go with its labels
    kept = tmp_path / "kept.csv"
    kept.write_bytes(box_files[0].read_bytes())
    assert main(["segment", *map(str, images), "-o", str(out), "--overwrite", "--device", "cpu"]) == 0
    assert not list(out.glob("*_boxes.csv"))
    # a table that does not describe its labels is left out of the scores, with a warning
    (out / box_files[0].name).write_bytes(kept.read_bytes())
    capsys.readouterr()
    with logged("napari_deepcens.evaluation.evaluate") as said:
        assert main(["evaluate", str(DSB_VAL), str(out)]) == 0
    assert "box_AP@0.5" not in capsys.readouterr().out.splitlines()[0]
    assert len(said) == 1 and "its boxes and scores are left out" in said[0]
    # a table edited by hand into nonsense, or damaged: left out the same way, not "a bug"
    for damaged in (b"label,score,cx,cy,width,height,angle_deg\n1,x,1,1,1,1,0\n",
                    b"\xff\xfe\x00garbage"):
        (out / box_files[0].name).write_bytes(damaged)
        with logged("napari_deepcens.evaluation.evaluate") as said:
            assert main(["evaluate", str(DSB_VAL), str(out)]) == 0
        assert len(said) == 1 and "cannot be read" in said[0], said


def test_tune_reports_what_segment_then_evaluate_will_measure(tmp_path, capsys):
    """``tune`` picks thresholds with each image at its estimated size; the metrics it stores
    must be those of the new file run end to end (the estimate itself uses the thresholds)."""
    import json

    from napari_deepcens import Predictor
    from napari_deepcens.training.loop import search_space

    tuned = tmp_path / "tuned.safetensors"
    bundled = bundled_weights("unet")
    # the object scorer refitted on two other images (the CLI path; the bundled one saw 503)
    assert main(["tune", str(bundled), str(DSB_VAL), "-o", str(tuned), "--confirm", "2",
                 "--device", "cpu", "--fit-scorer", str(DSB_TINY), str(DSB_SPARSE),
                 "--scorer-zooms", "1", "--working-diameter", "18", "--sharpen-enlarged", "no"]) == 0
    _model, info = load_weights(tuned)
    assert info.working_diameter == 18.0  # objects zoomed to 18 px, tuned and measured so
    assert load_weights(bundled)[1].sharpen_enlarged and not info.sharpen_enlarged
    assert info.object_scorer and info.object_scorer != load_weights(bundled)[1].object_scorer
    assert info.thresholds in [p.to_dict() for p in search_space(Predictor.from_weights(tuned))]
    out = tmp_path / "pred"
    assert main(["segment", *map(str, sorted(DSB_VAL.glob("*/image.png"))), "-o", str(out),
                 "--weights", str(tuned), "--device", "cpu"]) == 0
    assert main(["evaluate", str(DSB_VAL), str(out), "--json", str(tmp_path / "m.json")]) == 0
    measured = json.loads((tmp_path / "m.json").read_text())["overall"]
    assert info.metrics["val"]["DSB"] == pytest.approx(measured["DSB"], abs=1e-6)
    assert info.metrics["val"]["AP@0.5"] == pytest.approx(measured["AP@0.5"], abs=1e-6)
    assert main(["tune", str(bundled), str(DSB_VAL), "-o", str(tuned)]) != 0   # never overwritten
    assert "exists" in capsys.readouterr().err
    other = tmp_path / "other.safetensors"
    assert main(["tune", str(bundled), str(DSB_VAL), "-o", str(other),
                 "--working-diameter", "80"]) == 2   # 4× the training median: refused at once
    err = capsys.readouterr().err
    assert "--working-diameter must be 0 or lie within" in err and "Traceback" not in err
    assert not other.exists()


def test_tta_flag_gives_the_api_flip_averaged_labels(one_image, tmp_path):
    from napari_deepcens import Predictor
    from napari_deepcens.io.images import read_image

    image, _src = one_image
    out = tmp_path / "out"
    assert main(["segment", str(image), "-o", str(out), "--model", "centerunet", "--device", "cpu",
                 "--tta"]) == 0
    predictor = Predictor.from_name("centerunet", device="cpu")
    flipped = predictor.segment(read_image(image), tta=True)
    assert not np.array_equal(flipped, predictor.segment(read_image(image)))
    np.testing.assert_array_equal(tifffile.imread(out / "cells_labels.tif"), flipped)


def test_partial_outputs_are_never_mixed_and_bad_options_are_one_line(one_image, tmp_path, capsys):
    image, _ = one_image
    out = tmp_path / "out"
    assert main(["segment", str(image), "-o", str(out), "--model", "centerunet"]) == 0
    (out / "cells_labels.tif").unlink()                     # an interrupted run
    assert main(["segment", str(image), "-o", str(out), "--model", "centerunet"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "cells_boxes.csv").is_file()
    assert main(["segment", str(image), "-o", str(out), "--model", "centerunet",
                 "--overwrite"]) == 0
    assert (out / "cells_labels.tif").is_file()

    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    for bad in (["--tile", "80"], ["--diameter", "-5"], ["--diameter", "nan"],
                ["--diameter", "0.5"], ["--min-size", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            main(["segment", str(image), "-o", str(out), *bad])
        assert exit_.value.code == 2
    assert main(["segment", str(image), "-o", str(a_file)]) == 2
    assert main(["evaluate", str(DSB_VAL), str(out), "--json", str(a_file)]) == 2
    assert a_file.read_text() == "x"                        # --json never overwrites
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") >= 2


def test_hidden_files_are_skipped_and_a_spare_axis_is_not_a_stack(one_image, tmp_path, capsys):
    import imageio.v3 as iio

    image, _ = one_image
    grey = iio.imread(image)
    grey = grey[..., 0] if grey.ndim == 3 else grey
    folder = image.parent
    (folder / "._cells.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata
    tifffile.imwrite(folder / "planes.tif", grey[None])     # (1, H, W)
    out = tmp_path / "out"
    assert main(["segment", str(folder), "-o", str(out)]) == 0, capsys.readouterr().err
    a, b = tifffile.imread(out / "cells_labels.tif"), tifffile.imread(out / "planes_labels.tif")
    assert a.shape == b.shape == grey.shape and np.array_equal(a, b)
