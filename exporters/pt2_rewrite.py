"""Rewrite the weights of a ``.pt2`` archive and re-derive every tensor shape in its graph.

A ``.pt2`` written by ``torch.export.save`` (torch >= 2.8) is a zip holding the graph as JSON
(``<prefix>/models/model.json``), the state_dict as raw bytes described by
``data/weights/model_weights_config.json``, and a few version files (DESIGN section 10). This
module reads only JSON and raw bytes: nothing from the file is unpickled, imported or run.
Each state_dict tensor may be replaced (typically by a slice along pruned channels); the graph's
shapes are then propagated again by running each node's ATen op on the meta device, so the
result loads with ``torch.export.load`` and runs. Integer size arguments written in the graph
(``view``, ``split_with_sizes``) are never rewritten: an op that no longer fits is refused.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from morphscope.errors import GraphError, UnsupportedFileError
from morphscope.importers.limits import (DEFAULT_LIMITS, check_tensor_shape, describe_error, loads_json,
                                         open_zip, read_member)
from morphscope.units import human_bytes

if TYPE_CHECKING:
    import torch

_SAMPLE_INPUTS = "data/sample_inputs/model.pt"
_MAX_SAMPLE_ELEMENTS = 1 << 26  # the zeros written as example inputs (256 MB of float32)
_MODEL = "models/model.json"
_WEIGHTS_DIR = "data/weights/"
_CONFIGS = ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json")
# Higher-order ops torch.export wraps a region in; their body runs once on the arguments after
# the graph argument (torch/_export/passes/replace_*_with_hop_pass.py). Other ones are refused.
_FOLLOWED_WRAPPERS = ("torch.ops.higher_order.wrap_with_autocast",
                      "torch.ops.higher_order.wrap_with_set_grad_enabled")
# Only ATen and prims overloads are resolved, by plain identifiers (no dunder names).
_OP_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.((?!__)[A-Za-z_]\w*)\.((?!__)[A-Za-z_]\w*)")
_PLAIN_KINDS = ("as_int", "as_float", "as_bool", "as_string", "as_ints", "as_floats", "as_bools",
                "as_strings")
_SYM_KINDS = {"as_sym_int": "as_int", "as_sym_float": "as_float", "as_sym_bool": "as_bool"}
_MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError, StopIteration)
_OP_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError)
_ALIGN = 64  # torch's zip writer starts every member's data at a multiple of 64 bytes


def rewrite_pt2(archive: bytes, name: str,
                new_weight: Callable[[str, "torch.Tensor"], "torch.Tensor | None"]) -> bytes:
    """A ``.pt2`` archive with some state_dict tensors replaced and every shape re-derived.

    Parameters
    ----------
    archive : bytes
        A file written by ``torch.export.save`` (torch >= 2.8 format). Read as zip, JSON and raw
        bytes only; sizes are bounded as :mod:`morphscope.importers.limits` bounds an import.
    name : str
        The user's name for the file, used in every error message.
    new_weight : callable
        ``new_weight(key, tensor)`` for every state_dict entry (parameters and buffers, keys as
        in the weights config, e.g. ``"res1.conv1.0.weight"``; ``tensor`` is a CPU copy):
        None keeps the entry, a tensor of the same dtype and rank replaces it (any sizes).

    Returns
    -------
    bytes
        The new archive: same member names and order (a replaced view of a shared storage
        gets its own member right after that storage's), members uncompressed and 64-byte
        aligned as torch writes them; the graph JSON and weights config carry the new sizes
        and strides, every other member is copied byte for byte.

    Raises
    ------
    UnsupportedFileError
        Not a zip, a zip bomb, no ``models/model.json`` or weights config, a pickled weight or
        constant (``use_pickle: true``), a symbolic (dynamic) size, a weight view outside its
        bytes, weights declaring more than ``max_unzipped_bytes`` in all, a big-endian archive,
        or malformed JSON; one line naming the file.
    GraphError
        A node whose target is not an ATen/prims op or a followed wrapper, whose argument
        kind is not supported, or whose op fails on meta with the new shapes (e.g. a ``view``
        whose hard-coded sizes depend on a pruned width); one line naming the node.
    ValueError
        ``new_weight`` returned something other than a tensor of the old dtype and rank.
    """
    with open_zip(io.BytesIO(archive), name) as zf:
        members = {info.filename: read_member(zf, info.filename, name, DEFAULT_LIMITS.max_unzipped_bytes)
                   for info in zf.infolist()}
    prefix = _model_prefix(members, name)
    doc = loads_json(members[prefix + _MODEL], name, what="torch.export graph")
    weights_path, constants_path = (prefix + path for path in _CONFIGS)
    if weights_path not in members:
        raise UnsupportedFileError(f"{name}: torch.export archive without {weights_path}")
    configs = [loads_json(members[path], name, what=path)  # the constants config is optional
               for path in (weights_path, constants_path) if path in members]
    try:
        _refuse_pickles(configs, name)
        graph_module = doc["graph_module"]
        weights = configs[0]["config"]
        tensors = _read_weights(members, prefix, weights, name)
    except _MALFORMED as err:
        raise UnsupportedFileError(f"{name}: malformed torch.export archive ({describe_error(err)})") from err
    replaced = {}
    for key, tensor in tensors.items():
        new = new_weight(key, tensor)  # a copy: the callback may keep or change it
        if new is not None:
            replaced[key] = _checked_replacement(key, tensor, new)
    try:
        files = _store_weights(weights, replaced, set(members), prefix)
        changed = _update_placeholders(graph_module, replaced)
        _propagate(graph_module["graph"], _placeholder_env(graph_module["graph"], name), changed, name)
    except _MALFORMED as err:
        raise UnsupportedFileError(f"{name}: malformed torch.export archive ({describe_error(err)})") from err
    members[prefix + _MODEL] = json.dumps(doc).encode()
    members[weights_path] = json.dumps(configs[0]).encode()
    if prefix + _SAMPLE_INPUTS in members:  # torch.export.load unpickles it: never pass the file's on
        members[prefix + _SAMPLE_INPUTS] = _sample_inputs(graph_module, name)
    return _write_zip(members, files)


def _sample_inputs(graph_module: dict[str, Any], name: str) -> bytes:
    """Our own ``(args, kwargs)`` example inputs, as ``torch.export.save`` writes them: zeros
    of each user input's traced size and dtype (plain values as traced), in place of the
    file's own pickle, which ``torch.export.load`` would run."""
    import torch

    graph = graph_module["graph"]
    args = []
    for spec in graph_module["signature"]["input_specs"]:
        if "user_input" not in spec:
            continue
        (kind, value), = spec["user_input"]["arg"].items()
        if kind == "as_tensor":
            meta = graph["tensor_values"][value["name"]]
            sizes = _ints(meta["sizes"], name, "input size")
            if math.prod(sizes) > _MAX_SAMPLE_ELEMENTS:
                raise UnsupportedFileError(f"{name}: an input of {math.prod(sizes):,} elements is over "
                                           f"the {_MAX_SAMPLE_ELEMENTS:,} a rewrite writes as its example")
            args.append(torch.zeros(sizes, dtype=_dtype(meta["dtype"])))
        else:
            args.append(None if kind == "as_none" else value)
    buffer = io.BytesIO()
    torch.save((tuple(args), {}), buffer)
    return buffer.getvalue()


def _model_prefix(members: dict[str, bytes], name: str) -> str:
    """The folder holding ``models/model.json`` (``archive/`` for a buffer), refused if none."""
    found = [m for m in members if m == _MODEL or m.endswith("/" + _MODEL)]
    if not found:
        raise UnsupportedFileError(f"{name}: zip archive without models/model.json; not a "
                                   "torch.export archive from torch >= 2.8 (write it with torch.export.save)")
    return found[0].removesuffix(_MODEL)


def _refuse_pickles(configs: list[dict[str, Any]], name: str) -> None:
    """Refuse any weight, constant or custom object stored as a pickle."""
    for config in configs:
        for key, entry in config["config"].items():
            if entry.get("use_pickle") is not False:
                raise UnsupportedFileError(f"{name}: {key} is stored as a pickle (use_pickle: "
                                           f"{entry.get('use_pickle')}); refusing to unpickle it")


def _ints(values: list[dict[str, Any]], name: str, what: str) -> list[int]:
    """Static sizes or strides from serialized SymInts, refused if symbolic."""
    if not all(isinstance(v.get("as_int"), int) for v in values):
        raise UnsupportedFileError(f"{name}: {what} has a symbolic size {values!r}; export with "
                                   "static shapes to rewrite it")
    return [v["as_int"] for v in values]


def _dtype(code: int) -> "torch.dtype":
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    return _SERIALIZE_TO_TORCH_DTYPE[code]


def _read_weights(members: dict[str, bytes], prefix: str, weights: dict[str, Any],
                  name: str) -> dict[str, "torch.Tensor"]:
    """Every state_dict tensor, each its own copy, after checking byte order and total size."""
    order = members.get(prefix + "byteorder", b"little")
    if order != b"little":
        raise UnsupportedFileError(f"{name}: weights stored in byte order {order[:20]!r}; only "
                                   "little-endian archives are rewritten")
    views = {key: _weight_view(entry["tensor_meta"], key, name) for key, entry in weights.items()}
    total = sum(math.prod(sizes) * dtype.itemsize for dtype, sizes, _, _ in views.values())
    if total > DEFAULT_LIMITS.max_unzipped_bytes:
        raise UnsupportedFileError(f"{name}: the weights declare {human_bytes(total)} in all; limit "
                                   f"{human_bytes(DEFAULT_LIMITS.max_unzipped_bytes)}")
    return {key: _read_weight(members[prefix + _WEIGHTS_DIR + entry["path_name"]], views[key], key,
                              entry["path_name"], name) for key, entry in weights.items()}


def _weight_view(meta: dict[str, Any], key: str, name: str) -> tuple[Any, tuple[int, ...], list[int], int]:
    """``(dtype, sizes, strides, storage_offset)`` of one weight's tensor_meta, sizes bounded."""
    dtype = _dtype(meta["dtype"])
    sizes = check_tensor_shape(name, key, _ints(meta["sizes"], name, key), dtype.itemsize)
    offset, = _ints([meta["storage_offset"]], name, key)
    return dtype, sizes, _ints(meta["strides"], name, key), offset


def _read_weight(data: bytes, view: tuple[Any, tuple[int, ...], list[int], int], key: str, path: str,
                 name: str) -> "torch.Tensor":
    """A copy of one weight's strided view of its raw bytes (as torch reads it)."""
    import torch

    dtype, sizes, strides, offset = view
    if not data:  # torch reads an empty record (a weight saved from meta) as zeros
        return torch.zeros(sizes, dtype=dtype)
    numel = len(data) // dtype.itemsize
    needed = offset + sum((s - 1) * st for s, st in zip(sizes, strides)) + 1 if all(sizes) else 0
    if len(data) % dtype.itemsize or min([offset, *strides]) < 0 or needed > numel or \
            len(strides) != len(sizes):
        raise UnsupportedFileError(f"{name}: weight {key} (sizes {list(sizes)}, strides {strides}, "
                                   f"offset {offset}) does not fit the {len(data)} bytes of {path}")
    flat = torch.frombuffer(bytearray(data), dtype=dtype)
    return torch.as_strided(flat, sizes, strides, offset).clone()


def _checked_replacement(key: str, old: "torch.Tensor", new: Any) -> "torch.Tensor":
    """``new`` as a contiguous CPU tensor, refused unless it keeps ``old``'s dtype and rank."""
    import torch

    if not isinstance(new, torch.Tensor) or new.dtype != old.dtype or new.dim() != old.dim():
        got = f"{new.dtype} {tuple(new.shape)}" if isinstance(new, torch.Tensor) else type(new).__name__
        raise ValueError(f"new_weight({key!r}) returned {got}; expected a {old.dtype} tensor of "
                         f"rank {old.dim()} (old shape {tuple(old.shape)})")
    return new.detach().to("cpu").contiguous()


def _contiguous_strides(sizes: tuple[int, ...]) -> list[int]:
    return [math.prod(sizes[i + 1:]) for i in range(len(sizes))]


def _sym(values: Any) -> Any:
    return [{"as_int": int(v)} for v in values]


def _store_weights(weights: dict[str, Any], replaced: dict[str, "torch.Tensor"], taken: set[str],
                   prefix: str) -> dict[str, list[tuple[str, bytes]]]:
    """Point each replaced key at its own contiguous storage; return the files to write, keyed
    by the storage they follow (reused when all its keys are replaced, else kept and followed)."""
    import torch

    files: dict[str, list[tuple[str, bytes]]] = {}
    users: dict[str, list[str]] = {}
    for key, entry in weights.items():
        users.setdefault(entry["path_name"], []).append(key)
    for path, keys in users.items():
        changed = [key for key in keys if key in replaced]
        reuse = len(changed) == len(keys)
        for i, key in enumerate(changed):
            new_path, k = path, 0
            while not (reuse and i == 0) and prefix + _WEIGHTS_DIR + new_path in taken:
                new_path, k = f"{path}_{k}", k + 1
            taken.add(prefix + _WEIGHTS_DIR + new_path)
            tensor = replaced[key]
            files.setdefault(prefix + _WEIGHTS_DIR + path, []).append(
                (prefix + _WEIGHTS_DIR + new_path, tensor.reshape(-1).view(torch.uint8).numpy().tobytes()))
            meta = weights[key]["tensor_meta"]
            weights[key]["path_name"] = new_path
            meta.update(sizes=_sym(tensor.shape), strides=_sym(_contiguous_strides(tuple(tensor.shape))),
                        storage_offset={"as_int": 0})
    return files


def _placeholders(graph_module: dict[str, Any]) -> list[tuple[str, str]]:
    """``(placeholder, state_dict key)`` for the parameters and buffers of the signature."""
    pairs = []
    for spec in graph_module["signature"]["input_specs"]:
        (kind, body), = spec.items()
        if kind in ("parameter", "buffer"):
            pairs.append((body["arg"]["name"], body[f"{kind}_name"]))
    return pairs


def _update_placeholders(graph_module: dict[str, Any], replaced: dict[str, "torch.Tensor"]) -> set[str]:
    """New sizes and contiguous strides in ``tensor_values`` for the replaced placeholders."""
    values, changed = graph_module["graph"]["tensor_values"], set()
    for placeholder, key in _placeholders(graph_module):
        if key in replaced:
            shape = tuple(replaced[key].shape)
            values[placeholder].update(sizes=_sym(shape), strides=_sym(_contiguous_strides(shape)),
                                       storage_offset={"as_int": 0})
            changed.add(placeholder)
    return changed


def _placeholder_env(graph: dict[str, Any], name: str) -> dict[str, Any]:
    """Meta tensors for the graph's tensor inputs, from their (new) ``tensor_values``."""
    import torch

    env = {}
    for arg in graph["inputs"]:
        if "as_tensor" in arg:
            key = arg["as_tensor"]["name"]
            meta = graph["tensor_values"][key]
            env[key] = torch.empty_strided(_ints(meta["sizes"], name, key), _ints(meta["strides"], name, key),
                                           dtype=_dtype(meta["dtype"]), device="meta")
    return env


def _flat_names(arguments: list[dict[str, Any]]) -> list[str | None]:
    """Tensor names of serialized arguments, lists flattened; None for a non-tensor."""
    names: list[str | None] = []
    for arg in arguments:
        (kind, value), = arg.items()
        if kind == "as_tensor":
            names.append(value["name"])
        elif kind == "as_tensors":
            names.extend(t["name"] for t in value)
        elif kind in ("as_optional_tensors", "as_optional_tensor"):
            items = value if kind == "as_optional_tensors" else [value]
            names.extend(t["as_tensor"]["name"] if "as_tensor" in t else None for t in items)
        else:
            names.append(None)
    return names


def _flat_values(results: list[Any]) -> list[Any]:
    """Op results in the order of :func:`_flat_names` (lists of tensors flattened)."""
    return [v for r in results for v in (r if isinstance(r, (list, tuple)) else [r])]


def _bind(graph: dict[str, Any], env: dict[str, Any], changed: set[str], key: str | None, value: Any) -> None:
    """``env[key] = value`` (in its traced dtype), its sizes and strides into ``tensor_values``."""
    import torch

    if key is None or not isinstance(value, torch.Tensor):
        return
    meta = graph["tensor_values"].get(key)
    if meta is not None:
        value = value.to(_dtype(meta["dtype"]))  # the traced dtype wins: autocast regions
        sizes = _sym(value.shape)
        if meta["sizes"] != sizes:
            changed.add(key)
        meta.update(sizes=sizes, strides=_sym(value.stride()),
                    storage_offset={"as_int": value.storage_offset()})
    env[key] = value


def _propagate(graph: dict[str, Any], env: dict[str, Any], changed: set[str], name: str) -> None:
    """Run every node of ``graph`` on meta tensors, in order, writing the new output shapes."""
    for node in graph["nodes"]:
        if node["target"] in _FOLLOWED_WRAPPERS:
            outputs, results = _flat_names(node["outputs"]), _run_body(node, env, changed, name)
        else:
            outputs, results = _flat_names(node["outputs"]), _flat_values(_run_op(node, env, changed, name))
        for key, value in zip(outputs, results, strict=True):
            _bind(graph, env, changed, key, value)


def _run_body(node: dict[str, Any], env: dict[str, Any], changed: set[str], name: str) -> list[Any]:
    """The outputs of a wrapper's body, run on the arguments after its graph argument."""
    args = [inp["arg"] for inp in node["inputs"]]
    at = next(i for i, arg in enumerate(args) if "as_graph" in arg)
    body = args[at]["as_graph"]["graph"]
    inner: dict[str, Any] = {}
    values = _flat_values([_value(arg, env, node, name) for arg in args[at + 1:]])
    for key, value in zip(_flat_names(body["inputs"]), values, strict=True):
        _bind(body, inner, changed, key, value)
    _propagate(body, inner, changed, name)
    return [inner.get(key) if key else None for key in _flat_names(body["outputs"])]


def _resolve(node: dict[str, Any], name: str) -> Any:
    """The ATen/prims overload a node names, looked up only in ``torch.ops.aten``/``prims``."""
    import torch

    target = node["target"]
    match = _OP_TARGET.fullmatch(target)
    overload = None
    if match:
        try:
            packet = getattr(getattr(torch.ops, match[1]), match[2])
            overload = getattr(packet, match[3])
        except (AttributeError, RuntimeError):
            overload = None
    if not isinstance(overload, torch._ops.OpOverload):
        raise GraphError(f"{name}: cannot rewrite node {node.get('name')} ({target}): only "
                         f"torch.ops.aten/prims ops and {', '.join(_FOLLOWED_WRAPPERS)} are followed")
    return overload


def _value(arg: dict[str, Any], env: dict[str, Any], node: dict[str, Any], name: str) -> Any:
    """A serialized argument as a Python value: tensors from ``env``, devices as meta."""
    import torch
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_LAYOUT, _SERIALIZE_TO_TORCH_MEMORY_FORMAT

    (kind, value), = arg.items()
    items = value if isinstance(value, list) else [value]
    if kind == "as_none":
        return None
    if kind == "as_tensor":
        return env[value["name"]]
    if kind == "as_tensors":
        return [env[t["name"]] for t in value]
    if kind in ("as_optional_tensors", "as_optional_tensor"):
        found = [env[t["as_tensor"]["name"]] if "as_tensor" in t else None for t in items]
        return found if kind == "as_optional_tensors" else found[0]
    if kind in _PLAIN_KINDS:
        return value
    plain = _SYM_KINDS.get(kind.removesuffix("s"))  # as_sym_ints: [{"as_int": 3}, ...]
    if plain and all(plain in v for v in items):
        return [v[plain] for v in items] if kind.endswith("s") else value[plain]
    if kind == "as_scalar_type":
        return _dtype(value)
    if kind == "as_memory_format":
        return _SERIALIZE_TO_TORCH_MEMORY_FORMAT[value]
    if kind == "as_layout":
        return _SERIALIZE_TO_TORCH_LAYOUT[value]
    if kind == "as_device":
        return torch.device("meta")  # never allocate on a real device what the file sizes
    if kind == "as_complex":
        return complex(value["real"], value["imag"])
    raise GraphError(f"{name}: cannot rewrite node {node.get('name')} ({node['target']}): argument "
                     f"kind {kind} {json.dumps(value)[:80]} is not supported (static shapes and "
                     "plain values only)")


def _run_op(node: dict[str, Any], env: dict[str, Any], changed: set[str], name: str) -> list[Any]:
    """A node's op run on meta tensors, its results as a list (one item per schema return)."""
    import torch

    op = _resolve(node, name)
    kwargs = {inp["name"]: _value(inp["arg"], env, node, name) for inp in node["inputs"]}
    _keep_depthwise(node, kwargs)
    for schema_arg in op._schema.arguments:
        if "Device" in str(schema_arg.type):  # factory ops: a missing device means the CPU
            kwargs[schema_arg.name] = torch.device("meta")
    try:
        result = op(**kwargs)
    except _OP_ERRORS as err:
        inputs = {n for n in _flat_names([inp["arg"] for inp in node["inputs"]]) if n}
        reason = ("its shape arguments depend on a changed width" if inputs & changed
                  else "it does not run on the meta device")
        raise GraphError(f"{name}: cannot rewrite node {node.get('name')} ({node['target']}): "
                         f"{reason} ({describe_error(err)})") from err
    returns = len(op._schema.returns)
    return [result] if returns == 1 else list(result) if returns else [None] * len(node["outputs"])


def _keep_depthwise(node: dict[str, Any], kwargs: dict[str, Any]) -> None:
    """A depthwise conv (one input channel per filter, ``groups`` = its input channels) stays
    depthwise when its channels are cut: ``groups`` follows the new input width, in the
    arguments run and in the node's JSON. Nothing else about an integer argument is guessed."""
    weight, x, groups = kwargs.get("weight"), kwargs.get("input"), kwargs.get("groups")
    if not isinstance(groups, int) or groups <= 1 or kwargs.get("transposed") or weight is None \
            or x is None or weight.dim() < 3 or weight.shape[1] != 1 or x.shape[1] == groups \
            or weight.shape[0] % x.shape[1]:
        return
    kwargs["groups"] = int(x.shape[1])
    for inp in node["inputs"]:
        if inp["name"] == "groups":
            inp["arg"] = {"as_int": int(x.shape[1])}


def _write_zip(members: dict[str, bytes], files: dict[str, list[tuple[str, bytes]]]) -> bytes:
    """The archive, members stored uncompressed with their data 64-byte aligned (as torch's
    writer pads them: an ``FB`` extra field of ``Z`` bytes); new weight files follow the
    storage they were cut from, or replace it in place."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for member, data in members.items():
            extra = files.get(member, [])
            entries = ([] if any(new == member for new, _ in extra) else [(member, data)]) + extra
            for path, payload in entries:
                info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
                pad = -(out.tell() + 30 + len(path.encode()) + 4) % _ALIGN
                info.extra = b"FB" + pad.to_bytes(2, "little") + b"Z" * pad
                zf.writestr(info, payload)
    return out.getvalue()
