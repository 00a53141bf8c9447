"""Seed files of every format MorphScope reads, made by the tests themselves (no binaries from
elsewhere): the corpus, HDF5 and fuzz tests derive their hostile files from these."""

import json

import pytest

import handbuilt
from handbuilt import H, W


@pytest.fixture(scope="session")
def seeds(tmp_path_factory):
    """Format -> path of a small valid file: ``.pt2``, ``.pt``, ``.safetensors``, graph
    ``.json`` and ``alive_100`` (a torch separable net), ``.keras``, ``.h5``, ``.weights.h5``
    (the same net in Keras)."""
    import torch
    from safetensors.torch import save_file

    from morphscope.importers.torch_importer import load_module

    folder = tmp_path_factory.mktemp("seeds")
    net = handbuilt.torch_separable_net().eval()
    files = {".pt2": folder / "seed.pt2", ".pt": folder / "seed.pt", ".safetensors": folder / "seed.safetensors",
             ".json": folder / "seed.json", "alive": folder / "alive_100", ".keras": folder / "seed.keras",
             ".h5": folder / "seed.h5", ".weights.h5": folder / "seed.weights.h5"}
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, H, W),)), files[".pt2"])
    torch.save(net.state_dict(), files[".pt"])
    save_file({k: v.contiguous() for k, v in net.state_dict().items() if v.is_floating_point()},
              files[".safetensors"])
    files[".json"].write_text(load_module(net, (3, H, W)).to_json())
    files["alive"].write_text(json.dumps({"pw/Conv2D": 7, "stem/Conv2D": 5}))
    model = handbuilt.keras_separable_net()
    model.save(files[".keras"])
    model.save(files[".h5"])
    model.save_weights(files[".weights.h5"])
    return files
