"""The dispatch capture's shape-only meta kernels (eval batch norm, ``mean.dim``, activations,
binary arithmetic in and out of place, convolution, addmm) return what torch's own meta kernels
return, fall back to them wherever their preconditions fail, and leave the captured program and
its counts unchanged. The pass leaves no hook and no attribute behind.

Channel counts 13 and 23, maps 17 x 19 (and 5 x 7 x 3 volumes) so that a swapped axis fails.
"""

import itertools

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from morphscope.analyzers.cost import compile_costs, seed_costs, totals_of
from morphscope.importers import dispatch_capture
from morphscope.importers.dispatch_capture import (_ACTIVATIONS, _ARITHMETIC, CaptureError,
                                                   _activation_inplace_meta, _activation_meta,
                                                   _addmm_meta, _arithmetic_inplace_meta,
                                                   _arithmetic_meta, _conv_meta,
                                                   _eval_batch_norm_meta, _mean_meta,
                                                   program_from_dispatch)
from morphscope.importers.torch_importer import load_module

aten = torch.ops.aten
C = 13


def meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, device="meta", dtype=dtype)


def layouts():
    """(name, meta input with C channels on axis 1) over the layouts a forward pass makes."""
    return {
        "contiguous_4d": meta(2, C, 17, 19),
        "channels_last": meta(2, C, 17, 19).to(memory_format=torch.channels_last),
        "permuted_nhwc": meta(2, 17, 19, C).permute(0, 3, 1, 2),  # channels_last by strides
        "odd_permutation": meta(2, 19, C, 17).permute(0, 2, 3, 1),  # dense, neither layout
        "strided_slice": meta(2, C, 17, 38)[..., ::2],  # not dense
        "expanded": meta(C, 1, 1).expand(2, C, 17, 19),  # zero strides
        "batch_1_map_1x1": meta(1, C, 1, 1),  # contiguous and channels_last at once
        "batch_1_map_1x1_cl": meta(1, C, 1, 1).to(memory_format=torch.channels_last),
        "contiguous_3d": meta(2, C, 17),
        "contiguous_5d": meta(2, C, 5, 7, 3),
        "channels_last_3d": meta(2, C, 5, 7, 3).to(memory_format=torch.channels_last_3d),
        "contiguous_2d": meta(3, C),
        "empty_batch": meta(0, C, 17, 19),
    }


# Layouts the batch-norm shortcut must take (not only fall back on), so the test shows it runs.
BN_TAKEN = {"contiguous_4d", "channels_last", "permuted_nhwc", "batch_1_map_1x1",
            "batch_1_map_1x1_cl", "contiguous_3d", "contiguous_5d", "contiguous_2d", "empty_batch"}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def signature(result):
    """Shape, strides, dtype and device of each output tensor."""
    outs = result if isinstance(result, (tuple, list)) else (result,)
    return [(tuple(t.shape), t.stride(), t.dtype, t.device) for t in outs]


def bn_args(x, training=False, affine=True, stat_dtype=torch.float32):
    weight = meta(C, dtype=stat_dtype) if affine else None
    return (x, weight, weight, meta(C, dtype=stat_dtype), meta(C, dtype=stat_dtype),
            training, 0.1, 1e-5)


def as_dtype(x, dtype):
    return x if x.dtype == dtype else x.to(dtype)  # .to keeps dense layouts, densifies others


# -- batch norm ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("layout", list(layouts()))
def test_eval_batch_norm_shortcut_matches_torch_meta_kernel(layout, affine, dtype):
    x = as_dtype(layouts()[layout], dtype)
    args = bn_args(x, affine=affine)
    shortcut = _eval_batch_norm_meta(*args)
    if layout in BN_TAKEN:
        assert shortcut is not None
    if shortcut is not None:
        assert signature(shortcut) == signature(aten.native_batch_norm.default(*args))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_eval_batch_norm_shortcut_keeps_half_output_with_float32_statistics(dtype):
    # mixed precision: half activations, float32 running statistics and affine weights
    args = bn_args(meta(2, C, 17, 19, dtype=dtype), stat_dtype=torch.float32)
    shortcut = _eval_batch_norm_meta(*args)
    assert signature(shortcut) == signature(aten.native_batch_norm.default(*args))
    assert shortcut[0].dtype == dtype and shortcut[1].dtype == torch.float32


@pytest.mark.parametrize("layout", ["contiguous_4d", "channels_last", "contiguous_3d"])
def test_training_batch_norm_falls_back_to_torch(layout):
    assert _eval_batch_norm_meta(*bn_args(layouts()[layout], training=True)) is None


def test_batch_norm_without_running_statistics_falls_back_to_torch():
    x = meta(2, C, 17, 19)
    assert _eval_batch_norm_meta(x, None, None, None, None, False, 0.1, 1e-5) is None


def test_batch_norm_with_wrong_channel_count_falls_back_so_torch_raises():
    x = meta(2, 23, 17, 19)  # 23 channels, statistics for 13
    args = bn_args(x)
    assert _eval_batch_norm_meta(*args) is None
    with pytest.raises(RuntimeError):
        aten.native_batch_norm.default(*args)


def test_batch_norm_off_meta_falls_back_to_torch():
    # a tensor the forward pass made on the CPU keeps real arithmetic
    x = torch.zeros(2, C, 17, 19)
    stats = torch.ones(C)
    assert _eval_batch_norm_meta(x, stats, stats, stats, stats, False, 0.1, 1e-5) is None
    assert _eval_batch_norm_meta(*bn_args(x)) is None  # meta statistics, CPU input


def test_batch_norm_of_integer_input_falls_back_to_torch():
    assert _eval_batch_norm_meta(*bn_args(meta(2, C, 17, 19, dtype=torch.int64))) is None


# -- mean.dim -----------------------------------------------------------------------------------

def dim_lists(rank):
    """Every list of one to three distinct axes, each as itself and as its negative."""
    for count in range(1, min(rank, 3) + 1):
        for axes in itertools.combinations(range(rank), count):
            for signs in itertools.product((0, 1), repeat=count):
                yield [axis - rank if negative else axis for axis, negative in zip(axes, signs)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", list(layouts()))
def test_mean_shortcut_matches_torch_meta_kernel(layout, dtype):
    x = as_dtype(layouts()[layout], dtype)
    checked = 0
    for dim in dim_lists(x.dim()):
        for keepdim in (False, True):
            shortcut = _mean_meta(x, dim, keepdim)
            assert shortcut is not None, (dim, keepdim)
            assert signature(shortcut) == signature(aten.mean.dim(x, dim, keepdim)), (dim, keepdim)
            checked += 1
    assert checked > 0


def test_mean_shortcut_reversed_and_unsorted_axes_match_torch():
    x = meta(2, C, 5, 7, 3).to(memory_format=torch.channels_last_3d)
    for dim in ([4, 2], [-1, 1, -3], [3, 0]):
        for keepdim in (False, True):
            assert signature(_mean_meta(x, dim, keepdim)) == signature(aten.mean.dim(x, dim, keepdim))


@pytest.mark.parametrize("dim", [[4], [-5], [1, -3]], ids=["past_end", "before_start", "repeated"])
def test_mean_over_invalid_axes_falls_back_so_torch_raises(dim):
    x = meta(2, C, 17, 19)
    assert _mean_meta(x, dim) is None
    with pytest.raises((IndexError, RuntimeError)):
        aten.mean.dim(x, dim)


def test_mean_with_dtype_or_all_axes_or_integer_input_falls_back_to_torch():
    x = meta(2, C, 17, 19)
    assert _mean_meta(x, [2, 3], dtype=torch.float64) is None
    assert _mean_meta(x, []) is None  # [] reduces every axis
    assert _mean_meta(x, None) is None
    assert _mean_meta(meta(()), [0]) is None  # a 0-d tensor
    assert _mean_meta(meta(2, C, dtype=torch.int64), [1]) is None
    assert _mean_meta(torch.zeros(2, C), [1]) is None  # off meta: real arithmetic


# -- activations ----------------------------------------------------------------------------------

ACTIVATION_OPTIONS = {"hardtanh": (0.0, 6.0), "leaky_relu": (0.1,), "elu": (1.0, 1.0, 1.0)}
# dense layouts: contiguous or channels_last (2-D to 5-D)
DENSE = {"contiguous_4d", "channels_last", "permuted_nhwc", "batch_1_map_1x1", "batch_1_map_1x1_cl",
         "contiguous_3d", "contiguous_5d", "contiguous_2d", "empty_batch"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", list(layouts()))
@pytest.mark.parametrize("op", _ACTIVATIONS)
def test_activation_shortcuts_match_torch_meta_kernels(op, layout, dtype):
    x = as_dtype(layouts()[layout], dtype)
    options = ACTIVATION_OPTIONS.get(op, ())
    out = _activation_meta(x, *options)
    if layout in DENSE:
        assert out is not None
    if out is not None:
        assert signature(out) == signature(getattr(aten, op).default(x, *options))
    inplace = _activation_inplace_meta(x, *options)
    assert (inplace is None) == (out is None)
    if inplace is not None:
        assert inplace is x and getattr(aten, f"{op}_").default(x, *options) is x


def test_activation_shortcuts_fall_back_off_meta_and_on_integers():
    assert _activation_meta(torch.zeros(2, C), 0.0, 6.0) is None  # real arithmetic on the CPU
    assert _activation_inplace_meta(torch.zeros(2, C)) is None
    assert _activation_meta(meta(2, C, dtype=torch.int64)) is None
    assert _activation_inplace_meta(meta(2, C, dtype=torch.int64)) is None


# -- binary arithmetic ----------------------------------------------------------------------------

BROADCASTS = [
    ((2, C, 17, 19), (2, C, 17, 19)),
    ((2, C, 17, 19), (1, C, 1, 1)),  # squeeze-excite scale
    ((1, C, 1, 1), (2, C, 17, 19)),
    ((C, 1, 1), (2, C, 17, 19)),  # fewer axes
    ((2, C, 17, 19), (19,)),
    ((2, 1, 17, 1), (1, C, 1, 19)),  # both broadcast
    ((1, C, 1, 1), (1, C, 1, 1)),
    ((), (2, C)),  # a 0-d tensor
    ((0, C), (C,)),  # empty
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
@pytest.mark.parametrize("op", _ARITHMETIC)
def test_arithmetic_shortcut_matches_torch_meta_kernel(op, shapes, dtype):
    x, y = (torch.empty(shape, device="meta", dtype=dtype) for shape in shapes)
    out = _arithmetic_meta(x, y)
    assert out is not None
    assert signature(out) == signature(getattr(aten, op).Tensor(x, y))


def test_add_shortcut_with_alpha_matches_torch():
    x, y = meta(2, C, 17, 19), meta(1, C, 1, 1)
    assert signature(_arithmetic_meta(x, y, alpha=0.5)) == signature(aten.add.Tensor(x, y, alpha=0.5))


def test_arithmetic_outside_the_simple_case_falls_back_to_torch():
    x = meta(2, C, 17, 19)
    assert _arithmetic_meta(x, meta(2, C, 17, 19, dtype=torch.float16)) is None  # promotion
    assert _arithmetic_meta(x.to(memory_format=torch.channels_last), x) is None  # layout choice
    assert _arithmetic_meta(x, 2.0) is None  # a Python scalar
    assert _arithmetic_meta(meta(2, C, dtype=torch.int64), meta(2, C, dtype=torch.int64)) is None
    assert _arithmetic_meta(torch.zeros(2, C), torch.zeros(2, C)) is None  # off meta
    wrong = meta(2, 23, 17, 19)  # 23 channels against 13: torch raises its own error
    assert _arithmetic_meta(x, wrong) is None
    with pytest.raises(RuntimeError):
        aten.mul.Tensor(x, wrong)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shapes", [s for s in BROADCASTS if s[0] != () and s[1] != ()], ids=str)
@pytest.mark.parametrize("op", _ARITHMETIC)
def test_inplace_arithmetic_shortcut_matches_torch_where_other_broadcasts_to_self(op, shapes, dtype):
    x, y = (torch.empty(shape, device="meta", dtype=dtype) for shape in shapes)
    kernel = getattr(aten, f"{op}_").Tensor
    out = _arithmetic_inplace_meta(x, y)
    if torch.broadcast_shapes(x.shape, y.shape) == x.shape:
        assert out is x and kernel(x, y) is x
    else:  # the result would not fit in self: torch raises
        assert out is None
        with pytest.raises(RuntimeError):
            kernel(x, y)


def test_inplace_arithmetic_on_channels_last_and_expanded_self_returns_self():
    for x in (layouts()["channels_last"], layouts()["expanded"]):
        y = meta(1, C, 1, 1)
        assert _arithmetic_inplace_meta(x, y) is x and aten.add_.Tensor(x, y) is x


def test_inplace_arithmetic_outside_the_simple_case_falls_back_to_torch():
    x = meta(2, C, 17, 19)
    assert _arithmetic_inplace_meta(x, meta(C, 1, 1, dtype=torch.float16)) is None  # promotion
    assert _arithmetic_inplace_meta(x, 2.0) is None
    assert _arithmetic_inplace_meta(torch.zeros(2, C), torch.zeros(2, C)) is None  # off meta
    assert _arithmetic_inplace_meta(meta(2, C, dtype=torch.int64), meta(2, C, dtype=torch.int64)) is None


# -- convolution ----------------------------------------------------------------------------------

# (input, weight, stride, padding, dilation, groups): C = 13 input channels, 23 outputs
CONVS = {
    "3x3_same": ((2, C, 17, 19), (23, C, 3, 3), [1, 1], [1, 1], [1, 1], 1),
    "strided_uneven": ((2, C, 17, 19), (23, C, 3, 5), [2, 3], [0, 2], [1, 1], 1),
    "depthwise_strided": ((2, C, 17, 19), (C, 1, 3, 3), [2, 2], [1, 1], [1, 1], C),
    "grouped": ((2, 2 * C, 17, 19), (46, C, 1, 1), [1, 1], [0, 0], [1, 1], 2),
    "one_value_dilated": ((2, C, 17, 19), (23, C, 3, 3), [1], [2], [2], 1),
    "kernel_is_the_map": ((2, C, 17, 19), (23, C, 17, 19), [1, 1], [0, 0], [1, 1], 1),
    "map_1x1": ((1, C, 1, 1), (23, C, 1, 1), [1, 1], [0, 0], [1, 1], 1),
    "conv1d": ((2, C, 17), (23, C, 5), [3], [0], [1], 1),
    "conv3d": ((2, C, 5, 7, 3), (23, C, 3, 3, 1), [1, 2, 1], [1, 1, 0], [1, 1, 1], 1),
    "empty_batch": ((0, C, 17, 19), (23, C, 3, 3), [1, 1], [1, 1], [1, 1], 1),
}


def conv_args(case, dtype=torch.float32, bias=True, channels_last=False):
    x_shape, w_shape, stride, padding, dilation, groups = CONVS[case]
    x = meta(*x_shape, dtype=dtype)
    if channels_last and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    b = meta(w_shape[0], dtype=dtype) if bias else None
    return (x, meta(*w_shape, dtype=dtype), b, stride, padding, dilation, False,
            [0] * (x.dim() - 2), groups)


@pytest.mark.parametrize("case", list(CONVS))
def test_conv_shortcut_matches_torch_meta_kernel(case):
    for dtype, bias, channels_last in itertools.product(
            [torch.float32, torch.float16, torch.bfloat16], [True, False], [False, True]):
        args = conv_args(case, dtype, bias, channels_last)
        shortcut = _conv_meta(*args)
        assert shortcut is not None, (dtype, bias, channels_last)
        assert signature(shortcut) == signature(aten.convolution.default(*args)), (dtype, bias, channels_last)


def test_conv_shortcut_output_sizes_by_hand():
    # (17 + 2*0 - 1*(3-1) - 1) // 2 + 1 = 8, (19 + 2*2 - 1*(5-1) - 1) // 3 + 1 = 7
    assert _conv_meta(*conv_args("strided_uneven")).shape == (2, 23, 8, 7)
    # dilation 2, padding 2: (17 + 4 - 2*2 - 1) // 1 + 1 = 17, same for 19
    assert _conv_meta(*conv_args("one_value_dilated")).shape == (2, 23, 17, 19)


def test_conv_outside_the_simple_case_falls_back_to_torch():
    args = list(conv_args("3x3_same"))
    transposed = meta(C, 23, 3, 3)  # (in, out, kh, kw)
    assert _conv_meta(args[0], transposed, None, [1, 1], [1, 1], [1, 1], True, [0, 0], 1) is None
    half_weight = meta(23, C, 3, 3, dtype=torch.float16)  # promotion
    assert _conv_meta(args[0], half_weight, *args[2:]) is None
    assert _conv_meta(torch.zeros(1, C, 17, 19), torch.zeros(23, C, 3, 3), *args[2:]) is None  # off meta
    ints = meta(2, C, 17, 19, dtype=torch.int64), meta(23, C, 3, 3, dtype=torch.int64)
    assert _conv_meta(*ints, *args[2:]) is None
    assert _conv_meta(*args[:3], [1, 1, 1], *args[4:]) is None  # three strides for two axes


@pytest.mark.parametrize("case", ["wrong_channels", "kernel_past_the_padded_map"])
def test_conv_that_torch_rejects_falls_back_so_torch_raises(case):
    x, w, b, stride, padding, dilation, transposed, output_padding, groups = conv_args("3x3_same")
    if case == "wrong_channels":
        w = meta(23, 5, 3, 3)  # 5 inputs per group against 13 channels
    else:
        w, padding = meta(23, C, 19, 3), [0, 0]  # 19 rows on a 17-row map
    args = (x, w, b, stride, padding, dilation, transposed, output_padding, groups)
    assert _conv_meta(*args) is None
    with pytest.raises(RuntimeError):
        aten.convolution.default(*args)


# -- addmm ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias_shape", [(23,), (1, 23), (5, 23), (5, 1)], ids=str)
def test_addmm_shortcut_matches_torch_meta_kernel(bias_shape, dtype):
    x = meta(5, C, dtype=dtype)
    for weight_t in (meta(23, C, dtype=dtype).t(), meta(C, 23, dtype=dtype)):  # as F.linear passes it, and plain
        for scale in ({}, {"beta": 0.5, "alpha": 2.0}):
            args = (meta(*bias_shape, dtype=dtype), x, weight_t)
            shortcut = _addmm_meta(*args, **scale)
            assert shortcut is not None
            assert signature(shortcut) == signature(aten.addmm.default(*args, **scale))


def test_addmm_outside_the_simple_case_falls_back_to_torch():
    x, w = meta(5, C), meta(C, 23)
    assert _addmm_meta(meta(23, dtype=torch.float16), x, w) is None  # promotion
    assert _addmm_meta(torch.zeros(23), torch.zeros(5, C), torch.zeros(C, 23)) is None  # off meta
    assert _addmm_meta(meta(23), meta(1, 5, C), w) is None  # not a matrix
    wrong = meta(7)  # 7 against 23 outputs
    assert _addmm_meta(wrong, x, w) is None
    with pytest.raises(RuntimeError):
        aten.addmm.default(wrong, x, w)
    assert _addmm_meta(meta(23), x, meta(5, 23)) is None  # 13 against 5
    with pytest.raises(RuntimeError):
        aten.addmm.default(meta(23), x, meta(5, 23))


# -- through the capture ------------------------------------------------------------------------

class Probe(nn.Module):
    """conv -> bn2d -> relu -> SE (mean keepdim, 1x1 convs) -> bn over a 3-D map -> mean
    -> bn1d -> linear; and a 3-D branch through bn3d.

        x (3, 17, 19) -> conv 3->13 -> bn -> relu -> *se -> flatten(2) (13, 323) -> bn1d(13)
          -> mean(-1) (13,) -> bn1d(13) -> fc 13->23
        x -> unsqueeze(2) (3, 1, 17, 19) -> conv3d 3->13 -> bn3d -> mean(-1, -2, -3) -> + above
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1)
        self.bn = nn.BatchNorm2d(C)
        self.squeeze = nn.Conv2d(C, 5, 1)
        self.excite = nn.Conv2d(5, C, 1)
        self.bn_seq = nn.BatchNorm1d(C)
        self.bn_vec = nn.BatchNorm1d(C)
        self.conv3d = nn.Conv3d(3, C, (1, 3, 3), padding=(0, 1, 1))
        self.bn3d = nn.BatchNorm3d(C)
        self.fc = nn.Linear(C, 23)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = y * torch.sigmoid(self.excite(torch.relu(self.squeeze(y.mean((2, 3), keepdim=True)))))
        y = self.bn_seq(y.flatten(2)).mean(-1)
        z = self.bn3d(self.conv3d(x.unsqueeze(2))).mean((-1, -2, -3))
        return self.fc(self.bn_vec(y + z))


def probe_reference():
    """(params, MACs): sum(p.numel()) and FlopCounterMode / 2 on a real CPU pass."""
    model = Probe().eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 17, 19))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


def test_probe_counts_equal_flop_counter_mode_and_arithmetic():
    # conv 3*3*3*13 per pixel, squeeze 13*5, excite 5*13, conv3d 3*3*3*13 per pixel, fc 13*23
    macs = 17 * 19 * 3 * 3 * 3 * C + C * 5 + 5 * C + 17 * 19 * 3 * 3 * 3 * C + C * 23
    graph = load_module(Probe(), (3, 17, 19))
    costs = compile_costs(graph)
    counted = totals_of(costs, seed_costs(costs))
    params, reference_macs = probe_reference()
    assert reference_macs == macs
    assert (counted["params"], counted["macs"]) == (params, macs)


def test_shortcuts_run_in_the_meta_capture_and_leave_the_program_unchanged(monkeypatch):
    model, example = Probe().eval(), torch.zeros(1, 3, 17, 19)
    calls = []
    real = dispatch_capture._meta_shortcuts()

    def counted(op, kernel):
        def run(*args, **kwargs):
            out = kernel(*args, **kwargs)
            calls.append((str(op), out is not None))
            return out
        return run

    monkeypatch.setattr(dispatch_capture, "_meta_shortcuts",
                        lambda: {op: counted(op, kernel) for op, kernel in real.items()})
    fast, _ = program_from_dispatch(model, example, on_meta=True)
    # 4 convs, 4 batch norms, 3 means, 2 relus, 1 sigmoid, 1 mul, 1 add, 1 addmm: every one taken
    assert sorted(calls) == sorted(
        [("aten.convolution.default", True)] * 4 + [("aten.native_batch_norm.default", True)] * 4
        + [("aten.mean.dim", True)] * 3 + [("aten.relu.default", True)] * 2
        + [("aten.sigmoid.default", True)] + [("aten.mul.Tensor", True), ("aten.add.Tensor", True)]
        + [("aten.addmm.default", True)])
    monkeypatch.setattr(dispatch_capture, "_meta_shortcuts", lambda: {})
    plain, _ = program_from_dispatch(model, example, on_meta=True)
    real_pass, _ = program_from_dispatch(model, example, on_meta=False)
    assert [r.args for r in fast.records] == [r.args for r in plain.records]
    assert fast.shapes == plain.shapes
    for other in (plain, real_pass):
        assert [(r.op, r.module_path, r.outputs) for r in fast.records] == \
            [(r.op, r.module_path, r.outputs) for r in other.records]
    # torch's CPU batch norm saves (0,) statistics in eval, its meta kernel (C,): the rest agree
    saved = {name for r in fast.records if r.op == "native_batch_norm" for name in r.outputs[1:]}
    assert len(saved) == 4 * 2
    assert {k: v for k, v in fast.shapes.items() if k not in saved} == \
        {k: v for k, v in real_pass.shapes.items() if k not in saved}


def test_pass_leaves_no_hook_and_no_attribute_behind():
    from torch.nn.modules import module as module_globals

    model = Probe().eval()
    before = [(m, dict(vars(m))) for m in model.modules()]
    weights = [(m, dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    hooks = (module_globals._global_forward_pre_hooks, module_globals._global_forward_hooks)
    counts = [len(h) for h in hooks]
    program_from_dispatch(model, torch.zeros(1, 3, 17, 19), on_meta=True)
    with pytest.raises(CaptureError):
        program_from_dispatch(model, torch.zeros(1, 5, 17, 19), on_meta=True)  # 5 channels, conv takes 3
    assert [len(h) for h in hooks] == counts
    for module, attrs in before:
        assert vars(module).keys() == attrs.keys()
        assert all(vars(module)[k] is v for k, v in attrs.items())
    for module, params, buffers in weights:  # the pass read meta stand-ins, never these
        assert all(module._parameters[k] is v and v.device.type == "cpu" for k, v in params.items())
        assert all(module._buffers[k] is v for k, v in buffers.items())


class Tied(nn.Module):
    """Two linears sharing one weight (13 -> 13), a shared block called twice."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(C, C), nn.Linear(C, C)
        self.b.weight = self.a.weight
        self.block = nn.Linear(C, C)
        self.again = self.block

    def forward(self, x):
        return self.again(self.block(self.b(self.a(x))))


def test_tied_and_shared_weights_get_one_stand_in_read_by_every_user():
    model, example = Tied().eval(), torch.zeros(1, C)
    meta_pass, _ = program_from_dispatch(model, example, on_meta=True)
    real_pass, _ = program_from_dispatch(model, example, on_meta=False)
    assert meta_pass.parameters == real_pass.parameters == {
        "p:a.weight": "a.weight", "p:a.bias": "a.bias", "p:b.bias": "b.bias",
        "p:block.weight": "block.weight", "p:block.bias": "block.bias"}
    assert [r.args for r in meta_pass.records] == [r.args for r in real_pass.records]


def test_pass_on_a_model_built_on_meta_leaves_its_parameters_as_they_were():
    with torch.device("meta"):
        model = Tied().eval()
    params = dict(model.named_parameters(remove_duplicate=False))
    program_from_dispatch(model, torch.zeros(1, C), on_meta=True)
    assert dict(model.named_parameters(remove_duplicate=False)).keys() == params.keys()
    for key, param in model.named_parameters(remove_duplicate=False):
        assert param is params[key] and isinstance(param, nn.Parameter), key


class Caller(nn.Module):
    """A conv module, and one built in forward (not a submodule): its op belongs to the caller."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Conv2d(3, C, 1))

    def forward(self, x):
        return nn.ReLU()(self.inner(x))


def test_module_paths_come_from_the_model_and_modules_outside_it_belong_to_their_caller():
    program, _ = program_from_dispatch(Caller().eval(), torch.zeros(1, 3, 17, 19), on_meta=True)
    assert [(r.op, r.module_path) for r in program.records] == [("convolution", "inner.0"), ("relu", "")]


class TokenMixer(nn.Module):
    """A linear on a transposed (non-contiguous) map: x (1, 13, 17, 19) -> (1, 17, 13, 19) ->
    fc 19->23. matmul copies it and runs ``mm`` when the weight requires grad (as the model's
    own parameters do), ``expand`` + ``bmm`` when not."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(19, 23, bias=False)

    def forward(self, x):
        return self.fc(x.transpose(1, 2))


def test_meta_pass_runs_the_ops_the_model_runs_on_its_own_weights():
    model, example = TokenMixer().eval(), torch.zeros(1, C, 17, 19)
    meta_pass, _ = program_from_dispatch(model, example, on_meta=True)
    real_pass, _ = program_from_dispatch(model, example, on_meta=False)
    assert [r.op for r in meta_pass.records] == [r.op for r in real_pass.records]
    assert "mm" in [r.op for r in meta_pass.records]
    graph = load_module(model, (C, 17, 19))
    assert graph["fc"]["kind"] == "linear"
    costs = compile_costs(graph)
    assert totals_of(costs, seed_costs(costs))["macs"] == 17 * C * 19 * 23  # 17*13 rows, 19 -> 23


def test_import_leaves_the_garbage_collector_as_it_found_it():
    import gc

    from morphscope.errors import GraphError

    assert gc.isenabled()
    load_module(Probe(), (3, 17, 19))
    with pytest.raises(GraphError, match="could not run the model"):
        load_module(Probe(), (5, 17, 19))  # 5 channels, the conv takes 3: every route fails
    assert gc.isenabled()
    gc.disable()
    try:
        load_module(Probe(), (3, 17, 19))
        assert not gc.isenabled()
    finally:
        gc.enable()
