"""The per-run CSV (outlier_lab/report/run_table.py): a sweep written to it and read back gives
the report the same table, marks and comparisons as the run directories; the last values of the
chosen curves are kept; a file that is not a per-run CSV is one line, exit status 1."""

from __future__ import annotations

import pandas as pd
import pytest

from outlier_lab import report
from outlier_lab.report.cli import read_inputs
from outlier_lab.report.notes import comparisons_section
from outlier_lab.report.render import markdown_table
from outlier_lab.report.run_table import LAST, RunTableError, read_runs_csv, runs_frame, write_runs_csv
from outlier_lab.report.table import build_table, group_runs
from tests.test_report import FIRST_TOKEN, VARIANTS, make_sweep


def _table(runs):
    table = build_table(group_runs(runs, "softmax"), "softmax")
    return markdown_table(table), "\n".join(comparisons_section(table))


def test_a_sweep_read_back_from_its_csv_gives_the_same_table(tmp_path):
    sweep = make_sweep(tmp_path)
    runs = report.load_runs([sweep])
    path = write_runs_csv(runs, tmp_path / "runs.csv", last=[FIRST_TOKEN])
    back = read_runs_csv(path)
    assert [(r.variant, r.seed, r.complete) for r in back] == sorted(
        [(r.variant, r.seed, r.complete) for r in runs], key=lambda t: (t[0], t[1]))
    # the tokens columns censor the runs that missed a target at tokens_done: it must survive
    assert {r.name: r.tokens_done for r in back} == {r.name: r.tokens_done for r in runs}
    assert _table(back) == _table(runs)


def test_the_last_value_of_a_chosen_curve_is_kept_and_others_are_not(tmp_path):
    sweep = make_sweep(tmp_path)
    runs = report.load_runs([sweep])
    frame = runs_frame(runs, last=[FIRST_TOKEN])
    assert [c for c in frame.columns if c.startswith(LAST)] == [LAST + FIRST_TOKEN]
    # write_metrics: the first-token share at the last probe (step 99, scale 1) is 0.1 + 0.8 * sink
    complete = frame[frame.steps_done == frame.max_steps].set_index(["variant", "seed"])
    for variant, spec in VARIANTS.items():
        for seed, sink in enumerate(spec["sink"]):
            assert complete.loc[(variant, seed), LAST + FIRST_TOKEN] == pytest.approx(0.1 + 0.8 * sink)
    # the crashed run stopped at step 60: its last probe is step 50 (scale 0.1 + 0.9 * 50/99)
    crashed = frame[frame.steps_done < frame.max_steps].iloc[0]
    assert crashed[LAST + FIRST_TOKEN] == pytest.approx(0.1 + 0.8 * 0.6 * (0.1 + 0.9 * 50 / 99))


def test_the_cli_reads_a_csv_as_it_reads_directories(tmp_path):
    sweep = make_sweep(tmp_path)
    csv = tmp_path / "runs.csv"
    assert report.main([str(sweep), "--out", str(tmp_path / "a"), "--runs-csv", str(csv)]) == 0
    assert report.main([str(csv), "--out", str(tmp_path / "b")]) == 0
    table_a = (tmp_path / "a" / "report.md").read_text().split("## Results", 1)[1].split("## Figures")[0]
    table_b = (tmp_path / "b" / "report.md").read_text().split("## Results", 1)[1].split("## Figures")[0]
    assert table_a == table_b
    assert "None: the runs were read from per-run CSVs" in (tmp_path / "b" / "report.md").read_text()
    assert not list((tmp_path / "b").glob("*.png"))
    assert len(read_inputs([sweep, csv])) == 2 * len(report.load_runs([sweep]))


def test_a_file_that_is_not_a_per_run_csv_is_one_line(tmp_path, capsys):
    other = tmp_path / "other.csv"
    pd.DataFrame({"variant": ["softmax"], "x": [1.0]}).to_csv(other, index=False)
    with pytest.raises(RunTableError, match="not a per-run CSV .*missing column"):
        read_runs_csv(other)
    assert report.main([str(other), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().out
    assert "not a per-run CSV" in err and "Traceback" not in err
    assert report.main([str(tmp_path / "missing.csv")]) == 1


def test_any_logged_column_can_be_kept_and_a_resumed_runs_later_row_wins(tmp_path):
    """--last reads metrics.csv itself: a column the report never draws is kept too, and a step
    logged twice (a run resumed from a checkpoint) takes its later value."""
    sweep = make_sweep(tmp_path)
    runs = [r for r in report.load_runs([sweep]) if r.complete]
    path = runs[0].path / "metrics.csv"
    frame = pd.read_csv(path)
    frame["outliers/domain/dormant/scale/layer_0"] = [0.5 if s == 99 else float("nan") for s in frame.step]
    resumed = pd.DataFrame({"step": [80, 99], "outliers/domain/dormant/scale/layer_0": [0.9, 0.25]})
    pd.concat([frame, resumed]).to_csv(path, index=False)
    row = runs_frame(runs[:1], last=["outliers/domain/*/layer_0"]).iloc[0]
    assert row[LAST + "outliers/domain/dormant/scale/layer_0"] == 0.25


def test_a_sweeps_cost_spans_its_first_config_to_its_last_summary(tmp_path):
    import os

    from outlier_lab.report.run_table import sweep_cost

    sweep = make_sweep(tmp_path)
    runs = report.load_runs([sweep])
    for i, path in enumerate(sorted(sweep.glob("*/*/.hydra/config.yaml"))):
        os.utime(path, (1000 + i, 1000 + i))
    for i, path in enumerate(sorted(sweep.glob("*/*/summary.json"))):
        os.utime(path, (1500 + 60 * i, 1500 + 60 * i))
    for run in runs:
        run.summary["convergence/train_seconds"] = 10.0 if run.variant == "softmax" else 20.0
    cost = sweep_cost(sweep / "2026-11-23", [r for r in runs])
    assert cost["wall_s"] == 1500 + 60 * 3 - 1000  # 4 summaries (the crashed run has none), 5 configs
    assert (cost["jobs"], cost["complete"]) == (5, 4)
    assert cost["train_s_mean"] == pytest.approx((3 * 10 + 2 * 20) / 5)
