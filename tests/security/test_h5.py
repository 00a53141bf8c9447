"""HDF5 files that point outside themselves are refused before anything is read (issue 14).

Each test writes a secret file with known bytes, then a Keras checkpoint or model whose bn
gamma reaches for it (external storage, an external link, a virtual dataset, a soft link), and
checks the one-line refusal and that the secret's bytes (or the floats they decode to) appear
in no output.
"""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from morphscope.cli.main import main
from morphscope.errors import UnsafeFileError
from morphscope.importers.checkpoints import load_structure
from morphscope.importers.load import load_model

SECRET = np.arange(1, 14, dtype=np.float32) * 0.123  # 13 floats: bn_dw's width


@pytest.fixture(scope="module")
def keras_graph(seeds):
    return load_model(str(seeds[".keras"]))


@pytest.fixture()
def secret(tmp_path):
    path = tmp_path / "secret.bin"
    path.write_bytes(SECRET.tobytes())
    return path


def gamma_path(h5file):
    """The dataset path of bn_dw's gamma (layer groups are numbered by Keras)."""
    return next(f"/layers/{name}/vars/0" for name, group in h5file["layers"].items()
                if "vars" in group and group["vars"].attrs.get("name") == "bn_dw")


def rewrite(seed, dst, edit):
    """Copy ``seed``'s HDF5 file to ``dst`` and let ``edit(h5file, gamma)`` replace the gamma."""
    import h5py

    dst.write_bytes(Path(seed).read_bytes())
    with h5py.File(dst, "a") as f:
        gamma = gamma_path(f)
        del f[gamma]
        edit(f, gamma)
    return dst


def external_storage(secret):
    def edit(f, gamma):
        f.create_dataset(gamma, shape=(13,), dtype="f4", external=[(str(secret), 0, 13 * 4)])
    return edit


def external_link(secret_h5):
    def edit(f, gamma):
        import h5py

        f[gamma] = h5py.ExternalLink(str(secret_h5), "/gamma")
    return edit


def virtual_dataset(secret_h5):
    def edit(f, gamma):
        import h5py

        layout = h5py.VirtualLayout(shape=(13,), dtype="f4")
        layout[:] = h5py.VirtualSource(str(secret_h5), "gamma", shape=(13,))
        f.create_virtual_dataset(gamma, layout)
    return edit


def soft_link(_):
    def edit(f, gamma):
        import h5py

        f["stash"] = SECRET
        f[gamma] = h5py.SoftLink("/stash")
    return edit


def secret_h5_file(tmp_path):
    import h5py

    path = tmp_path / "secret.h5"
    with h5py.File(path, "w") as f:
        f["gamma"] = SECRET
    return path


CASES = {
    "external storage": (lambda tmp, secret: external_storage(secret), "stores its data in an external file"),
    "external link": (lambda tmp, secret: external_link(secret_h5_file(tmp)), "is an external link to another file"),
    "virtual dataset": (lambda tmp, secret: virtual_dataset(secret_h5_file(tmp)), "is a virtual dataset"),
    "soft link": (lambda tmp, secret: soft_link(secret), r"is a soft link \(to /stash\)"),
}


def assert_secret_absent(text):
    assert SECRET.tobytes().decode("latin-1") not in text
    for value in SECRET:
        assert f"{value:.3f}" not in text and f"{value:.4g}" not in text


@pytest.mark.parametrize("case", sorted(CASES))
def test_weights_h5_pointing_outside_is_refused(seeds, keras_graph, tmp_path, secret, case, capsys):
    make_edit, reason = CASES[case]
    path = rewrite(seeds[".weights.h5"], tmp_path / "ckpt.weights.h5", make_edit(tmp_path, secret))
    with pytest.raises(UnsafeFileError, match=f"ckpt.weights.h5: refused, HDF5 (dataset|object) "
                       f"/layers/.*/vars/0 {reason}") as err:
        load_structure(keras_graph, path)
    assert "\n" not in str(err.value)
    assert_secret_absent(str(err.value))
    # The command line: one line on stderr, exit status 2, no numbers from the secret.
    assert main(["report", str(seeds[".keras"]), "--checkpoint", str(path), "--json"]) == 2
    out, errors = capsys.readouterr()
    assert out == "" and errors.count("\n") == 1 and reason.split(" ")[0] in errors
    assert_secret_absent(out + errors)


def test_keras_archive_whose_weights_point_outside_is_refused_as_checkpoint_and_model(
        seeds, keras_graph, tmp_path, secret):
    inner = rewrite(seeds[".weights.h5"], tmp_path / "inner.h5", external_storage(secret))
    path = tmp_path / "outside.keras"
    with zipfile.ZipFile(seeds[".keras"]) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = inner.read_bytes() if info.filename == "model.weights.h5" else src.read(info)
            dst.writestr(info.filename, data)
    for load in (lambda: load_structure(keras_graph, path), lambda: load_model(str(path))):
        with pytest.raises(UnsafeFileError, match="outside.keras: refused, HDF5 dataset .* stores its "
                           "data in an external file") as err:
            load()
        assert_secret_absent(str(err.value))


def test_legacy_h5_model_with_an_external_link_is_refused_before_keras_reads_it(seeds, tmp_path, secret):
    import h5py

    path = tmp_path / "model.h5"
    path.write_bytes(Path(seeds[".h5"]).read_bytes())
    with h5py.File(path, "a") as f:
        f["model_weights/peek"] = h5py.ExternalLink(str(secret_h5_file(tmp_path)), "/gamma")
    with pytest.raises(UnsafeFileError, match="model.h5: refused, HDF5 object /model_weights/peek is an "
                       "external link to another file"):
        load_model(str(path))


def test_plugin_filters_are_refused(seeds, keras_graph, tmp_path):
    """A filter id HDF5 does not implement would make it dlopen a plugin library."""
    import h5py

    path = tmp_path / "plugin.weights.h5"

    def edit(f, gamma):
        space = h5py.h5s.create_simple((13,))
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_chunk((13,))
        plist.set_filter(31999, h5py.h5z.FLAG_OPTIONAL)  # an unregistered, optional filter id
        h5py.h5d.create(f.id, gamma.encode(), h5py.h5t.IEEE_F32LE, space, dcpl=plist)

    rewrite(seeds[".weights.h5"], path, edit)
    with pytest.raises(UnsafeFileError, match=r"plugin.weights.h5: refused, HDF5 dataset .* uses filter "
                       r"31999, which would load a plugin; built-in filters only"):
        load_structure(keras_graph, path)


def test_guard_reads_in_memory_files(seeds):
    """The .h5 inside a .keras archive is checked from bytes, never written to disk."""
    from morphscope.importers.h5safe import open_h5

    with zipfile.ZipFile(seeds[".keras"]) as archive:
        data = archive.read("model.weights.h5")
    with open_h5(io.BytesIO(data), "in-memory.h5") as f:
        assert "layers" in f
