"""Runs a test worker script in a fresh interpreter (each scale test's scenarios in one run)."""

import subprocess
import sys
from pathlib import Path


def run_worker(worker: Path, out: Path, timeout_s: int = 600) -> None:
    """Run ``python worker out``; fail the test with the end of its stderr if it fails."""
    done = subprocess.run([sys.executable, str(worker), str(out)], capture_output=True, text=True,
                          timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
