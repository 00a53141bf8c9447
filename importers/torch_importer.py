"""PyTorch models -> ChannelGraph (torch imported lazily).

Three entry points: :func:`load_module` (an ``nn.Module`` and an input shape, captured in one
forward pass: :mod:`~morphscope.importers.dispatch_capture`),
:func:`load_torchvision` (``torchvision:NAME``, built on the meta device: no weights are
allocated, so even regnet_y_128gf imports in seconds) and :func:`load_pt2` (a file written by
``torch.export.save``, parsed as JSON and raw bytes: never unpickled, never ``torch.export.load``,
DESIGN section 10).
"""

from __future__ import annotations

import contextlib
import json
import operator
import zipfile
from collections.abc import Callable, Hashable, Iterator, Mapping
from pathlib import Path
from typing import Any

from morphscope.importers.aten import OpRecord, Program, Ref, build_graph, short_op_name
from morphscope.importers.nodes import first_line
from morphscope.importers.dispatch_capture import CaptureError, leaf_paths, program_from_dispatch
from morphscope.importers.frameworks import import_torchvision
from morphscope.errors import GraphError, UnsupportedFileError
from morphscope.graph import ChannelGraph

MAX_MODEL_JSON_BYTES = 512 * 2**20  # a .pt2's graph description; resnet152's is ~2 MB


# -- live capture -----------------------------------------------------------------------------

def load_module(model: Any, input_shape: tuple[int, ...], name: str | None = None) -> ChannelGraph:
    """Capture an ``nn.Module`` at a per-image ``input_shape`` (C, H, W), batch 1, eval mode.

    One forward pass under a dispatch mode (:mod:`~morphscope.importers.dispatch_capture`),
    on meta stand-ins of the weights when the model allows it, else on its own tensors;
    ``torch.export`` only where both fail.

    Parameters
    ----------
    model : torch.nn.Module
        The model; it is put in eval mode (bn uses running statistics, dropout is off).
    input_shape : tuple of int
        Channels-first shape of one input, without the batch axis.
    name : str, optional
        What to call the graph; defaults to the model's class name.

    Raises
    ------
    GraphError
        If no capture route can run the model at that shape.
    """
    name = name or type(model).__name__
    if any(module.training for module in model.modules()):  # eval() is a __setattr__ per module
        model.eval()
    with _collector_paused():
        program, notes = _capture(model, tuple(input_shape), name)
        graph = build_graph(program, name)
    graph.notes.extend(notes)
    return graph


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off (if it was on) while the body runs. An import
    allocates ~10^4 objects, nearly all in no cycle (records, refs, attribute dicts): the
    collections they trigger free almost nothing and cost ~5% of mobilenet_v2's import, a
    full one of a large heap 10-200 ms now and then."""
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _capture(model: Any, input_shape: tuple[int, ...], name: str) -> tuple[Program, list[str]]:
    """The program of one forward pass, and notes on how it was captured."""
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    failures = []
    for on_meta in (True, False) if device.type != "meta" else (True,):
        # made where it runs: a CPU zero image costs more than a meta pass's ops (thread pool)
        example = torch.zeros((1, *input_shape), device="meta" if on_meta else device)
        try:
            program, reads_data = program_from_dispatch(model, example, on_meta)
        except CaptureError as err:
            failures.append(f"{'meta' if on_meta else device.type} forward pass: {err}")
            continue
        notes = ["captured on a zero input: data-dependent branches follow that input"] if reads_data else []
        return program, notes
    example = torch.zeros((1, *input_shape), device=device)
    try:
        exported = torch.export.export(model, (example,))
    except Exception as err:  # noqa: BLE001 - torch.export raises many types on user models
        failures.append(f"torch.export: {first_line(err)}")
        raise GraphError(f"{name}: could not run the model at input {input_shape} "
                         f"({'; '.join(failures)}); check the input shape") from err
    return program_from_exported(exported), [f"captured with torch.export: {'; '.join(failures)}"]


def torchvision_input_size(model: Any, name: str) -> int:
    """The image side a torchvision classifier is built for: its own ``image_size`` if it has
    one (ViT), else the crop size of its DEFAULT weights' transforms, else 224."""
    torchvision = import_torchvision(f"torchvision:{name}")

    if hasattr(model, "image_size"):
        return int(model.image_size)
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        return 224
    return int(weights.transforms().crop_size[0])


def build_torchvision(name: str):
    """Build torchvision classifier ``name`` with random weights on the meta device."""
    torchvision = import_torchvision(f"torchvision:{name}")
    import torch

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=5, cutoff=0.6) or available[:5]
        raise UnsupportedFileError(f"torchvision:{name}: no such classification model; closest: "
                                   f"{', '.join(close)} ({len(available)} in torchvision.models.list_models())")
    try:
        with torch.device("meta"):
            return torchvision.models.get_model(name, weights=None)
    except NotImplementedError:  # builders that read tensor values while building (RegNet)
        with _parameters_on_meta():
            return torchvision.models.get_model(name, weights=None)


@contextlib.contextmanager
def _parameters_on_meta():
    """Build on the CPU but move each parameter and buffer to the meta device as it is
    registered, so initialization allocates nothing (regnet_y_128gf has 645M parameters)."""
    import torch

    module_cls = torch.nn.Module
    register_parameter, register_buffer = module_cls.register_parameter, module_cls.register_buffer

    def parameter_on_meta(module, name, param):
        if param is not None:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def buffer_on_meta(module, name, tensor, persistent=True):
        register_buffer(module, name, tensor.to("meta") if tensor is not None else None, persistent)

    module_cls.register_parameter, module_cls.register_buffer = parameter_on_meta, buffer_on_meta
    try:
        yield
    finally:
        module_cls.register_parameter, module_cls.register_buffer = register_parameter, register_buffer


def load_torchvision(name: str, input_size: int | None = None) -> ChannelGraph:
    """Capture ``torchvision.models.get_model(name)`` at its default input size (or ``input_size``)."""
    model = build_torchvision(name)
    side = input_size or torchvision_input_size(model, name)
    return load_module(model, (3, side, side), name=f"torchvision:{name}")


def program_from_exported(exported: Any) -> Program:
    """Turn an ExportedProgram into plain :class:`Program` data."""
    import torch

    if any(isinstance(n.target, torch._ops.HigherOrderOperator) for n in exported.graph.nodes):
        exported = exported.run_decompositions({})  # inlines wrap_with_autocast and friends
    signature = exported.graph_signature
    constants = set(signature.inputs_to_buffers) | set(signature.inputs_to_lifted_tensor_constants)
    state = exported.state_dict
    parameters = _first_names(signature.inputs_to_parameters, lambda key: id(state.get(key, key)))
    return _fx_program(exported.graph, parameters, constants,
                       list(signature.user_inputs), set(signature.user_outputs))


def _first_names(parameters: Mapping[str, str], identity: Callable[[str], Hashable]) -> dict[str, str]:
    """``parameters`` (placeholder -> state_dict key) with each key replaced by the first key,
    in the signature's order, that names the same tensor (same ``identity``). torch.export
    lifts a tensor shared under several names (a module reachable by two paths) once per name;
    as one tensor it is one parameter, named as ``named_parameters()`` names it."""
    first: dict[Hashable, str] = {}
    return {placeholder: first.setdefault(identity(key), key) for placeholder, key in parameters.items()}


def _pt2_weight_identity(config: Mapping[str, Any]) -> Callable[[str], Hashable]:
    """A ``.pt2`` weight's identity from ``data/weights/model_weights_config.json``: the
    storage file it is saved in and its view of that storage (torch.export.save writes a
    storage shared by several names once). Weights saved from the meta device all name one
    empty file, so they, and any weight the config does not describe, are their own identity."""
    def identity(key: str) -> Hashable:
        entry = config.get(key)
        meta = entry.get("tensor_meta") if isinstance(entry, dict) else None
        if not isinstance(meta, dict) or entry.get("use_pickle") or \
                (meta.get("device") or {}).get("type") in (None, "meta"):
            return key
        view = {field: meta.get(field) for field in ("dtype", "sizes", "strides", "storage_offset")}
        return json.dumps([entry.get("path_name"), view], sort_keys=True)
    return identity


def _fx_program(graph: Any, parameters: dict[str, str], constants: set[str], user_inputs: list[str],
                user_outputs: set[str]) -> Program:
    """Records from torch.export's ATen-level FX graph."""
    import torch

    shapes: dict[str, tuple[int, ...]] = {}
    records: list[OpRecord] = []
    nodes = list(graph.nodes)
    stacks = [_stack_of(n.meta.get("nn_module_stack")) for n in nodes]
    leaves = leaf_paths(p for stack in stacks for p in stack)
    outputs: list[str] = []
    for node, stack in zip(nodes, stacks):
        val = node.meta.get("val")
        if node.op == "placeholder":
            shapes[node.name] = tuple(int(s) for s in val.shape)
        elif node.op == "output":
            returned = node.args[0] if isinstance(node.args[0], (list, tuple)) else [node.args[0]]
            outputs = [a.name for a in returned if isinstance(a, torch.fx.Node)]
        elif node.op == "call_function" and node.target is not operator.getitem:
            path = stack[-1] if stack else ""
            records.append(OpRecord(node.name, _fx_op_name(node.target), _fx_named_args(node),
                                    _fx_outputs(node, shapes), path, path in leaves))
    outputs = [o for o in outputs if o in user_outputs]
    return Program(records, shapes, parameters, constants, user_inputs, outputs)


def _fx_op_name(target: Any) -> str:
    schema = getattr(target, "_schema", None)
    return short_op_name(schema.name.replace("::", ".")) if schema else getattr(target, "__name__", str(target))


def _fx_outputs(node: Any, shapes: dict[str, tuple[int, ...]]) -> list[str | None]:
    val = node.meta.get("val")
    if hasattr(val, "shape"):
        shapes[node.name] = tuple(int(s) for s in val.shape)
        return [node.name]
    if isinstance(val, (list, tuple)):
        outputs: list[str | None] = [None] * len(val)
        for user in node.users:
            if user.target is operator.getitem and hasattr(val[user.args[1]], "shape"):
                outputs[user.args[1]] = user.name
                shapes[user.name] = tuple(int(s) for s in val[user.args[1]].shape)
        return outputs
    return []


def _fx_named_args(node: Any) -> dict[str, Any]:
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        named = {f"arg{i}": a for i, a in enumerate(node.args)}
        named.update(node.kwargs)
    else:
        named = {}
        for i, arg in enumerate(schema.arguments):
            if i < len(node.args):
                named[arg.name] = node.args[i]
            elif arg.name in node.kwargs:
                named[arg.name] = node.kwargs[arg.name]
            elif arg.has_default_value():
                named[arg.name] = arg.default_value
    return {k: _fx_value(v) for k, v in named.items()}


def _fx_value(value: Any) -> Any:
    import torch

    if isinstance(value, torch.fx.Node):
        return Ref(value.name)
    if isinstance(value, (list, tuple)):
        return [_fx_value(v) for v in value]
    if isinstance(value, (int, float, bool, str)) or value is None:
        return value
    return str(value)


def _stack_of(nn_module_stack: Any) -> list[str]:
    """Module paths from outermost to innermost, from an FX dict or a .pt2 metadata string."""
    if not nn_module_stack:
        return []
    if isinstance(nn_module_stack, dict):
        return [_clean_path(path) for path, _ in nn_module_stack.values()]
    return [_clean_path(entry.split(",")[1]) for entry in nn_module_stack.split(";") if entry]


def _clean_path(path: str) -> str:
    """``L['self'].layer1[0]`` (strict export) -> ``layer1.0``; plain paths pass unchanged."""
    path = path.replace("L['self'].", "").replace("L['self']", "")
    return path.replace("[", ".").replace("]", "").replace("'", "").strip(".")


# -- .pt2 files: JSON and raw bytes only --------------------------------------------------------

def _pt2_model_member(path: Path) -> str:
    if not zipfile.is_zipfile(path):
        raise UnsupportedFileError(f"{path}: not a torch.export archive (.pt2 files are zip "
                                   "archives written by torch.export.save)")
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith("models/model.json")]
    if not names:
        raise UnsupportedFileError(f"{path}: zip archive without models/model.json; write it "
                                   "with torch.export.save from torch >= 2.8")
    return names[0]


def read_pt2_program(path: str | Path) -> Program:
    """Parse the graph of a ``.pt2`` archive without unpickling anything.

    Raises
    ------
    UnsupportedFileError
        If the file is not a torch.export archive or its graph JSON is malformed.
    """
    path = Path(path)
    from morphscope.importers.limits import loads_json, open_zip, read_member

    member = _pt2_model_member(path)
    weights_member = member.removesuffix("models/model.json") + "data/weights/model_weights_config.json"
    with open_zip(path, str(path)) as archive:  # zip bombs and member names, before reading
        data = read_member(archive, member, str(path), MAX_MODEL_JSON_BYTES)
        weights = (read_member(archive, weights_member, str(path), MAX_MODEL_JSON_BYTES)
                   if weights_member in archive.NameToInfo else b"{}")
    doc = loads_json(data, str(path), what="torch.export graph")  # bounded depth and length
    weights_config = loads_json(weights, str(path), what="torch.export weights config")
    try:
        return program_from_pt2_json(doc, weights_config.get("config") or {})
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise UnsupportedFileError(f"{path}: malformed torch.export graph "
                                   f"({type(err).__name__}: {err})") from err


def load_pt2(path: str | Path) -> ChannelGraph:
    """Import a ``.pt2`` file written by ``torch.export.save`` (JSON parse, no code runs)."""
    return build_graph(read_pt2_program(path), str(path))


def program_from_pt2_json(doc: dict[str, Any], weights_config: Mapping[str, Any] | None = None) -> Program:
    """Turn the ``models/model.json`` document of a ``.pt2`` archive into a :class:`Program`;
    ``weights_config`` (the ``config`` of its weights config) tells shared weights apart.

    The bodies of the higher-order ops torch.export wraps regions in (``autocast``,
    ``set_grad_enabled``) are inlined: their ops are counted like any other (DESIGN section 15).
    """
    module = doc["graph_module"]
    shapes: dict[str, tuple[int, ...]] = {}
    names: dict[str, str] = {}  # top-level outputs of inlined ops -> their values in the bodies
    nodes = list(_pt2_nodes(module["graph"], names, "", shapes))
    stacks = [_stack_of(node.get("metadata", {}).get("nn_module_stack")) for node, _ in nodes]
    leaves = leaf_paths(p for stack in stacks for p in stack)
    records = []
    for (node, name_of), stack in zip(nodes, stacks):
        op = short_op_name(node["target"])
        args = _bind_by_name(node["target"], {inp["name"]: _pt2_value(inp["arg"], name_of)
                                              for inp in node["inputs"]})
        outputs = _pt2_tensor_names(node["outputs"], name_of)
        path = stack[-1] if stack else ""
        records.append(OpRecord(node.get("name") or outputs[0] or op, op, args, outputs, path,
                                path in leaves))
    parameters, constants, user_inputs = {}, set(), []
    for spec in module["signature"]["input_specs"]:
        (spec_kind, body), = spec.items()
        if spec_kind == "parameter":
            parameters[body["arg"]["name"]] = body["parameter_name"]
        elif spec_kind == "user_input":
            if "as_tensor" in body["arg"]:
                user_inputs.append(body["arg"]["as_tensor"]["name"])
        else:
            constants.add(body["arg"]["name"])
    parameters = _first_names(parameters, _pt2_weight_identity(weights_config or {}))
    returned = [body["arg"] for spec in module["signature"]["output_specs"]
                for spec_kind, body in spec.items() if spec_kind == "user_output"]
    user_outputs = [name for name in _pt2_tensor_names(returned, lambda n: names.get(n, n)) if name]
    return Program(records, shapes, parameters, constants, user_inputs, user_outputs)


# Higher-order ops torch.export wraps a region in: one body run once on the arguments after
# it, whose outputs are the op's outputs (torch/_export/passes/replace_*_with_hop_pass.py).
_PT2_WRAPPERS = ("torch.ops.higher_order.wrap_with_autocast",
                 "torch.ops.higher_order.wrap_with_set_grad_enabled")
_NameOf = Callable[[str], str]  # a tensor's name in its (sub)graph -> its name in the Program


def _pt2_nodes(graph: dict[str, Any], names: dict[str, str], prefix: str,
               shapes: dict[str, tuple[int, ...]]) -> Iterator[tuple[dict[str, Any], _NameOf]]:
    """Yield ``(node, name_of)`` for the nodes of ``graph``, wrapper bodies inlined in place;
    ``name_of`` maps a tensor name in the node's graph to its name in the program (a body's
    names are prefixed with its op's path, ``wrap_with_autocast/matmul``; its inputs and
    outputs are the caller's values). Records every tensor's shape in ``shapes``."""
    def name_of(name: str) -> str:
        return names.get(name, prefix + name)

    for name, meta in graph["tensor_values"].items():
        shapes[name_of(name)] = tuple(_sym_int(s) for s in meta["sizes"])
    for node in graph["nodes"]:
        if node["target"] not in _PT2_WRAPPERS:
            yield node, name_of
            continue
        args = [inp["arg"] for inp in node["inputs"]]
        at = [i for i, arg in enumerate(args) if "as_graph" in arg][0]
        body = args[at]["as_graph"]["graph"]
        body_names = dict(zip(_pt2_tensor_names(body["inputs"], str),
                              _pt2_tensor_names(args[at + 1:], name_of)))
        body_prefix = f"{prefix}{node['name']}/"
        yield from _pt2_nodes(body, body_names, body_prefix, shapes)
        for outer, inner in zip(_pt2_tensor_names(node["outputs"], str),
                                _pt2_tensor_names(body["outputs"], str)):
            if outer is not None and inner is not None:
                names[outer] = body_names.get(inner, body_prefix + inner)


def _pt2_tensor_names(arguments: list[dict[str, Any]], name_of: _NameOf) -> list[str | None]:
    """The tensor names of serialized arguments, lists flattened; None for a non-tensor."""
    tensors: list[str | None] = []
    for arg in arguments:
        if "as_tensor" in arg:
            tensors.append(name_of(arg["as_tensor"]["name"]))
        elif "as_tensors" in arg:
            tensors.extend(name_of(t["name"]) for t in arg["as_tensors"])
        else:
            tensors.append(None)
    return tensors


def _sym_int(value: dict[str, Any]) -> int:
    if "as_int" in value:
        return int(value["as_int"])
    raise ValueError(f"dynamic dimension {value!r}; export with static shapes")


_PT2_SCALARS = ("as_int", "as_float", "as_bool", "as_string", "as_ints", "as_floats",
                "as_bools", "as_strings", "as_scalar_type", "as_memory_format", "as_layout")


def _pt2_value(arg: dict[str, Any], name_of: _NameOf) -> Any:
    (key, value), = arg.items()
    if key == "as_tensor":
        return Ref(name_of(value["name"]))
    if key == "as_tensors":
        return [Ref(name_of(t["name"])) for t in value]
    if key == "as_optional_tensors":
        return [Ref(name_of(t["as_tensor"]["name"])) if "as_tensor" in t else None for t in value]
    if key == "as_sym_int":
        return value.get("as_int")
    if key == "as_sym_ints":
        return [v.get("as_int") for v in value]
    return value if key in _PT2_SCALARS else None


def _bind_by_name(target: str, given: dict[str, Any]) -> dict[str, Any]:
    """An ATen overload's arguments (``torch.ops.aten.conv2d.default``) in schema order: each
    one given by name in the file, else its default. Other targets keep the file's arguments."""
    import torch

    parts = target.split(".")
    if parts[:3] != ["torch", "ops", "aten"] or len(parts) != 5:
        return given
    packet = getattr(torch.ops.aten, parts[3], None)
    overload = getattr(packet, parts[4], None) if packet is not None else None
    if overload is None:
        return given
    bound = {}
    for arg in overload._schema.arguments:
        if arg.name in given:
            bound[arg.name] = given[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
    return bound
