"""The README's training snippets (PyTorch plain + compile, DDP/FSDP2, Keras fit under
MirroredStrategy, a cost target, the HF Trainer and Lightning callbacks, and the closing
rebuild of your own model) run as written, each in a fresh interpreter, and leave their runs
behind."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
# torch.compile's default backend (inductor) builds C++ kernels: minutes on 2 shared cores.
# The snippet runs unchanged; only the backend is swapped for aot_eager, which still traces
# the whole graph (fullgraph=True) and the backward.
AOT_EAGER = ("import functools, runpy, sys, torch; "
             "torch.compile = functools.partial(torch.compile, backend='aot_eager'); "
             "runpy.run_path(sys.argv[1], run_name='__main__')")


def training_snippets() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Training with the regularizers"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_the_six_snippets():
    snippets = training_snippets()
    assert len(snippets) == 6
    assert "torch.compile" in snippets[0] and "fully_shard" in snippets[1] and "MirroredStrategy" in snippets[2]
    assert "target=0.5" in snippets[3] and "MorphNetCallback" in snippets[4]
    assert "morphscope.rebuild(" in snippets[5]  # the section ends with the smaller model itself


# Per snippet: its runs, each with the first step it logs (the trainers count optimizer steps
# from 1, so with every=2 their first line is step 2), and what it prints.
@pytest.mark.parametrize("index, runs, printed", [
    (0, {"learned_structure": 0}, "alive FLOPs now:"),
    (1, {"learned_structure_ddp": 0, "learned_structure_fsdp2": 0}, ""),
    (2, {"learned_structure": 0}, "alive FLOPs now:"),
    (3, {"learned_structure": 0}, "strength now"),
    (4, {"learned_structure_hf": 2, "learned_structure_lightning": 2}, "alive FLOPs now:"),
], ids=["torch", "distributed", "keras", "target", "trainers"])
def test_snippet_runs_as_written(index, runs, printed, tmp_path):
    snippet = training_snippets()[index]
    path = tmp_path / "snippet.py"
    path.write_text(snippet)
    command = [sys.executable, "-c", AOT_EAGER, str(path)] if "torch.compile" in snippet else [sys.executable, str(path)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for run, first_step in runs.items():
        lines = [json.loads(line) for line in (tmp_path / run / "cost.jsonl").read_text().splitlines()]
        assert lines[0]["step"] == first_step and lines[0]["target"] == "flops"
        assert len(lines) == len([p for p in (tmp_path / run).iterdir() if p.name.startswith("alive_")])
    assert printed in done.stdout


def test_rebuild_snippet_shrinks_rebuilds_and_retrains(tmp_path):
    path = tmp_path / "snippet.py"
    path.write_text(training_snippets()[5])
    done = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]  # its own last line asserts params = prediction
    counts = re.search(r"params ([\d,]+) -> ([\d,]+)", done.stdout).groups()
    seed_params, small_params = (int(c.replace(",", "")) for c in counts)
    assert small_params < seed_params
    accuracy = float(re.search(r"retrained from scratch: accuracy ([\d.]+)", done.stdout).group(1))
    assert accuracy > 0.8  # 10 classes: chance is 0.1
    assert list(tmp_path.iterdir()) == [path]  # it leaves nothing behind
