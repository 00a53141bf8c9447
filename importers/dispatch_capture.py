"""One forward pass, recorded: the ATen ops a model runs, with the module path of each.

The capture ``torch.utils.flop_counter.FlopCounterMode`` itself uses: a ``TorchDispatchMode``
sees every ATen op below autograd (so ``einsum``, ``linear`` and attention arrive as the
``bmm``/``addmm``/``_scaled_dot_product_*`` calls FlopCounterMode counts, ops under
``torch.autocast(enabled=False)`` included), and forward hooks on the model's modules keep the
stack of module paths. Tensors are known by identity: a parameter shared by two modules is one
value under its first ``named_parameters()`` key, a buffer is never a parameter.

The pass runs on the meta device when it can (no arithmetic at all; a CPU model gets meta
stand-ins for its weights), else on the model's own device with a zero input. Python control
flow follows that input, so models ``torch.export`` refuses (detectors' data-dependent
branches) keep their layer names. The result is the plain :class:`~morphscope.importers.aten.Program`
both other capture routes produce.
"""

from __future__ import annotations

import functools
import inspect
import operator
from typing import Any

from morphscope.importers.aten import OpRecord, Program, Ref, short_op_name
from morphscope.importers.nodes import first_line

# Ops through which Python branches on tensor values (``if x.sum() > 0``, ``.item()``).
_DATA_READS = frozenset({"_local_scalar_dense", "is_nonzero", "equal"})


class CaptureError(RuntimeError):
    """The model's own forward pass failed under the capture (carries the first line)."""


def program_from_dispatch(model: Any, example: Any, on_meta: bool = True) -> tuple[Program, bool]:
    """Run ``model(example)`` once under a dispatch mode and return what it ran.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode.
    example : torch.Tensor
        The input (batch 1).
    on_meta : bool
        Run on meta stand-ins of the weights and input (no arithmetic); else on the
        model's own tensors.

    Returns
    -------
    program : Program
        One :class:`OpRecord` per ATen call that returned a tensor.
    reads_data : bool
        Whether Python read a tensor value (a data-dependent branch followed ``example``).

    Raises
    ------
    CaptureError
        If the forward pass raises (its message's first line is kept).
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    recorder = _Recorder()
    program = Program([], recorder.shapes, {}, set())
    stand_ins = _bind_weights(model, recorder, program, on_meta)
    if on_meta:
        example = torch.empty_like(example, device="meta")
    input_name = next(iter(inspect.signature(model.forward).parameters), "x")
    program.user_inputs.append(recorder.bind(example, input_name))
    stack: list[str] = []
    reads: list[Any] = []

    shortcuts = _meta_shortcuts() if on_meta else {}

    class _Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            shortcut = shortcuts.get(func)
            out = shortcut(*args, **kwargs) if shortcut is not None else None
            if out is None:
                out = func(*args, **kwargs)
            record = recorder.record(func, args, kwargs, out, stack[-1] if stack else "")
            if record is not None:
                program.records.append(record)
            elif func._schema.name.split("::")[-1] in _DATA_READS:
                reads.append(func)
            return out

    modules = list(model.named_modules())
    handles = _track_modules({id(module): path for path, module in modules}, stack)
    saved = [(module, dict(vars(module))) for _, module in modules] if on_meta else []
    try:
        if stand_ins:
            _swap_in(modules, stand_ins)
        with torch.no_grad(), _Mode():
            result = model(example)
    except Exception as err:  # noqa: BLE001 - the user's forward pass: any failure is a capture failure
        raise CaptureError(first_line(err)) from err
    finally:
        for handle in handles:
            handle.remove()
        for module, attrs in saved:  # caches a meta pass set (anchors) must not outlive it
            _restore_attributes(module, attrs)
    program.user_outputs.extend(recorder.names_of(result))
    leaves = leaf_paths(r.module_path for r in program.records)
    for record in program.records:
        record.module_is_leaf = record.module_path in leaves
    return program, bool(reads)


def _restore_attributes(module: Any, attrs: dict[str, Any]) -> None:
    """Put back the attributes ``module`` had before the pass; drop those it added."""
    current = vars(module)
    if current.keys() == attrs.keys() and all(map(operator.is_, current.values(), attrs.values())):
        return  # untouched (most modules): compared in C, no per-key Python loop
    for key in [k for k in current if k not in attrs]:
        del current[key]
    for key, value in attrs.items():
        if current.get(key) is not value:
            current[key] = value


def _bind_weights(model: Any, recorder: "_Recorder", program: Program, on_meta: bool) -> dict[int, Any]:
    """Name each parameter ``p:<key>`` and each buffer ``b:<key>`` under its first key (a
    tensor under two keys is one value) in ``program``; return the meta stand-ins a meta pass
    swaps in for the weights not on the meta device already, by the weight's ``id``.
    ``empty_like`` of a meta tensor (torch's Python reference, ~14 us) is never needed.

    A stand-in requires grad where its weight does: ``matmul`` picks its decomposition by it
    (a linear on a non-contiguous 3-D input runs ``mm`` with a weight that requires grad,
    ``expand`` + ``bmm`` without), so the pass runs the ops the model runs on its own weights.
    """
    import torch

    stand_ins: dict[int, Any] = {}

    def stand_in(tensor: Any) -> Any:
        if not on_meta or tensor.is_meta:
            return tensor
        if id(tensor) not in stand_ins:
            stand_ins[id(tensor)] = torch.empty_like(tensor, device="meta",
                                                     requires_grad=tensor.requires_grad)
        return stand_ins[id(tensor)]

    for key, param in model.named_parameters():  # remove_duplicate: a shared tensor once
        program.parameters[recorder.bind(stand_in(param), f"p:{key}")] = key
    for key, buffer in model.named_buffers():
        program.constants.add(recorder.bind(stand_in(buffer), f"b:{key}"))
    return stand_ins


def _swap_in(modules: list[tuple[str, Any]], stand_ins: dict[int, Any]) -> None:
    """Give each module new ``_parameters``/``_buffers`` dicts holding the stand-ins (its own
    dicts come back with the rest of its attributes after the pass; ``torch.func.functional_call``
    did this by key, ~10% of efficientnet_b0's import)."""
    for _, module in modules:
        attrs = vars(module)
        for store in ("_parameters", "_buffers"):
            members = attrs[store]
            if any(id(tensor) in stand_ins for tensor in members.values()):
                attrs[store] = {name: stand_ins.get(id(tensor), tensor) for name, tensor in members.items()}


@functools.cache
def _meta_shortcuts() -> dict[Any, Any]:
    """Shape-only meta kernels for the ATen ops whose own meta kernels are Python
    decompositions (eval batch norm runs a dozen reference ops, ~50x an ``empty_like``).

    Each takes the op's arguments and returns what torch's meta kernel returns (shapes,
    strides, dtypes), or None where its preconditions fail and torch's kernel runs instead
    (so torch's own errors surface unchanged).
    """
    import torch

    aten = torch.ops.aten
    shortcuts = {aten.native_batch_norm.default: _eval_batch_norm_meta, aten.mean.dim: _mean_meta,
                 aten.convolution.default: _conv_meta, aten.addmm.default: _addmm_meta}
    for name in _ACTIVATIONS:
        shortcuts[getattr(aten, name).default] = _activation_meta
        shortcuts[getattr(aten, f"{name}_").default] = _activation_inplace_meta
    for name in _ARITHMETIC:
        shortcuts[getattr(aten, name).Tensor] = _arithmetic_meta
        shortcuts[getattr(aten, f"{name}_").Tensor] = _arithmetic_inplace_meta
    return shortcuts


# Elementwise activations (one tensor and scalar options in, one tensor of its dtype out) whose
# meta kernels are Python references: hardtanh_ ~1 ms a call, hardswish 2 ms, relu 0.3 ms.
_ACTIVATIONS = ("relu", "hardtanh", "silu", "sigmoid", "hardswish", "hardsigmoid", "gelu", "tanh",
                "elu", "leaky_relu", "mish")
# Binary arithmetic on two tensors (add and sub take an ``alpha`` scalar), out of place and in
# place: ~25 us a call.
_ARITHMETIC = ("add", "sub", "mul", "div")


def _dense_float_meta(tensor):
    """A floating meta tensor laid out contiguous or channels_last (no gaps, no overlap)."""
    import torch

    return (tensor.is_meta and tensor.is_floating_point()
            and (tensor.is_contiguous() or tensor.is_contiguous(memory_format=torch.channels_last)))


def _activation_meta(self, *options, **named_options):
    """An out-of-place activation on a dense meta tensor: a tensor laid out like it."""
    import torch

    if not isinstance(self, torch.Tensor) or not _dense_float_meta(self):
        return None
    return torch.empty_strided(self.shape, self.stride(), dtype=self.dtype, device="meta")


def _activation_inplace_meta(self, *options, **named_options):
    """An in-place activation on a dense meta tensor returns that tensor."""
    import torch

    if not isinstance(self, torch.Tensor) or not _dense_float_meta(self):
        return None
    return self


def _same_float_meta(*tensors) -> bool:
    """Meta tensors of one floating dtype (no type promotion to decide)."""
    import torch

    first = tensors[0]
    return (all(isinstance(t, torch.Tensor) and t.is_meta and t.dtype == first.dtype for t in tensors)
            and first.is_floating_point())


def _broadcast_shape(a, b) -> list[int] | None:
    """The broadcast of two shapes, or None where they do not broadcast (``torch.broadcast_shapes``
    without its Python reference's ~15 us)."""
    if len(a) < len(b):
        a, b = b, a
    shape = list(a)
    offset = len(a) - len(b)
    for axis, size in enumerate(b, offset):
        if size != shape[axis] and size != 1:
            if shape[axis] != 1:
                return None
            shape[axis] = size
    return shape


def _arithmetic_meta(self, other, *, alpha=1):
    """``add``/``sub``/``mul``/``div`` of two contiguous meta tensors of one floating dtype: a
    contiguous tensor of their broadcast shape."""
    import torch

    if not _same_float_meta(self, other) or not self.is_contiguous() or not other.is_contiguous():
        return None
    shape = _broadcast_shape(self.shape, other.shape)
    if shape is None:  # torch's own kernel raises its own message
        return None
    return torch.empty(shape, dtype=self.dtype, device="meta")


def _arithmetic_inplace_meta(self, other, *, alpha=1):
    """``add_``/``sub_``/``mul_``/``div_`` of two meta tensors of one floating dtype, ``other``
    broadcasting to ``self``'s shape: ``self``."""
    if not _same_float_meta(self, other) or _broadcast_shape(self.shape, other.shape) != list(self.shape):
        return None
    return self


def _conv_meta(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    """``aten.convolution``, not transposed, of a meta input and weight of one floating dtype:
    ``(N, out, *[(L + 2p - d (k - 1) - 1) // s + 1 per axis])``, contiguous, as
    ``torch._meta_registrations.meta_conv`` makes it (its Python checks: ~30 us a call). Where
    its checks would fail (channels != weight's inputs x groups, a kernel longer than the
    padded input, an empty output) torch's kernel runs and raises."""
    import torch

    rank = input.dim()
    if (transposed or rank < 3 or weight.dim() != rank or not _same_float_meta(input, weight)
            or groups < 1 or input.shape[1] == 0 or weight.shape[1] * groups != input.shape[1]
            or (bias is not None and not bias.is_meta)):
        return None
    axes = rank - 2
    per_axis = [list(v) * axes if len(v) == 1 else list(v) for v in (stride, padding, dilation)]
    if any(len(v) != axes for v in per_axis):
        return None
    shape = [input.shape[0], weight.shape[0]]
    for length, kernel, s, p, d in zip(input.shape[2:], weight.shape[2:], *per_axis):
        span = d * (kernel - 1) + 1
        if s < 1 or d < 1 or p < 0 or length + 2 * p < span:
            return None
        shape.append((length + 2 * p - span) // s + 1)
    return torch.empty(shape, dtype=input.dtype, device="meta")


def _addmm_meta(self, mat1, mat2, *, beta=1, alpha=1):
    """``aten.addmm`` (a linear layer's ``bias + x @ W^T``) of meta matrices of one floating
    dtype, ``self`` broadcasting to ``(n, m)``: a contiguous ``(n, m)``, as torch's meta kernel
    (a Python decomposition: ~0.25 ms a call) makes it."""
    import torch

    if (not _same_float_meta(self, mat1, mat2) or mat1.dim() != 2 or mat2.dim() != 2
            or mat1.shape[1] != mat2.shape[0]):
        return None
    shape = [mat1.shape[0], mat2.shape[1]]
    if _broadcast_shape(self.shape, shape) != shape:
        return None
    return torch.empty(shape, dtype=self.dtype, device="meta")


def _eval_batch_norm_meta(input, weight, bias, running_mean, running_var, training, momentum, eps):
    """``aten.native_batch_norm`` in eval mode on a dense meta input: the output is laid out like the
    input; the saved statistics are the running ones, (C,) in the computation dtype
    (``torch._decomp.decompositions.native_batch_norm_helper`` off the CPU)."""
    import torch
    from torch._prims_common import get_computation_dtype

    if training or running_mean is None or running_var is None or input.dim() < 2:
        return None
    channels = (input.shape[1],)
    stats = [t for t in (weight, bias, running_mean, running_var) if t is not None]
    if (not input.is_meta or not input.is_floating_point()
            or any(not t.is_meta or t.shape != channels for t in stats)
            or not (input.is_contiguous() or input.is_contiguous(memory_format=torch.channels_last))):
        return None
    stat_dtype = get_computation_dtype(input.dtype)
    # empty_like on a meta tensor runs torch._refs.empty_like (~15x empty_strided); the two agree
    # on the dense layouts admitted above
    return (torch.empty_strided(input.shape, input.stride(), dtype=input.dtype, device="meta"),
            torch.empty(channels, dtype=stat_dtype, device="meta"),
            torch.empty(channels, dtype=stat_dtype, device="meta"))


def _mean_meta(self, dim, keepdim=False, *, dtype=None):
    """``aten.mean.dim`` over distinct in-range axes of a floating meta tensor: a contiguous result
    without those axes (kept as size 1 with ``keepdim``), as ``torch._refs.mean`` makes it."""
    import torch

    rank = self.dim()
    if dtype is not None or not dim or rank == 0 or not self.is_meta or not self.is_floating_point():
        return None
    if any(not -rank <= d < rank for d in dim):
        return None
    axes = {d % rank for d in dim}
    if len(axes) != len(dim):
        return None
    if keepdim:
        shape = [1 if axis in axes else size for axis, size in enumerate(self.shape)]
    else:
        shape = [size for axis, size in enumerate(self.shape) if axis not in axes]
    return torch.empty(shape, dtype=self.dtype, device="meta")


_PLAIN = frozenset({int, float, bool, str, type(None)})  # argument types recorded as they are


class _Recorder:
    """Names tensor values by identity and turns dispatch calls into :class:`OpRecord`."""

    def __init__(self) -> None:
        import torch

        self.tensor_type = torch.Tensor
        self.names: dict[int, str] = {}
        self.refs: dict[int, Ref] = {}  # Ref is frozen: one per value, shared by its readers
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.alive: list[Any] = []  # every named tensor stays referenced: ids are never reused
        self.count = 0
        # per capture, not across captures: op -> (short name, [(argument, has default, default)])
        self.schemas: dict[Any, tuple[str, list[tuple[str, bool, Any]]]] = {}

    def bind(self, tensor: Any, name: str) -> str:
        key = id(tensor)
        self.names[key] = name
        self.refs[key] = Ref(name)
        self.shapes[name] = tuple(tensor.shape)  # torch.Size holds ints
        self.alive.append(tensor)
        return name

    def ref(self, tensor: Any) -> Ref:
        ref = self.refs.get(id(tensor))
        if ref is None:  # made outside the pass (a plain tensor attribute): a constant
            self.bind(tensor, f"c{len(self.names)}")
            ref = self.refs[id(tensor)]
        return ref

    def value(self, value: Any) -> Any:
        if type(value) in _PLAIN:  # most arguments: ints, bools, None (no isinstance chain)
            return value
        if isinstance(value, self.tensor_type):
            return self.ref(value)
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        if isinstance(value, (int, float, bool, str)) or value is None:
            return value
        return str(value)

    def names_of(self, result: Any) -> list[str]:
        from torch.utils._pytree import tree_leaves

        return [self.names[id(t)] for t in tree_leaves(result)
                if isinstance(t, self.tensor_type) and id(t) in self.names]

    def schema(self, func: Any) -> tuple[str, list[tuple[str, bool, Any]]]:
        """The op's short name and its arguments' names and defaults (read once per capture)."""
        known = self.schemas.get(func)
        if known is None:
            arguments = [(arg.name, arg.has_default_value(),
                          self.value(arg.default_value) if arg.has_default_value() else None)
                         for arg in func._schema.arguments]
            known = self.schemas[func] = (_op_name(func), arguments)
        return known

    def record(self, func: Any, args: tuple, kwargs: dict, out: Any, path: str) -> OpRecord | None:
        tensor_type = self.tensor_type
        single = isinstance(out, tensor_type)
        outs = (out,) if single else out if isinstance(out, (list, tuple)) else ()
        if not single and not any(isinstance(t, tensor_type) for t in outs):
            return None
        op, arguments = self.schema(func)
        value = self.value
        named = {name: value(arg) for (name, _, _), arg in zip(arguments, args)}
        for name, has_default, default in arguments[len(args):]:
            if name in kwargs:
                named[name] = value(kwargs[name])
            elif has_default:
                named[name] = list(default) if isinstance(default, list) else default
        self.count += 1
        name = f"{op}_{self.count}"
        out_names = [(self.bind(tensor, f"{name}_{index}" if index else name)
                      if isinstance(tensor, tensor_type) else None) for index, tensor in enumerate(outs)]
        return OpRecord(name, op, named, out_names, path)


def _op_name(func: Any) -> str:
    """``aten::relu_`` -> ``relu``; other namespaces keep theirs (``torchvision.roi_align``)."""
    namespace, _, name = func._schema.name.partition("::")
    return short_op_name(f"aten.{name}") if namespace == "aten" else f"{namespace}.{name}"


def _track_modules(paths: dict[int, str], stack: list[str]) -> list[Any]:
    """A global forward pre-hook pushes the path of each of the model's modules (``paths``: by
    ``id``), a global forward hook pops it (also on errors). Two hooks for the whole pass: one
    handle per module cost 14% of efficientnet_b0's import. A module outside the model (made
    during the pass, or another model's) is not tracked: its ops belong to its caller."""
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    def push(module, _args):
        path = paths.get(id(module))
        if path is not None:
            stack.append(path)

    def pop(module, _args, _out):
        if id(module) in paths:
            stack.pop()

    return [register_module_forward_pre_hook(push), register_module_forward_hook(pop, always_call=True)]


def leaf_paths(paths) -> set[str]:
    """The module paths with no deeper path among ``paths`` (one pass over the paths)."""
    unique = set(paths)
    parents = set()
    for path in unique:
        while "." in path:
            path = path.rsplit(".", 1)[0]
            if path in parents:
                break
            parents.add(path)
    return {p for p in unique if p and p not in parents}
