"""Parse a user's file in a child process under hard limits, and get plain data back.

Every file a user hands MorphScope (a CLI argument, an upload) is parsed in a child process
that runs under ``RLIMIT_AS`` (address space), ``RLIMIT_CPU`` (CPU seconds) and
``RLIMIT_NOFILE`` (open files), plus a wall-clock limit; it returns plain data (a
ChannelGraph's JSON, a checkpoint's scale vectors and tensor shapes, alive counts). A child that
is killed or fails becomes one :class:`~morphscope.errors.MorphScopeError` line naming the file by
the user's own name and the limit it hit ("needs more than 2 GB to parse; limit 2 GB").

Start-up cost: a fresh interpreter importing torch or TensorFlow costs seconds. So one *parser
server* per framework (``plain``: numpy, h5py, zip and JSON; ``torch``; ``keras``, which never
imports torch) is started on first use with its framework imported, and forks one fresh child
per file: the child inherits the imports (copy-on-write), parses one file, writes its result
to a private folder and exits; nothing a file did survives it. The server itself never reads a
file. Zoo names (``torchvision:``, ``keras:``, ``example:``) are ours and stay in-process.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

import morphscope.errors as errors
from morphscope.errors import MorphScopeError, UnsupportedFileError
from morphscope.importers.limits import DEFAULT_LIMITS, Limits, describe_error
from morphscope.units import human_bytes

DEBUG_ENV = "MORPHSCOPE_WORKER_STDERR"  # set to 1 to see the parser servers' stderr
_EXIT_OK, _EXIT_ERROR, _EXIT_MEMORY = 0, 4, 5
_PRELOAD = {
    "plain": ("numpy", "h5py", "safetensors.numpy", "morphscope.importers.checkpoints",
              "morphscope.importers.h5safe", "networkx"),
    "torch": ("torch", "morphscope.importers.torch_importer", "morphscope.importers.checkpoints",
              "morphscope.importers.h5safe", "safetensors.numpy"),
    "keras": ("morphscope.importers.keras_importer", "morphscope.importers.checkpoints",
              "morphscope.importers.h5safe"),
}
_MEMORY_WORDS = ("can't allocate memory", "bad_alloc", "Unable to allocate", "out of memory",
                 "Cannot allocate memory")


# -- tasks run in the child: file -> plain data written to a folder ---------------------------

def _task_model(path: Path, name: str, limits: Limits, out: Path, full: bool) -> None:
    from morphscope.importers.load import load_model_file

    graph = load_model_file(path, name, limits)
    (out / "graph.json").write_text(graph.to_json())


def _task_checkpoint(path: Path, name: str, limits: Limits, out: Path, full: bool) -> None:
    from morphscope.importers.checkpoints import FlatArrays, IndexedShapes, read_checkpoint

    wanted = set(_load_keys(out, "wanted")) if (out / "wanted_text.npy").exists() else None
    contents = read_checkpoint(path, name, limits, full, wanted)
    arrays = FlatArrays.of(contents.arrays)
    np.save(out / "flat.npy", arrays.flat)
    np.save(out / "starts.npy", arrays.starts)
    for stem, shapes in (("arrays", arrays.shapes), ("shapes", IndexedShapes.of(contents.shapes))):
        _save_keys(out, stem, shapes.names)
        np.save(out / f"{stem}_ndim.npy", shapes.ndim)
        np.save(out / f"{stem}_dims.npy", shapes.dims)


def _save_keys(out: Path, stem: str, keys: list[str]) -> None:
    """Strings as two arrays (no per-key object in the file): their text, UTF-8 (lone
    surrogates kept, as a pickle may hold them), and where each ends in it."""
    text = "".join(keys)
    np.save(out / f"{stem}_text.npy", np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8))
    np.save(out / f"{stem}_ends.npy", np.cumsum(np.fromiter(map(len, keys), np.int64, len(keys))))


def _load_keys(out: Path, stem: str) -> list[str]:
    """The strings :func:`_save_keys` wrote."""
    text = np.load(out / f"{stem}_text.npy", allow_pickle=False).tobytes().decode("utf-8", "surrogatepass")
    ends = np.load(out / f"{stem}_ends.npy", allow_pickle=False).tolist()
    return list(map(text.__getitem__, map(slice, [0] + ends[:-1], ends)))


def _task_alive(path: Path, name: str, limits: Limits, out: Path, full: bool) -> None:
    from morphscope.importers.checkpoints import read_alive_json

    (out / "alive.json").write_text(json.dumps(read_alive_json(path, name, limits)))


TASKS: dict[str, Callable[..., None]] = {"model": _task_model, "checkpoint": _task_checkpoint,
                                         "alive": _task_alive}


def _set_limits(limits: Limits) -> None:
    import resource

    written = int(limits.max_unzipped_bytes)  # no file the parse writes (an extracted member) is larger
    resource.setrlimit(resource.RLIMIT_FSIZE, (written, written))
    base = _address_space_bytes()
    cpu = int(limits.max_cpu_s)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    address_space = int(base + limits.max_memory_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    files = int(limits.max_open_files)
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))


def _address_space_bytes() -> int:
    """This process's mapped address space (VmSize), the base the memory limit adds to."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _out_of_memory(err: BaseException | None) -> bool:
    """Whether an error, or any error it was raised from, is an allocation failure."""
    while err is not None:
        if isinstance(err, MemoryError) or any(word in str(err) for word in _MEMORY_WORDS):
            return True
        err = err.__cause__ or err.__context__
    return False


def _scratch_inside(out: Path) -> None:
    """Every temporary file of this child, the frameworks' included (Keras' extracted archive
    members, inductor and triton caches), goes under ``out/tmp``: the parent removes ``out`` on
    every outcome, so a killed or refused parse leaves nothing in the system's temp folder."""
    scratch = out / "tmp"
    scratch.mkdir()
    tempfile.tempdir = str(scratch)
    os.environ.update(TMPDIR=str(scratch), TORCHINDUCTOR_CACHE_DIR=str(scratch / "inductor"),
                      TRITON_CACHE_DIR=str(scratch / "triton"))


def _child(request: dict[str, Any]) -> int:
    """Run one task in a forked child; the outcome goes to ``out/result.json``."""
    out = Path(request["out"])
    name = request["name"]
    try:
        _scratch_inside(out)
        limits = Limits(**request["limits"])
        _set_limits(limits)
        TASKS[request["task"]](Path(request["path"]), name, limits, out, request["full"])
        outcome, code = {"ok": True}, _EXIT_OK
    except Exception as err:  # noqa: BLE001 - the child exists to turn any parser failure into a line
        if _out_of_memory(err):
            outcome, code = {"limit": "memory"}, _EXIT_MEMORY
        elif isinstance(err, OSError) and err.errno == errno.EFBIG:  # over RLIMIT_FSIZE (_set_limits)
            outcome, code = {"error": "UnsupportedFileError", "message": (
                f"{name}: unpacks a file larger than {human_bytes(request['limits']['max_unzipped_bytes'])}; "
                f"limit {human_bytes(request['limits']['max_unzipped_bytes'])}")}, _EXIT_ERROR
        elif isinstance(err, MorphScopeError):
            outcome, code = {"error": type(err).__name__, "message": str(err)}, _EXIT_ERROR
        else:  # a parser that met what it did not expect; a graph-building bug says so
            bug = next((note for note in getattr(err, "__notes__", ()) if note.startswith("MorphScope bug")), None)
            message = (f"{name}: {bug} ({describe_error(err)}); please report it" if bug else
                       f"{name}: not a readable {request['what']} ({describe_error(err)})")
            outcome, code = {"error": "UnsupportedFileError", "message": message}, _EXIT_ERROR
            if os.environ.get("MORPHSCOPE_DEBUG"):
                traceback.print_exc()
    try:
        (out / "result.part").write_text(json.dumps(outcome))
        os.replace(out / "result.part", out / "result.json")
    except (OSError, MemoryError):
        pass  # the exit code still tells the parent what happened
    return code


# -- the server: one per framework, forks a child per request ---------------------------------

def serve(kind: str) -> None:
    """Main loop of a parser server: preload ``kind``'s modules, then one forked child per
    request line on stdin, one reply line on the original stdout."""
    import importlib

    protocol_out = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # library chatter must not corrupt the protocol
    if kind == "keras":
        from morphscope.importers.keras_importer import import_keras

        import_keras()
    for module in _PRELOAD[kind]:
        importlib.import_module(module)
    protocol_out.write("ready\n")
    protocol_out.flush()
    for line in sys.stdin:
        protocol_out.write(json.dumps(_run_forked(json.loads(line))) + "\n")
        protocol_out.flush()


def _run_forked(request: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: parse, then leave without running any cleanup of the server's
        code = 1
        try:
            code = _child(request)
        finally:
            os._exit(code)
    pidfd = os.pidfd_open(pid)  # readable when the child exits: no polling delay
    try:
        exited, _, _ = select.select([pidfd], [], [], float(request["limits"]["max_wall_s"]))
    finally:
        os.close(pidfd)
    timed_out = not exited
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    return {"exit": os.waitstatus_to_exitcode(status), "timed_out": timed_out,
            "cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.monotonic() - started}


class _Server:
    """The parent's handle on one parser server process (started lazily, restarted if dead)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        stderr = None if os.environ.get(DEBUG_ENV) else subprocess.DEVNULL
        proc = subprocess.Popen(
            [sys.executable, "-c", f"from morphscope.importers.isolation import serve; serve({self.kind!r})"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            proc.wait()
            raise RuntimeError(f"the {self.kind} parser server did not start; run with {DEBUG_ENV}=1")
        return proc

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            for _ in range(2):  # a server that died is restarted once
                if self.proc is None or self.proc.poll() is not None:
                    self.proc = self._start()
                try:
                    self.proc.stdin.write(json.dumps(request) + "\n")
                    self.proc.stdin.flush()
                    reply = self.proc.stdout.readline()
                except (BrokenPipeError, OSError):
                    reply = ""
                if reply:
                    return json.loads(reply)
                self.proc = None
            raise RuntimeError(f"the {self.kind} parser server keeps dying; run with {DEBUG_ENV}=1")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


_SERVERS = {kind: _Server(kind) for kind in _PRELOAD}


@atexit.register
def close_servers() -> None:
    """Stop every parser server this process started."""
    for server in _SERVERS.values():
        server.close()


def _run_isolated(task: str, kind: str, path: Path, name: str, what: str, limits: Limits,
                  full: bool = False, wanted: Any = None) -> Path:
    """Run ``task`` on ``path`` in a limited child; return the folder holding its result.

    ``wanted`` (strings) goes to the child as two arrays in that folder (:func:`_save_keys`).
    The caller removes the folder. Raises the child's one-line error, or names the limit hit.
    """
    out = Path(tempfile.mkdtemp(prefix="morphscope_parse_"))
    if wanted is not None:
        _save_keys(out, "wanted", list(wanted))
    request = {"task": task, "path": str(path), "name": name, "what": what, "out": str(out),
               "limits": limits.to_dict(), "full": full}
    try:
        reply = _SERVERS[kind].run(request)
        result_file = out / "result.json"
        outcome = json.loads(result_file.read_text()) if result_file.exists() else {}
        if outcome.get("ok"):
            return out
        raise _failure(outcome, reply, path, name, limits)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def _failure(outcome: dict[str, Any], reply: dict[str, Any], path: Path, name: str,
             limits: Limits) -> MorphScopeError:
    """The one-line error for a child that failed or was stopped."""
    if "error" in outcome:
        cls = getattr(errors, outcome["error"], UnsupportedFileError)
        return cls(hide_path(outcome["message"], path, name))
    exit_code = reply["exit"]
    if outcome.get("limit") == "memory" or exit_code == _EXIT_MEMORY:
        return UnsupportedFileError(f"{name}: needs more than {human_bytes(limits.max_memory_bytes)} "
                                    f"to parse; limit {human_bytes(limits.max_memory_bytes)}")
    if reply["timed_out"]:
        return UnsupportedFileError(f"{name}: parsing did not finish in {limits.max_wall_s:g} s; "
                                    f"limit {limits.max_wall_s:g} s")
    if exit_code in (-signal.SIGXCPU, -signal.SIGKILL) and reply["cpu_s"] >= limits.max_cpu_s - 0.5:
        return UnsupportedFileError(f"{name}: needs more than {limits.max_cpu_s} s of CPU time to "
                                    f"parse; limit {limits.max_cpu_s} s")
    how = f"signal {signal.Signals(-exit_code).name}" if exit_code < 0 else f"exit status {exit_code}"
    return UnsupportedFileError(f"{name}: the parser crashed on this file ({how})")


def hide_path(message: str, path: Path, name: str) -> str:
    """A message with the file's real (temp) path replaced by the user's name for it."""
    for shown in (str(path.resolve()), str(path)):
        message = message.replace(shown, name)
    return message


# -- what the rest of MorphScope calls ----------------------------------------------------------

MODEL_WORKERS = {".pt2": "torch", ".keras": "keras", ".h5": "keras", ".hdf5": "keras",
                 ".json": "plain", ".pt": "torch", ".pth": "torch", ".bin": "torch"}
CHECKPOINT_WORKERS = {".pt": "torch", ".pth": "torch", ".bin": "torch", ".ckpt": "torch"}


def parse_model_isolated(path: str | Path, name: str | None = None,
                         limits: Limits = DEFAULT_LIMITS) -> Any:
    """A model file's ChannelGraph, parsed in a limited child process.

    Parameters
    ----------
    path : str or Path
        The file (``.pt2``, ``.keras``, ``.h5``, graph ``.json``).
    name : str, optional
        The user's name for it (an upload's own name); messages and the graph use it.

    Raises
    ------
    MorphScopeError
        One line naming the file: the parser's refusal or the limit the child hit.
    """
    from morphscope.graph import ChannelGraph
    from morphscope.importers.load import check_file, model_suffix

    path = Path(path)
    name = name or str(path)
    check_file(path, limits.max_file_bytes, name)
    out = _run_isolated("model", MODEL_WORKERS[model_suffix(path, name)], path, name, "model file", limits)
    try:
        graph = ChannelGraph.from_json((out / "graph.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    graph.name = name
    return graph


def read_checkpoint_isolated(path: str | Path, name: str | None = None,
                             limits: Limits = DEFAULT_LIMITS, full: bool = False,
                             wanted: Any = None) -> Any:
    """A checkpoint's :class:`~morphscope.importers.checkpoints.CheckpointTensors`, read in a
    limited child process (see :func:`parse_model_isolated`); every tensor's values if
    ``full``, else those with at most one axis (of a plain state_dict: only the keys in
    ``wanted``, where given; see :func:`~morphscope.importers.checkpoints.read_checkpoint`)."""
    from morphscope.importers.checkpoints import CheckpointTensors, FlatArrays, IndexedShapes, checkpoint_suffix
    from morphscope.importers.load import check_file

    path = Path(path)
    name = name or str(path)
    check_file(path, limits.max_file_bytes, name)
    kind = CHECKPOINT_WORKERS.get(checkpoint_suffix(path, name), "plain")
    out = _run_isolated("checkpoint", kind, path, name, "checkpoint", limits, full, wanted)
    try:
        shapes = {stem: IndexedShapes(_load_keys(out, stem), np.load(out / f"{stem}_ndim.npy", allow_pickle=False),
                                      np.load(out / f"{stem}_dims.npy", allow_pickle=False))
                  for stem in ("arrays", "shapes")}
        flat, starts = (np.load(out / f"{part}.npy", allow_pickle=False) for part in ("flat", "starts"))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return CheckpointTensors(FlatArrays(flat, starts, shapes["arrays"]), shapes["shapes"])


def read_alive_isolated(path: str | Path, name: str | None = None,
                        limits: Limits = DEFAULT_LIMITS) -> dict[str, int]:
    """A morph-net alive file's counts, read in a limited child process."""
    from morphscope.importers.load import check_file

    path = Path(path)
    name = name or str(path)
    check_file(path, limits.max_file_bytes, name)
    out = _run_isolated("alive", "plain", path, name, "alive file", limits)
    try:
        return json.loads((out / "alive.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
