"""Test-session set-up shared by every test directory.

The suite runs PyTorch (torchvision) and Keras (TensorFlow) tests in one process. torchvision
loads triton, and triton loaded after TensorFlow segfaults the process (DESIGN section 10),
so triton is loaded first here, whatever order the tests run in. MorphScope itself needs no
such step: its Keras path imports no torch (tests/importers/test_capture_keras.py).
"""

import importlib.util

if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401 - load order matters, see above
