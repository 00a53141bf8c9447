"""The README's training snippets (PyTorch plain + compile, DDP/FSDP2, Keras fit under
MirroredStrategy, and the closing rebuild of your own model) run as written, each in a fresh
interpreter, and leave their runs behind."""

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


def test_the_section_has_the_four_snippets():
    snippets = training_snippets()
    assert len(snippets) == 4
    assert "torch.compile" in snippets[0] and "fully_shard" in snippets[1] and "MirroredStrategy" in snippets[2]
    assert "morphscope.rebuild(" in snippets[3]  # the section ends with the smaller model itself


@pytest.mark.parametrize("index, runs", [(0, ["learned_structure"]),
                                         (1, ["learned_structure_ddp", "learned_structure_fsdp2"]),
                                         (2, ["learned_structure"])], ids=["torch", "distributed", "keras"])
def test_snippet_runs_as_written(index, runs, tmp_path):
    snippet = training_snippets()[index]
    path = tmp_path / "snippet.py"
    path.write_text(snippet)
    command = [sys.executable, "-c", AOT_EAGER, str(path)] if "torch.compile" in snippet else [sys.executable, str(path)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for run in runs:
        lines = [json.loads(line) for line in (tmp_path / run / "cost.jsonl").read_text().splitlines()]
        assert lines[0]["step"] == 0 and lines[0]["target"] == "flops"
        assert len(lines) == len([p for p in (tmp_path / run).iterdir() if p.name.startswith("alive_")])
    if index != 1:
        assert "alive FLOPs now:" in done.stdout


def test_rebuild_snippet_shrinks_rebuilds_and_retrains(tmp_path):
    path = tmp_path / "snippet.py"
    path.write_text(training_snippets()[3])
    done = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]  # its own last line asserts params = prediction
    counts = re.search(r"params ([\d,]+) -> ([\d,]+)", done.stdout).groups()
    seed_params, small_params = (int(c.replace(",", "")) for c in counts)
    assert small_params < seed_params
    accuracy = float(re.search(r"retrained from scratch: accuracy ([\d.]+)", done.stdout).group(1))
    assert accuracy > 0.8  # 10 classes: chance is 0.1
    assert list(tmp_path.iterdir()) == [path]  # it leaves nothing behind
