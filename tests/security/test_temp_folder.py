"""A parse leaves nothing in the system's temp folder: Keras files, valid and hostile, parsed
through the isolated parser (its server started in a process whose TMPDIR is a fresh folder)."""

import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("temp_worker.py")


def test_the_temp_folder_is_unchanged_after_parsing(tmp_path):
    temp, work = tmp_path / "temp", tmp_path / "work"
    temp.mkdir()
    work.mkdir()
    done = subprocess.run([sys.executable, str(WORKER), str(work)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": str(temp)})
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert outcomes["ok.keras"].startswith("parsed") and outcomes["ok.h5"].startswith("parsed")
    assert outcomes["many.keras"].startswith("refused many.keras: ")
    assert list(temp.iterdir()) == []
