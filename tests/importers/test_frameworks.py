"""One process, both frameworks: torchvision after TensorFlow is refused in one line, never a
segfault; loading triton first (what the app does) makes any order work."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": "3",
                                                       "PATH": "/usr/bin:/bin"})


def test_torchvision_after_keras_is_refused_in_one_line():
    done = _run("""
        import keras
        from morphscope.errors import MorphScopeError
        from morphscope.importers.load import load_model
        try:
            load_model("torchvision:resnet18")
        except MorphScopeError as err:
            print("REFUSED", err)
    """)
    assert done.returncode == 0, done.stderr[-2000:]  # a segfault would be -11
    line = done.stdout.strip()
    assert line.startswith("REFUSED torchvision:resnet18: this process already loaded TensorFlow")
    assert "\n" not in line


def test_triton_loaded_first_lets_both_frameworks_share_a_process():
    done = _run("""
        from morphscope.importers.frameworks import load_triton_first
        load_triton_first()
        from morphscope.importers.load import load_model
        keras_graph = load_model("keras:MobileNetV2", (3, 96, 96))
        torch_graph = load_model("torchvision:resnet18")
        print(len(keras_graph) > 0, len(torch_graph) > 0)
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True"]
