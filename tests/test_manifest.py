"""The npe2 manifest is found through the installed package and every command imports."""

import importlib

from npe2 import PluginManifest


def test_manifest_found_and_commands_resolve():
    manifest = PluginManifest.from_distribution("napari-deepcens")
    assert manifest.name == "napari-deepcens"
    ids = {c.id for c in manifest.contributions.commands}
    assert {w.command for w in manifest.contributions.widgets} <= ids
    assert {s.command for s in manifest.contributions.sample_data} <= ids
    for command in manifest.contributions.commands:
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))


def test_sample_data_are_real_images():
    from napari_deepcens import sample_data

    for loader in (sample_data.fluorescence, sample_data.histology, sample_data.brightfield):
        (data, _meta, kind), = loader()
        assert kind == "image" and data.shape[0] >= 256 and data.std() > 5


def test_the_two_stain_sample_opens_as_a_nuclear_and_a_cytoplasm_layer():
    from napari_deepcens import sample_data

    (nuclei, nuclei_meta, kind), (cyto, cyto_meta, kind2) = sample_data.cells()
    assert kind == kind2 == "image" and nuclei.shape == cyto.shape == (640, 640)
    assert nuclei_meta["name"].startswith("nuclei") and cyto_meta["name"] == "cytoplasm"
    # different stains: the nuclei are compact bright spots, the cytoplasm spreads around them
    assert (nuclei > 50).mean() < (cyto > 50).mean()
