"""Analysis reads result tables that may be damaged (a crash mid-write elsewhere, a hand
edit): each problem is a one-line error naming the file and the command that rewrites it,
and nothing is written before every input has been read."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lopt.analysis.results import EVAL_CURVES, META_METRICS, ResultsError, read_result
from lopt.cli import main

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", "empty, not a CSV table"),
        ("step,meta_loss,grad_norm\n", "has a header but no rows"),
        ("step,loss\n1,2.0\n", "lacks column(s) meta_loss, grad_norm (has: step, loss)"),
        # cut by a crash mid-row: pandas would pad the row with NaN
        ("step,meta_loss,grad_norm\n1,0.5,2.0\n2,0.4", "its last row is cut off (no final newline)"),
    ],
    ids=["empty", "header-only", "wrong-columns", "torn-row"],
)
def test_damaged_tables_are_named_with_their_fix(tmp_path, text, expected):
    path = tmp_path / "metrics.csv"
    path.write_text(text)
    with pytest.raises(ResultsError) as info:
        read_result(path, META_METRICS)
    assert str(info.value) == f"{path}: {expected}; re-run `lopt meta-train` (snakemake reruns it once the file is removed)"
    with pytest.raises(FileNotFoundError, match="not found; re-run `lopt evaluate`"):
        read_result(tmp_path / "curves.csv", EVAL_CURVES)
    path.write_text("step,meta_loss,grad_norm,extra\n1,0.5,2.0,x\n")
    assert read_result(path, META_METRICS)["meta_loss"].tolist() == [0.5]


def test_analyze_with_an_empty_curves_file_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    root = tmp_path / "results"
    (root / "meta").mkdir(parents=True)
    pd.DataFrame({"step": [1, 2], "meta_loss": [1.0, 0.5], "grad_norm": [3.0, 2.0]}).to_csv(
        root / "meta" / "metrics.csv", index=False)
    eval_dir = root / "eval" / "digits_mlp16"
    eval_dir.mkdir(parents=True)
    for name in ("curves", "summary", "metrics"):
        (eval_dir / f"{name}.csv").write_text("")  # emptied, e.g. by a disk-full write elsewhere
    capsys.readouterr()
    assert main(["analyze", "--config", str(SMOKE), "--results", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {eval_dir / 'curves.csv'}: empty, not a CSV table; "
                   "re-run `lopt evaluate` (snakemake reruns it once the file is removed)"), err
    assert not (root / "figures").exists() and not (root / "tables").exists()
