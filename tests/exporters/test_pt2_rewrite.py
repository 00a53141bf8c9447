"""rewrite_pt2: new weights in a torch.export archive, shapes re-derived, nothing unpickled."""

import io
import json
import pickle
import zipfile

import pytest
import torch
from torch import nn

from handbuilt import TouchOnUnpickle
from morphscope.errors import GraphError, UnsafeFileError, UnsupportedFileError
from morphscope.exporters.pt2_rewrite import rewrite_pt2

MODEL = "archive/models/model.json"  # torch.export.save to a buffer uses the prefix "archive/"
WEIGHTS = "archive/data/weights/model_weights_config.json"
CONSTANTS = "archive/data/constants/model_constants_config.json"
SAMPLE = "archive/data/sample_inputs/model.pt"
KEEP_13 = [0, 2, 5, 7]  # of conv1's 13 output channels
KEEP_23 = [1, 4, 6, 10, 11, 20, 22]  # of the 23-wide residual space


class ResNetlet(nn.Module):
    """x (2, 3, 17, 19)
         |- conv1 3->13 3x3 - bn1 - relu - conv2 13->23 3x3 - bn2 -.
         '- proj 3->23 1x1 (bias) -------------------------------- add - avgpool 1x1 - flatten - fc 23->7
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 13, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(13)
        self.conv2 = nn.Conv2d(13, 23, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(23)
        self.proj = nn.Conv2d(3, 23, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(23, 7)

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.pool(y + self.proj(x)), 1))


class ViewNet(nn.Module):
    """x (1, 3, 17, 19) - conv 3->13 3x3 - relu - view(1, 13*17*19) - fc 4199->7"""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 13, 3, padding=1)
        self.fc = nn.Linear(13 * 17 * 19, 7)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(1, 13 * 17 * 19))


class WrappedNet(nn.Module):
    """x (1, 3, 17, 19) - conv 3->13 3x3 - [no_grad: relu, *2] -+- max_pool2d 2 (values, indices)
                                                                 '- mean(2, 3) - fc 13->5
    Returns (fc, pooled values, indices): a wrapper body and an op with two outputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 13, 3, padding=1)
        self.fc = nn.Linear(13, 5)

    def forward(self, x):
        y = self.conv(x)
        with torch.no_grad():
            z = torch.relu(y) * 2
        pooled, indices = nn.functional.max_pool2d(z, 2, return_indices=True)
        return self.fc(z.mean((2, 3))), pooled, indices


class AutocastNet(nn.Module):
    """x (1, 3, 17, 19) - [autocast bfloat16: conv 3->13 3x3] - float - mean(2, 3) - fc 13->5"""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 13, 3, padding=1)
        self.fc = nn.Linear(13, 5)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = self.conv(x)
        return self.fc(y.float().mean((2, 3)))


class SplitNet(nn.Module):
    """x (1, 3, 17, 19) - conv 3->13 - split [6, 7] on channels - cat"""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 13, 3, padding=1)

    def forward(self, x):
        a, b = torch.split(self.conv(x), [6, 7], dim=1)
        return torch.cat([b, a], 1)


class SharedNet(nn.Module):
    """x - conv_a 3->13 -. ; conv_a.weight and conv_b.weight are views of one 29-row storage
         '- conv_b 3->16 -- cat (29 channels)"""

    def __init__(self):
        super().__init__()
        base = torch.randn(29, 3, 3, 3)
        self.conv_a = nn.Conv2d(3, 13, 3, padding=1, bias=False)
        self.conv_b = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.conv_a.weight = nn.Parameter(base[:13])
        self.conv_b.weight = nn.Parameter(base[13:])

    def forward(self, x):
        return torch.cat([self.conv_a(x), self.conv_b(x)], 1)


def _randomized(model):
    """The model in eval mode, its bn scales and statistics away from the defaults."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _saved(model, x):
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model, (x,)), buffer)
    return buffer.getvalue()


def _members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _zipped(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _edited(data, member, edit):
    """The archive with one JSON member changed by ``edit(doc)`` (in place)."""
    members = _members(data)
    doc = json.loads(members[member])
    edit(doc)
    members[member] = json.dumps(doc).encode()
    return _zipped(members)


def _slicer(*cut_sets):
    """A new_weight callback: each ``cuts[key] = (dim, kept indices)`` applied in turn (a key
    may be cut along several axes); other keys unchanged."""
    def new_weight(key, tensor):
        cuts = [cuts[key] for cuts in cut_sets if key in cuts]
        for dim, keep in cuts:
            tensor = tensor.index_select(dim, torch.tensor(keep))
        return tensor if cuts else None
    return new_weight


def _loaded(data):
    return torch.export.load(io.BytesIO(data))  # our own output only, never an input


def _node(doc, node_name):
    return next(n for n in doc["graph_module"]["graph"]["nodes"] if n["name"] == node_name)


def _sizes(doc, tensor):
    return [s["as_int"] for s in doc["graph_module"]["graph"]["tensor_values"][tensor]["sizes"]]


@pytest.fixture(scope="module")
def resnetlet():
    model = _randomized(ResNetlet())
    x = torch.randn(2, 3, 17, 19)
    return model, x, _saved(model, x)


BN1 = ("bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var")
CUT_13 = {"conv1.weight": (0, KEEP_13), **{key: (0, KEEP_13) for key in BN1}, "conv2.weight": (1, KEEP_13)}
BN2 = ("bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var")
CUT_23 = {"conv2.weight": (0, KEEP_23), **{key: (0, KEEP_23) for key in BN2}, "proj.weight": (0, KEEP_23),
          "proj.bias": (0, KEEP_23), "fc.weight": (1, KEEP_23)}


def _zeroed(model, cuts):
    """A copy of ``model`` whose removed channels output zero: each (key, dim 0) cut of a bn
    scale/shift or a projection zeroes the channels it drops (``cuts`` from several sets)."""
    copy = _randomized(type(model)())
    copy.load_state_dict(model.state_dict())
    params = dict(copy.named_parameters())
    with torch.no_grad():
        for key, (dim, keep) in cuts.items():
            if dim == 0 and key.endswith(("bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias", "proj.weight",
                                          "proj.bias")):
                drop = [c for c in range(params[key].shape[0]) if c not in keep]
                params[key][drop] = 0
    return copy


def test_pruned_conv_output_loads_runs_and_matches_zeroed_bn(resnetlet):
    model, x, data = resnetlet
    out = rewrite_pt2(data, "net.pt2", _slicer(CUT_13))
    program = _loaded(out)
    shapes = {key: tuple(t.shape) for key, t in program.state_dict.items()}
    # 4 kept of conv1's 13 outputs: conv1 rows, bn1 vectors and conv2 columns shrink
    assert shapes == {"conv1.weight": (4, 3, 3, 3), "bn1.weight": (4,), "bn1.bias": (4,),
                      "bn1.running_mean": (4,), "bn1.running_var": (4,), "bn1.num_batches_tracked": (),
                      "conv2.weight": (23, 4, 3, 3), "bn2.weight": (23,), "bn2.bias": (23,),
                      "bn2.running_mean": (23,), "bn2.running_var": (23,), "bn2.num_batches_tracked": (),
                      "proj.weight": (23, 3, 1, 1), "proj.bias": (23,), "fc.weight": (7, 23), "fc.bias": (7,)}
    assert torch.equal(program.state_dict["conv1.weight"], model.conv1.weight[KEEP_13])
    # bn1 with gamma = beta = 0 on the dropped channels feeds conv2 zeros there: same output
    expected = _zeroed(model, CUT_13)(x)
    assert torch.allclose(program.module()(x), expected, atol=1e-5)
    doc = json.loads(_members(out)[MODEL])
    assert _sizes(doc, "conv2d") == [2, 4, 17, 19]  # batch, kept channels, 17x19 map (padding 1)
    assert _sizes(doc, "relu") == [2, 4, 17, 19]
    assert _sizes(doc, "conv2d_1") == [2, 23, 17, 19]
    strides = [s["as_int"] for s in doc["graph_module"]["graph"]["tensor_values"]["relu"]["strides"]]
    assert strides == [4 * 17 * 19, 17 * 19, 19, 1]


def test_other_members_are_copied_byte_for_byte_in_order(resnetlet):
    _, _, data = resnetlet
    before, after = _members(data), _members(rewrite_pt2(data, "net.pt2", _slicer(CUT_13)))
    assert list(after) == list(before)
    config = json.loads(before[WEIGHTS])["config"]
    # the graph, the weights config, the cut weights, and the example inputs (written anew)
    rewritten = {MODEL, WEIGHTS, SAMPLE} | {f"archive/data/weights/{config[key]['path_name']}" for key in CUT_13}
    assert [m for m in before if before[m] != after[m]] == [m for m in before if m in rewritten]
    # conv1 kept 4 of 13 rows: 4*3*3*3 float32 values
    assert len(after[f"archive/data/weights/{config['conv1.weight']['path_name']}"]) == 4 * 3 * 3 * 3 * 4
    with zipfile.ZipFile(io.BytesIO(rewrite_pt2(data, "net.pt2", _slicer(CUT_13)))) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}


def test_unchanged_rewrite_reproduces_every_member_but_the_example_inputs(resnetlet):
    _, _, data = resnetlet
    before, after = _members(data), _members(rewrite_pt2(data, "net.pt2", lambda key, tensor: None))
    assert list(after) == list(before)
    assert {m: v for m, v in after.items() if m != SAMPLE} == {m: v for m, v in before.items() if m != SAMPLE}
    # our own example inputs: zeros of the traced input, (args, kwargs) as torch.export.save writes
    args, kwargs = torch.load(io.BytesIO(after[SAMPLE]), weights_only=True)
    assert kwargs == {} and len(args) == 1 and args[0].shape == (2, 3, 17, 19) and not args[0].any()


def test_pruned_residual_space_loads_runs_and_matches(resnetlet):
    model, x, data = resnetlet
    out = rewrite_pt2(data, "net.pt2", _slicer(CUT_13, CUT_23))
    program = _loaded(out)
    shapes = {key: tuple(t.shape) for key, t in program.state_dict.items()}
    # 7 kept of 23: conv2 rows (x 4 kept inputs), bn2, projection rows and bias, fc columns
    assert shapes["conv2.weight"] == (7, 4, 3, 3)
    assert shapes["bn2.running_var"] == (7,)
    assert shapes["proj.weight"] == (7, 3, 1, 1)
    assert shapes["proj.bias"] == (7,)
    assert shapes["fc.weight"] == (7, 7)
    assert shapes["fc.bias"] == (7,)
    # dropped residual channels are zero on both branches, so fc sees nothing from them
    expected = _zeroed(_zeroed(model, CUT_13), CUT_23)(x)
    assert torch.allclose(program.module()(x), expected, atol=1e-5)
    doc = json.loads(_members(out)[MODEL])
    assert _sizes(doc, "add") == [2, 7, 17, 19]
    assert _sizes(doc, "flatten") == [2, 7]
    assert _sizes(doc, "linear") == [2, 7]


def test_decomposed_program_with_tuple_and_none_outputs_is_rewritten(resnetlet):
    model, x, _ = resnetlet
    buffer = io.BytesIO()  # convolution and _native_batch_norm_legit_no_training (3 outputs)
    torch.export.save(torch.export.export(model, (x,)).run_decompositions(), buffer)
    out = rewrite_pt2(buffer.getvalue(), "net.pt2", _slicer(CUT_13))
    assert torch.allclose(_loaded(out).module()(x), _zeroed(model, CUT_13)(x), atol=1e-5)

    def unused_output_as_none(doc):
        bn = next(n for n in doc["graph_module"]["graph"]["nodes"] if "no_training" in n["target"])
        bn["outputs"][2] = {"as_none": True}
    out = rewrite_pt2(_edited(buffer.getvalue(), MODEL, unused_output_as_none), "net.pt2", _slicer(CUT_13))
    bn = next(n for n in json.loads(_members(out)[MODEL])["graph_module"]["graph"]["nodes"]
              if "no_training" in n["target"])
    assert _sizes(json.loads(_members(out)[MODEL]), bn["outputs"][0]["as_tensor"]["name"]) == [2, 4, 17, 19]


def test_view_with_hard_coded_width_is_refused_naming_the_node():
    data = _saved(ViewNet().eval(), torch.randn(1, 3, 17, 19))
    cut = _slicer({"conv.weight": (0, KEEP_13), "conv.bias": (0, KEEP_13)})
    with pytest.raises(GraphError, match=r"^view\.pt2: cannot rewrite node view \(torch\.ops\.aten\.view"
                                         r"\.default\): its shape arguments depend on a changed width "
                                         r"\(RuntimeError: shape '\[1, 4199\]' is invalid"):
        rewrite_pt2(data, "view.pt2", cut)


def test_split_whose_sizes_no_longer_add_up_is_refused():
    data = _saved(SplitNet().eval(), torch.randn(1, 3, 17, 19))
    cut = _slicer({"conv.weight": (0, KEEP_13), "conv.bias": (0, KEEP_13)})
    with pytest.raises(GraphError, match=r"^split\.pt2: cannot rewrite node split_with_sizes .*changed width"):
        rewrite_pt2(data, "split.pt2", cut)


def test_wrapper_body_and_multi_output_ops_are_followed():
    model = WrappedNet().eval()
    x = torch.randn(1, 3, 17, 19)
    data = _saved(model, x)
    keep = [1, 3, 8, 12]
    out = rewrite_pt2(data, "wrapped.pt2", _slicer({"conv.weight": (0, keep), "conv.bias": (0, keep),
                                                    "fc.weight": (1, keep)}))
    doc = json.loads(_members(out)[MODEL])
    wrapper = next(n for n in doc["graph_module"]["graph"]["nodes"] if "higher_order" in n["target"])
    body = next(inp["arg"]["as_graph"]["graph"] for inp in wrapper["inputs"] if "as_graph" in inp["arg"])
    # inside the no_grad body: 4 channels, 17x19 map
    assert [s["as_int"] for s in body["tensor_values"]["relu"]["sizes"]] == [1, 4, 17, 19]
    pool_outputs = [arg["as_tensor"]["name"] for arg in _node(doc, "max_pool2d_with_indices")["outputs"]]
    # values and indices: 4 channels, 17//2 x 19//2
    assert [_sizes(doc, name) for name in pool_outputs] == [[1, 4, 8, 9], [1, 4, 8, 9]]
    logits, pooled, indices = _loaded(out).module()(x)
    ref_logits, ref_pooled, ref_indices = model(x)
    zeroed = _conv_channels_zeroed(WrappedNet(), model, keep)
    assert torch.allclose(logits, zeroed(x)[0], atol=1e-5)
    assert torch.allclose(pooled, ref_pooled[:, keep], atol=1e-5)
    assert torch.equal(indices, ref_indices[:, keep])


def _conv_channels_zeroed(fresh, model, keep):
    """``fresh`` with ``model``'s weights, its 13-channel ``conv`` zeroed outside ``keep``."""
    fresh.eval().load_state_dict(model.state_dict())
    drop = [c for c in range(13) if c not in keep]
    with torch.no_grad():
        fresh.conv.weight[drop] = 0
        fresh.conv.bias[drop] = 0
    return fresh


def test_autocast_region_is_followed_in_its_traced_dtype():
    torch.manual_seed(2)
    model = AutocastNet().eval()
    x = torch.randn(1, 3, 17, 19)
    keep = [0, 4, 7, 11]
    cut = _slicer({"conv.weight": (0, keep), "conv.bias": (0, keep), "fc.weight": (1, keep)})
    out = rewrite_pt2(_saved(model, x), "autocast.pt2", cut)
    doc = json.loads(_members(out)[MODEL])
    wrapper = next(n for n in doc["graph_module"]["graph"]["nodes"] if "wrap_with_autocast" in n["target"])
    body = next(inp["arg"]["as_graph"]["graph"] for inp in wrapper["inputs"] if "as_graph" in inp["arg"])
    conv = body["tensor_values"]["conv2d"]
    assert [s["as_int"] for s in conv["sizes"]] == [1, 4, 17, 19]
    assert conv["dtype"] == 13  # ScalarType.BFLOAT16 in torch/_export/serde/schema.py
    zeroed = _conv_channels_zeroed(AutocastNet(), model, keep)
    assert torch.allclose(_loaded(out).module()(x), zeroed(x), atol=1e-5)


@pytest.mark.filterwarnings("ignore:No complete tensor found")  # torch.export.save on views
def test_views_of_one_storage_are_rewritten_as_their_own_files():
    torch.manual_seed(1)
    model = SharedNet().eval()
    x = torch.randn(1, 3, 17, 19)
    data = _saved(model, x)
    config = json.loads(_members(data)[WEIGHTS])["config"]
    assert config["conv_a.weight"]["path_name"] == config["conv_b.weight"]["path_name"]  # the fixture shares
    out = rewrite_pt2(data, "shared.pt2", _slicer({"conv_a.weight": (0, KEEP_13)}))
    program = _loaded(out)
    assert tuple(program.state_dict["conv_a.weight"].shape) == (4, 3, 3, 3)
    assert torch.equal(program.state_dict["conv_b.weight"], model.conv_b.weight)  # offset 13*27 kept
    expected = model(x)[:, KEEP_13 + list(range(13, 29))]
    assert torch.allclose(program.module()(x), expected, atol=1e-5)
    new_config = json.loads(_members(out)[WEIGHTS])["config"]
    # conv_b still reads the shared storage, so conv_a got a new member right after it
    shared = f"archive/data/weights/{config['conv_b.weight']['path_name']}"
    names = list(_members(out))
    assert names[names.index(shared) + 1] == f"archive/data/weights/{new_config['conv_a.weight']['path_name']}"
    assert new_config["conv_a.weight"]["tensor_meta"]["storage_offset"] == {"as_int": 0}



def test_nothing_in_the_archive_is_unpickled(resnetlet, tmp_path):
    _, _, data = resnetlet
    marker = tmp_path / "marker"
    payload = pickle.dumps(TouchOnUnpickle(str(marker)))
    members = _members(data)
    members[SAMPLE] = payload
    members["archive/data/constants/tensor_0"] = payload  # a file no config points at
    out = rewrite_pt2(_zipped(members), "net.pt2", _slicer(CUT_13))
    assert not marker.exists()
    # the file's example-inputs pickle is not passed on (torch.export.load would run it)
    assert _members(out)[SAMPLE] != payload
    _loaded(out).module()(torch.zeros(2, 3, 17, 19))
    assert not marker.exists()
    pickle.loads(pickle.dumps(TouchOnUnpickle(str(tmp_path / "control"))))  # the payload is live
    assert (tmp_path / "control").exists()


def test_pickled_weight_is_refused(resnetlet):
    _, _, data = resnetlet
    bad = _edited(data, WEIGHTS, lambda doc: doc["config"]["fc.bias"].update(use_pickle=True))
    with pytest.raises(UnsupportedFileError, match=r"^net\.pt2: fc\.bias is stored as a pickle "
                                                   r"\(use_pickle: True\); refusing to unpickle it$"):
        rewrite_pt2(bad, "net.pt2", _slicer(CUT_13))


def test_pickled_constant_or_custom_object_is_refused(resnetlet):
    _, _, data = resnetlet
    entry = {"path_name": "custom_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
    bad = _edited(data, CONSTANTS, lambda doc: doc["config"].update(obj=entry))
    with pytest.raises(UnsupportedFileError, match=r"^net\.pt2: obj is stored as a pickle"):
        rewrite_pt2(bad, "net.pt2", _slicer(CUT_13))


def test_random_bytes_are_refused():
    junk = bytes(range(256)) * 5
    with pytest.raises(UnsupportedFileError, match=r"^junk\.pt2: not a readable zip archive"):
        rewrite_pt2(junk, "junk.pt2", _slicer({}))


def test_zip_without_model_json_is_refused():
    data = _zipped({"archive/data/weights/weight_0": b"\0" * 16, "archive/byteorder": b"little"})
    with pytest.raises(UnsupportedFileError, match=r"^other\.pt2: zip archive without models/model\.json"):
        rewrite_pt2(data, "other.pt2", _slicer({}))


def test_zip_bomb_is_refused_like_the_importer():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/models/model.json", b" " * (8 * 2**20))  # ~1000x smaller deflated
    with pytest.raises(UnsupportedFileError, match=r"^bomb\.pt2: zip member archive/models/model\.json "
                                                   r"inflates .*a zip bomb"):
        rewrite_pt2(buffer.getvalue(), "bomb.pt2", _slicer({}))


def test_member_outside_the_archive_is_refused():
    data = _zipped({"../evil": b"", "archive/models/model.json": b"{}"})
    with pytest.raises(UnsafeFileError, match=r"^evil\.pt2: refused, zip member '\.\./evil'"):
        rewrite_pt2(data, "evil.pt2", _slicer({}))


def test_missing_weights_config_is_refused(resnetlet):
    _, _, data = resnetlet
    members = _members(data)
    del members[WEIGHTS]
    with pytest.raises(UnsupportedFileError, match=r"^net\.pt2: torch\.export archive without "
                                                   r"archive/data/weights/model_weights_config\.json$"):
        rewrite_pt2(_zipped(members), "net.pt2", _slicer({}))


def test_malformed_graph_json_is_refused(resnetlet):
    _, _, data = resnetlet
    bad = _edited(data, MODEL, lambda doc: doc.update(graph_module=1))
    with pytest.raises(UnsupportedFileError, match=r"^net\.pt2: malformed torch\.export archive \(TypeError"):
        rewrite_pt2(bad, "net.pt2", _slicer({}))


def test_malformed_weights_config_is_refused(resnetlet):
    _, _, data = resnetlet
    bad = _edited(data, WEIGHTS, lambda doc: doc["config"]["fc.bias"].pop("tensor_meta"))
    with pytest.raises(UnsupportedFileError, match=r"^net\.pt2: malformed torch\.export archive \(KeyError: "
                                                   r"'tensor_meta'\)$"):
        rewrite_pt2(bad, "net.pt2", _slicer({}))


def test_malformed_node_outputs_are_refused(resnetlet):
    _, _, data = resnetlet
    bad = _edited(data, MODEL, lambda doc: _node(doc, "relu")["outputs"].append({"as_tensor": {"name": "x"}}))
    with pytest.raises(UnsupportedFileError, match=r"^net\.pt2: malformed torch\.export archive \(ValueError"):
        rewrite_pt2(bad, "net.pt2", _slicer({}))


def test_weight_view_outside_its_bytes_is_refused(resnetlet):
    _, _, data = resnetlet
    bad = _edited(data, WEIGHTS, lambda doc: doc["config"]["fc.bias"]["tensor_meta"].update(
        sizes=[{"as_int": 70}]))  # 70 floats declared, 7 stored
    with pytest.raises(UnsupportedFileError, match=r"^net\.pt2: weight fc\.bias \(sizes \[70\], strides \[1\], "
                                                   r"offset 0\) does not fit the 28 bytes of weight_"):
        rewrite_pt2(bad, "net.pt2", _slicer({}))


def test_weights_declaring_more_than_the_unzipped_limit_are_refused(resnetlet):
    _, _, data = resnetlet

    def broadcast(doc):  # 5 views of fc.bias's 7 floats, each 2**28 floats (1 GiB) with stride 0
        for i in range(5):
            entry = json.loads(json.dumps(doc["config"]["fc.bias"]))
            entry["tensor_meta"].update(sizes=[{"as_int": 2**28}], strides=[{"as_int": 0}])
            doc["config"][f"huge{i}"] = entry
    with pytest.raises(UnsupportedFileError, match=r"^net\.pt2: the weights declare 5 GB in all; limit 4 GB$"):
        rewrite_pt2(_edited(data, WEIGHTS, broadcast), "net.pt2", _slicer({}))


def test_big_endian_archive_is_refused(resnetlet):
    _, _, data = resnetlet
    members = _members(data)
    members["archive/byteorder"] = b"big"
    with pytest.raises(UnsupportedFileError, match=r"^net\.pt2: weights stored in byte order b'big'; only "
                                                   r"little-endian"):
        rewrite_pt2(_zipped(members), "net.pt2", _slicer({}))


def test_symbolic_input_size_is_refused(resnetlet):
    _, _, data = resnetlet

    def dynamic_batch(doc):
        doc["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0] = {"as_expr": {"expr_str": "s0"}}
    with pytest.raises(UnsupportedFileError, match=r"^net\.pt2: x has a symbolic size .*static shapes"):
        rewrite_pt2(_edited(data, MODEL, dynamic_batch), "net.pt2", _slicer({}))


@pytest.mark.parametrize("target", ["builtins.eval", "torch.ops.higher_order.cond",
                                    "torch.ops.aten.__class__.default", "torch.ops.aten.no_such_op.default",
                                    "torch.ops.custom.relu.default"])
def test_target_outside_aten_and_prims_is_refused_naming_the_node(resnetlet, target):
    _, _, data = resnetlet
    bad = _edited(data, MODEL, lambda doc: _node(doc, "relu").update(target=target))
    with pytest.raises(GraphError, match=rf"^net\.pt2: cannot rewrite node relu \({target}\): only torch\.ops"
                                         r"\.aten/prims ops and .*wrap_with_set_grad_enabled are followed$"):
        rewrite_pt2(bad, "net.pt2", _slicer({}))


def test_unsupported_argument_kind_is_refused_naming_the_node(resnetlet):
    _, _, data = resnetlet
    bad = _edited(data, MODEL, lambda doc: _node(doc, "relu")["inputs"][0].update(
        arg={"as_custom_obj": {"name": "obj0", "class_fqn": "x.Y"}}))
    with pytest.raises(GraphError, match=r"^net\.pt2: cannot rewrite node relu \(torch\.ops\.aten\.relu"
                                         r"\.default\): argument kind as_custom_obj .* is not supported"):
        rewrite_pt2(bad, "net.pt2", _slicer({}))


def test_op_failing_with_unchanged_shapes_is_refused_as_not_meta(resnetlet):
    _, _, data = resnetlet
    bad = _edited(data, MODEL, lambda doc: _node(doc, "relu").update(target="torch.ops.aten.conv2d.default"))
    with pytest.raises(GraphError, match=r"^net\.pt2: cannot rewrite node relu \(torch\.ops\.aten\.conv2d"
                                         r"\.default\): it does not run on the meta device \(RuntimeError: "
                                         r"aten::conv2d\(\) is missing"):
        rewrite_pt2(bad, "net.pt2", _slicer({}))


def test_replacement_of_another_dtype_or_rank_is_a_caller_bug(resnetlet):
    _, _, data = resnetlet
    with pytest.raises(ValueError, match=r"new_weight\('fc\.bias'\) returned torch\.float64 \(7,\); expected a "
                                         r"torch\.float32 tensor of rank 1"):
        rewrite_pt2(data, "net.pt2", lambda key, tensor: tensor.double() if key == "fc.bias" else None)
