"""`morphscope expand` prints a factor that `export --multiplier` reproduces exactly."""

import json
import re

from morphscope.cli.main import main
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GAMMAS = str(REPO / "examples" / "digits" / "flops_gammas.pt")


def test_the_printed_factor_fed_back_gives_the_printed_widths_within_budget(capsys, tmp_path):
    assert main(["expand", "example:digits", "--checkpoint", GAMMAS]) == 0
    text = capsys.readouterr().out
    factor, cost, budget = re.search(r"width multiplier (\S+) brings flops to ([\d,]+) \(budget ([\d,]+)\)",
                                     text).groups()
    printed = {name: int(width) for name, width in re.findall(r"^  (\S+)\s+(\d+)$", text, flags=re.M)}
    assert int(cost.replace(",", "")) <= int(budget.replace(",", ""))
    assert main(["export", "example:digits", "--checkpoint", GAMMAS, "--out", str(tmp_path / "w.json"),
                 "--multiplier", factor, "--table", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "w.json").read_text()) == printed
    rows = json.loads((tmp_path / "t.json").read_text())
    assert 2 * sum(r["expanded_macs"] for r in rows) <= int(budget.replace(",", ""))
