"""Start a cells + nuclei DeepCeNS from the bundled nucleus DeepCeNS (the bundled ``cells``
weights began here; docs/models.md, "Cells + nuclei").

    python tools/init_two_stain.py ../shared/data/u2os-cells-nuclei/train runs/dc_cells_init.safetensors

Same architecture, with 3 input channels (red nuclear stain, green cytoplasm, blue empty) and
the classes of the data (cell, nucleus), normalised by the data's per-channel mean and std.
Every tensor whose name and shape match is copied. The stem's grey filters go to the nuclear
(red) channel and the others start at zero, so the network starts as the nucleus detector on
the nuclear stain. Class rows: background stays, the nucleus row moves to ``nucleus`` and
``cell`` starts as a copy of it. The median diameter stays the nucleus model's, so training
(``deepcens train --init``) zooms the data's nuclei to the size the backbone already knows,
and the diameter knob keeps meaning "nucleus diameter".
"""

import sys
from dataclasses import replace

import torch

from napari_deepcens.models.registry import build_model, bundled_weights
from napari_deepcens.models.weights import load_weights, save_weights
from napari_deepcens.training.dataset import load_folder
from napari_deepcens.training.loop import detection_data_config


def main(data: str, output: str) -> None:
    source, info = load_weights(bundled_weights("deepcens"))
    items = load_folder(data, channels=3)
    config = {**info.config, **detection_data_config(items)}
    model = build_model("deepcens", config)
    old, new = source.state_dict(), model.state_dict()
    names = list(config["classes"])
    target = names.index("nucleus") + 1 if "nucleus" in names else 1
    for key, value in new.items():
        if key not in old:
            continue
        src = old[key]
        if src.shape == value.shape:
            new[key] = src
        elif value.ndim == 4 and src.shape[1] == 1 and value.shape[1] == 3 \
                and src.shape[0] == value.shape[0]:  # the stem: grey filters on the red channel
            value = torch.zeros_like(value)
            value[:, 0] = src[:, 0]
            new[key] = value
        elif src.shape[0] == 2 and value.shape[1:] == src.shape[1:]:  # per-class rows
            rows = src[1].expand_as(value).clone()  # every object class starts as a nucleus
            rows[0] = src[0]
            rows[target] = src[1]
            new[key] = rows
    model.load_state_dict(new)
    save_weights(output, model, replace(info, config=model.config.to_dict(), metrics={},
                                        training={}))
    print(f"{output}: {', '.join(names)} from {bundled_weights('deepcens').name}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
