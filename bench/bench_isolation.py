"""The cost of parsing user files in the isolated, limited worker instead of in process.

Makes its own files: torchvision resnet50 (random weights) through ``torch.export.save`` (.pt2),
``keras.applications.ResNet50(weights=None)`` saved as .keras, and a PyTorch state_dict with
10^6 keys. For each: the parse in this process (``isolate=False``), the first isolated parse
(it starts the framework's parser server: one interpreter importing torch or TensorFlow), and
the best of N later isolated parses (a fork of the warm server per file). Then reading a
10^6-key checkpoint (in process, isolated, and torch.load alone) and matching it to resnet50's
graph (dictionary lookups only).

    python bench/bench_isolation.py [--repeat 3] [--skip-keras] [--keys 1000000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def best_of(repeat, fn):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_files(folder: Path, keys: int, keras: bool) -> dict[str, Path]:
    """Write the bench's inputs, each in a fresh interpreter (torch and TensorFlow apart)."""
    files = {"resnet50.pt2": folder / "resnet50.pt2", "ckpt.pt": folder / "ckpt.pt"}
    script = f"""
import torch, torchvision
model = torchvision.models.resnet50().eval()
torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 224, 224),)), {str(files['resnet50.pt2'])!r})
state = {{k: v for k, v in model.state_dict().items()}}
for i in range({keys} - len(state)):
    state[f"aux.block{{i}}.weight"] = torch.zeros(1)
torch.save(state, {str(files['ckpt.pt'])!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    if keras:
        files["ResNet50.keras"] = folder / "ResNet50.keras"
        script = f"""
from morphscope.importers.keras_importer import import_keras
keras = import_keras()
keras.applications.ResNet50(weights=None).save({str(files['ResNet50.keras'])!r})
"""
        subprocess.run([sys.executable, "-c", script], check=True)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keys", type=int, default=10**6, help="keys of the big checkpoint")
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args()

    from morphscope.errors import CheckpointMismatchError
    from morphscope.importers.checkpoints import match_gammas, read_checkpoint
    from morphscope.importers.isolation import read_checkpoint_isolated
    from morphscope.importers.limits import Limits
    from morphscope.importers.load import load_model, read_torch_pickle

    # torchvision (and the triton it loads) before the in-process Keras parse below: triton
    # loaded after TensorFlow crashes the process, which the importer refuses (DESIGN 11).
    graph = load_model("torchvision:resnet50")
    with tempfile.TemporaryDirectory(prefix="bench_isolation_") as tmp:
        started = time.perf_counter()
        files = make_files(Path(tmp), args.keys, not args.skip_keras)
        print(f"made the files in {time.perf_counter() - started:.1f} s")
        print(f"{'file':<16} {'size':>9} {'in process':>11} {'isolated, cold':>15} "
              f"{'isolated, warm':>15} {'overhead (warm)':>16}")
        for name in ("resnet50.pt2", "ResNet50.keras"):
            if name not in files:
                continue
            path = str(files[name])
            local = best_of(args.repeat, lambda: load_model(path, isolate=False))
            cold = timed(lambda: load_model(path))
            warm = best_of(args.repeat, lambda: load_model(path))
            print(f"{name:<16} {files[name].stat().st_size / 2**20:>7.1f}MB {local:>10.3f}s "
                  f"{cold:>14.3f}s {warm:>14.3f}s {warm - local:>+15.3f}s")

        ckpt = files["ckpt.pt"]
        print(f"\n{args.keys:,}-key state_dict ({ckpt.stat().st_size / 2**20:.0f} MB):", flush=True)
        print(f"  read in process (no torch for a plain state_dict): {timed(lambda: read_checkpoint(ckpt)):.2f} s",
              flush=True)
        roomy = Limits(max_cpu_s=3600, max_wall_s=3600)  # measure the read, not the default limits
        print(f"  read isolated: {timed(lambda: read_checkpoint_isolated(ckpt, limits=roomy)):.2f} s", flush=True)
        print(f"  torch.load(weights_only=True) alone: {timed(lambda: read_torch_pickle(ckpt)):.2f} s", flush=True)
        contents = read_checkpoint(ckpt)

        def match():
            try:
                match_gammas(graph, contents, "ckpt.pt")
            except CheckpointMismatchError:  # the extra keys are layers resnet50 does not have
                pass

        print(f"  matched to resnet50's graph: {best_of(args.repeat, match):.3f} s")


if __name__ == "__main__":
    main()
