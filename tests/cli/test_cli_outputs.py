"""`morphscope export` never destroys data (issue 15): outputs are checked before anything runs,
written whole or not at all, and a kill mid-write leaves the previous files as they were."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from morphscope.cli.main import main

REPO = Path(__file__).resolve().parents[2]
DIGITS_MODEL = REPO / "examples" / "digits" / "seed.pt2"
DIGITS_GAMMAS = REPO / "examples" / "digits" / "flops_gammas.pt"


def cli_error(capsys, *argv):
    """Run the CLI in process; the one stderr line of a refused command (exit status 2)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse refusals
        code = exit_.code
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def snapshot(folder):
    """Every entry under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def refused_leaving_unchanged(capsys, folder, *argv):
    """The one-line refusal of a command that must not change anything under ``folder``."""
    before = snapshot(folder)
    line = cli_error(capsys, *argv)
    assert snapshot(folder) == before
    return line


@pytest.fixture
def inputs(tmp_path):
    """A model file and a checkpoint with known bytes (never parsed: refusals come first)."""
    model, checkpoint = tmp_path / "model.keras", tmp_path / "gammas.pth"
    model.write_bytes(b"my model, keep me")
    checkpoint.write_bytes(b"my gammas, keep me")
    return model, checkpoint


def export_args(model, checkpoint, *more):
    return ["export", model, "--checkpoint", checkpoint, *more]


@pytest.mark.parametrize("option", ["--out", "--table", "--model-out"])
def test_output_naming_the_checkpoint_is_refused(capsys, tmp_path, inputs, option):
    model, checkpoint = inputs
    extra = [] if option == "--out" else ["--out", tmp_path / "widths.json"]
    line = refused_leaving_unchanged(capsys, tmp_path, *export_args(model, checkpoint, *extra,
                                                                    option, checkpoint))
    assert f"{option} {checkpoint} would overwrite input --checkpoint {checkpoint}" in line


def test_model_out_naming_the_model_file_is_refused(capsys, tmp_path, inputs):
    model, checkpoint = inputs
    line = refused_leaving_unchanged(capsys, tmp_path, *export_args(
        model, checkpoint, "--out", tmp_path / "w.json", "--model-out", model))
    assert f"would overwrite input MODEL {model}" in line


def test_model_out_naming_the_bundled_example_is_refused(capsys, tmp_path):
    line = cli_error(capsys, "export", "example:digits", "--checkpoint", DIGITS_GAMMAS,
                     "--out", tmp_path / "w.json", "--model-out", DIGITS_MODEL)
    assert f"would overwrite input MODEL {DIGITS_MODEL}" in line


def test_output_reaching_an_input_through_links_is_refused(capsys, tmp_path, inputs):
    model, checkpoint = inputs
    symlink, hardlink = tmp_path / "link.json", tmp_path / "hard.json"
    symlink.symlink_to(checkpoint)
    os.link(checkpoint, hardlink)
    (tmp_path / "sub").mkdir()
    for target in (symlink, hardlink, tmp_path / "sub" / ".." / checkpoint.name):
        line = refused_leaving_unchanged(capsys, tmp_path, *export_args(model, checkpoint,
                                                                        "--out", target))
        assert f"would overwrite input --checkpoint {checkpoint}" in line


def test_two_outputs_naming_one_file_are_refused(capsys, tmp_path, inputs):
    model, checkpoint = inputs
    line = refused_leaving_unchanged(capsys, tmp_path, *export_args(
        model, checkpoint, "--out", tmp_path / "x.json", "--table", f"{tmp_path}/./x.json"))
    assert f"--table {tmp_path}/./x.json would overwrite --out {tmp_path / 'x.json'}" in line


def test_unwritable_targets_get_one_line(capsys, tmp_path, inputs):
    model, checkpoint = inputs
    plain = tmp_path / "notes.txt"
    plain.write_text("a file, not a folder")
    cases = {
        tmp_path: "is a folder",
        tmp_path / "missing" / "w.json": f"no such folder {tmp_path / 'missing'}",
        plain / "w.json": f"no such folder {plain}",
        Path("/proc/w.json"): "cannot create files in /proc",  # unwritable even for root
        Path("/dev/null"): "not a regular file",  # replacing it would remove the device
    }
    for target, fragment in cases.items():
        line = refused_leaving_unchanged(capsys, tmp_path, *export_args(model, checkpoint,
                                                                        "--out", target))
        assert f"--out {target}: {fragment}" in line


def test_failed_export_with_three_outputs_leaves_the_folder_as_it_was(capsys, tmp_path):
    # --out and --table are computed, then --model-out fails: x3 widens layers past the seed,
    # so there are no seed weights to copy. Nothing may have been written, the old files keep
    # their bytes.
    out = tmp_path / "out"
    out.mkdir()
    (out / "widths.json").write_text('{"old": 1}\n')
    (out / "layers.csv").write_text("old,table\n")
    line = refused_leaving_unchanged(capsys, tmp_path, "export", DIGITS_MODEL, "--checkpoint",
                                     DIGITS_GAMMAS, "--out", out / "widths.json", "--table",
                                     out / "layers.csv", "--model-out", out / "morphed.pt2",
                                     "--multiplier", "3", "--copy-weights")
    assert str(DIGITS_MODEL) in line and "cannot copy weights" in line


def test_model_out_suffix_of_the_other_framework_is_refused(capsys, tmp_path):
    line = refused_leaving_unchanged(capsys, tmp_path, "export", "example:digits", "--checkpoint",
                                     DIGITS_GAMMAS, "--out", tmp_path / "widths.json",
                                     "--model-out", tmp_path / "morphed.keras")
    assert "a rebuilt torch model is saved as .pt2" in line


def test_existing_output_is_replaced_with_its_permissions(capsys, tmp_path):
    widths = tmp_path / "widths.json"
    widths.write_text("previous run\n")
    widths.chmod(0o640)
    assert main(["export", "example:digits", "--checkpoint", str(DIGITS_GAMMAS),
                 "--out", str(widths)]) == 0
    assert capsys.readouterr().out == f"wrote {widths}\n"
    assert widths.read_text().startswith("{") and oct(widths.stat().st_mode & 0o777) == "0o640"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["widths.json"]  # no temporary left


def test_export_json_lists_what_was_written(capsys, tmp_path):
    import json

    widths, table = tmp_path / "widths.json", tmp_path / "layers.csv"
    assert main(["export", "example:digits", "--checkpoint", str(DIGITS_GAMMAS), "--out",
                 str(widths), "--table", str(table), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"wrote": [str(widths), str(table)], "round_to": 1,
                                                   "rounding_added": {"flops": 0, "params": 0, "size": 0}}
    assert json.loads(widths.read_text())["fc"] == 10  # logits: pinned at the 10 digits
    assert table.read_text().startswith("layer,kind,seed_width")


KILLED_EXPORT = textwrap.dedent("""
    import sys, time
    from pathlib import Path

    import morphscope.exporters.files as files

    marker, write = Path(sys.argv[1]), files._write_fully

    def half_then_hang(fd, data):  # the model file: write half of it, then stall
        if len(data) < 2**20:
            return write(fd, data)
        write(fd, data[: len(data) // 2])
        marker.write_text("half written")
        time.sleep(600)

    files._write_fully = half_then_hang
    from morphscope.cli.main import main
    main(sys.argv[2:])
""")


def test_export_killed_mid_write_leaves_the_previous_files(tmp_path):
    out, marker = tmp_path / "out", tmp_path / "marker"
    out.mkdir()
    (out / "widths.json").write_text('{"previous": 7}\n')
    (out / "morphed.pt2").write_bytes(b"PK previous model " * 1000)
    before = snapshot(out)
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_EXPORT, str(marker), "export", "example:digits",
         "--checkpoint", str(DIGITS_GAMMAS), "--multiplier", "1.25",
         "--out", str(out / "widths.json"), "--model-out", str(out / "morphed.pt2")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the export never reached its model write"
            time.sleep(0.05)
        # Mid-write: the child holds a temporary file in the target's own folder.
        held = [os.readlink(f"/proc/{child.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{child.pid}/fd")]
        assert any(link.startswith(f"{out}/") for link in held), held
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert snapshot(out) == before  # same names, same bytes: no partial or temporary file


def test_output_ending_in_a_separator_is_refused(capsys, tmp_path, inputs):
    # "name/" names a folder; nothing is there, and the export used to write a file "name".
    model, checkpoint = inputs
    for option in ("--out", "--table", "--model-out"):
        extra = [] if option == "--out" else ["--out", tmp_path / "w.json"]
        target = f"{tmp_path}/name/"
        line = refused_leaving_unchanged(capsys, tmp_path, *export_args(model, checkpoint, *extra,
                                                                        option, target))
        assert line == (f"morphscope: error: {option} {target}: ends in a path separator, so it "
                        "names a folder; name a file")


def test_output_that_is_a_symlink_loop_is_refused(capsys, tmp_path, inputs):
    model, checkpoint = inputs
    loop, a, b = tmp_path / "loop.json", tmp_path / "a.json", tmp_path / "b.json"
    loop.symlink_to(loop)  # loop.json -> itself
    a.symlink_to(b)
    b.symlink_to(a)  # a.json -> b.json -> a.json
    for target in (loop, a):
        line = refused_leaving_unchanged(capsys, tmp_path, *export_args(model, checkpoint, "--out", target))
        assert line == f"morphscope: error: --out {target}: a symbolic link loop; name a file or a link to one"
    assert loop.is_symlink() and a.is_symlink() and b.is_symlink()
