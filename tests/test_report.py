"""The offline comparison report (outlier_lab/report/) on synthetic run directories: table,
significance, bolding, broken runs, figures, the CLI, the columns and panels taken from the
metric declarations, and the tests against the baseline (Welch, Fisher with Clopper-Pearson,
log-rank with censoring, Mann-Whitney, the bootstrap, Holm's correction)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from outlier_lab import report
from outlier_lab.metrics import registry

ROOT = Path(__file__).resolve().parents[1]
N_LAYER = 4
TOP1, KURTOSIS, INF_NORM, SINK, FIRST_TOKEN = (
    "outliers/act/top1_over_median/max", "outliers/act/avg_kurtosis", "outliers/act/max_inf_norm",
    "outliers/attn/sink_rate", "outliers/attn/first_token_share/max")
PANEL_KEYS = [m.key for m in report.panel_metrics()]
LAYER_KEYS = [f"outliers/act/{stat}/layer_{l}" for stat in ("top1", "top2", "top3", "median")
              for l in range(N_LAYER)]
CSV_KEYS = ["epoch", "step", "train/loss", "train/tokens", "val/loss", "val/ppl"] + PANEL_KEYS + LAYER_KEYS

# Per variant: final loss, top1/median, sink rate per seed. softmax converges better; clipped_softmax
# has far smaller outliers; the sink rates are identical (no significance either way).
VARIANTS = {
    "softmax": dict(loss=[1.0, 1.02], top1_over_median=[500.0, 700.0], sink=[0.5, 0.7],
                    tokens={"2.5": [1e5, 1.2e5], "2": [2e5, 2.4e5], "1.5": [4e5, 5e5]}),
    "clipped_softmax": dict(loss=[2.0, 2.02], top1_over_median=[20.0, 30.0], sink=[0.5, 0.7],
                            tokens={"2.5": [3e5, 3.3e5], "2": [6e5, None], "1.5": [None, None]}),
}


def write_config(run_dir: Path, variant: str, seed: int, max_steps: int = 100) -> None:
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(
        "model:\n  name: nano\n  attention: ${attention}\n"
        f"attention:\n  name: {variant}\n  backend: auto\n"
        f"trainer:\n  max_steps: {max_steps}\n"
        f"seed: {seed}\nrun_name: ${{attention.name}}-${{model.name}}-s${{seed}}\n")


def write_metrics(run_dir: Path, final_loss: float, top1_over_median: float, sink: float,
                  last_step: int = 99, spread: float = 0.0) -> None:
    """Lightning-style sparse metrics.csv: train rows every 10 steps, val every 25, outliers every 50."""
    rows = []
    for step in range(0, last_step + 1):
        frac = step / 99
        if step % 10 == 9 or step == 0:
            rows.append({"epoch": 0, "step": step, "train/loss": final_loss + 3.5 * (1 - frac) + 0.15,
                         "train/tokens": 4096 * (step + 1)})
        if step % 25 == 24 or step == 0:
            loss = final_loss + (3.0 + 0.4 * spread) * (1 - frac) ** 2
            rows.append({"epoch": 0, "step": step, "val/loss": loss, "val/ppl": math.exp(loss)})
        if step in (0, 50, 99):
            scale = 0.1 + 0.9 * frac
            size = top1_over_median / 500  # the outlier-prone variant has larger everything
            row = {"step": step, TOP1: 5 + top1_over_median * scale,
                   KURTOSIS: 3 + 40 * size * scale, INF_NORM: 10 + 200 * size * scale,
                   SINK: sink * scale, FIRST_TOKEN: 0.1 + 0.8 * sink * scale}
            for l in range(N_LAYER):
                median = 0.5 + 0.1 * l
                top1 = median * (5 + top1_over_median * scale * (l + 1) / N_LAYER)
                row.update({f"outliers/act/median/layer_{l}": median, f"outliers/act/top1/layer_{l}": top1,
                            f"outliers/act/top2/layer_{l}": top1 * 0.7, f"outliers/act/top3/layer_{l}": top1 * 0.5})
            rows.append(row)
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_KEYS)
        writer.writeheader()
        writer.writerows(rows)


def write_summary(run_dir: Path, values: dict) -> None:
    (run_dir / "summary.json").write_text(json.dumps(values, indent=2))


def make_sweep(root: Path) -> Path:
    """2 variants x 2 seeds of complete runs plus a crashed softmax seed 2, in a Hydra-like sweep
    layout (root/<date>/<job>/...). No summary has compress/prune50 (its column must go)."""
    sweep = root / "sweep"
    job = 0
    for variant, spec in VARIANTS.items():
        for seed in range(2):
            run_dir = sweep / "2026-11-23" / f"{job}_{variant}-nano-s{seed}"
            job += 1
            run_dir.mkdir(parents=True)
            loss, top1, sink = spec["loss"][seed], spec["top1_over_median"][seed], spec["sink"][seed]
            write_config(run_dir, variant, seed)
            write_metrics(run_dir, loss, top1, sink, spread=seed)
            summary = {
                "convergence/final_val_loss": loss, "convergence/final_val_ppl": math.exp(loss),
                "convergence/val_loss_auc": loss + 1.0 + 0.01 * seed,
                "outliers/act/top1_over_median/max": top1, "outliers/act/avg_kurtosis": 40.0 + seed,
                "outliers/act/max_inf_norm": 200.0 + 10 * seed, "outliers/attn/sink_rate": sink,
                "outliers/attn/first_token_share/max": 0.9 - 0.01 * seed,
                "compress/fp/ppl": math.exp(loss), "compress/w8a8/ppl_ratio": 1.5 - 0.1 * seed,
                "compress/w8_absmax/ppl_ratio": 1.01, "emergence/outliers/attn/sink_rate": None,
            }
            summary.update({f"convergence/tokens_to_{x}": values[seed] for x, values in spec["tokens"].items()})
            write_summary(run_dir, summary)
    crashed = sweep / "2026-11-23" / f"{job}_softmax-nano-s2"
    crashed.mkdir(parents=True)
    write_config(crashed, "softmax", 2)
    write_metrics(crashed, 1.3, 600.0, 0.6, last_step=60)
    return sweep


def results_rows(markdown: str) -> dict[str, list[str]]:
    """{variant: cells} of the results table, and the header under the key "header"."""
    lines = markdown.split("## Results", 1)[1].split("## Figures", 1)[0].split("### Comparisons", 1)[0].splitlines()
    table = [line for line in lines if line.startswith("|")]
    split = lambda line: [cell.strip() for cell in line.strip("|").split(" | ")]  # noqa: E731
    rows = {"header": split(table[0])}
    for line in table[2:]:
        cells = split(line)
        rows[cells[0].replace(" (baseline)", "")] = cells
    return rows


def cell(rows: dict, variant: str, header_prefix: str) -> str:
    index = next(i for i, h in enumerate(rows["header"]) if h.startswith(header_prefix))
    return rows[variant][index]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    sweep = make_sweep(tmp)
    path, table, runs = report.write_report([sweep], tmp / "out", baseline="softmax")
    return path, table, runs, path.read_text()


def test_table_has_one_row_per_variant_with_mean_std(rendered):
    _, table, _, text = rendered
    rows = results_rows(text)
    assert set(rows) == {"header", "softmax", "clipped_softmax"}
    for variant in ("softmax", "clipped_softmax"):
        assert "±" in cell(rows, variant, "final val loss")
        assert cell(rows, variant, "seeds").startswith("2")
    assert cell(rows, "softmax", "seeds") == "2 (+1 broken)"
    assert cell(rows, "softmax", "final val loss") == "**1.01 ± 0.014**"
    assert "(baseline)" in text.split("| softmax", 1)[1].split("|", 1)[0]


def test_best_value_is_bold_in_the_right_row(rendered):
    rows = results_rows(rendered[3])
    # final loss: softmax is lower (better)
    assert cell(rows, "softmax", "final val loss").startswith("**")
    assert not cell(rows, "clipped_softmax", "final val loss").startswith("**")
    # top1/median: clipped_softmax has the smaller outliers
    assert cell(rows, "clipped_softmax", "top1/median").startswith("**")
    assert not cell(rows, "softmax", "top1/median").startswith("**")


def test_significance_marks_only_for_real_differences(rendered):
    rows = results_rows(rendered[3])
    table = rendered[1]
    family = [c.comparison for c in table.cells.values() if c.comparison is not None and c.comparison.tested]
    # 1.01 ± 0.014 vs 2.01 ± 0.014: t = 70.7, df = 2, p = 2e-4; Holm over the family: still < 0.01
    loss = table.cells["clipped_softmax", "convergence/final_val_loss"].comparison
    assert loss.p < 0.01 and loss.p_holm == pytest.approx(len(family) * loss.p) and loss.p_holm < 0.01
    assert cell(rows, "clipped_softmax", "final val loss").endswith("\\*\\*ᵗ")
    # sink rates 0.5 and 0.7 on both sides: one run above 0.5 of two on each side, Fisher's p = 1
    assert cell(rows, "softmax", "sink rate > 0.5") == "1/2 [0.013, 0.99]"
    assert cell(rows, "clipped_softmax", "sink rate > 0.5") == "1/2 [0.013, 0.99]"
    sink = table.cells["clipped_softmax", "outliers/attn/sink_rate"]
    assert sink.comparison.test == "fisher" and sink.p == pytest.approx(1.0)
    # the baseline is never marked against itself
    assert all("\\*" not in c for c in rows["softmax"][2:])
    assert "Holm's family: the " + str(len(family)) + " comparisons" in rendered[3]


def test_crashed_run_is_listed_and_the_others_render(rendered):
    _, _, runs, text = rendered
    assert len(runs) == 5 and sum(r.complete for r in runs) == 4
    broken = text.split("## Broken runs", 1)[1]
    assert "softmax-nano-s2" in broken and "no summary.json" in broken
    assert broken.count("\n- ") == 1  # only the crashed run
    run_list = text.split("## Runs", 1)[1].split("## Broken runs", 1)[0]
    assert run_list.count("| complete |") == 4
    assert "| 60/100 | crashed/unfinished |" in run_list


def test_absent_columns_dropped_and_tokens_target_chosen(rendered):
    _, table, _, text = rendered
    header = results_rows(text)["header"]
    assert not any("prune50" in h for h in header)
    assert "prune50" not in text
    assert {"W8A8 ppl ratio", "W8 ppl ratio", "final ppl", "val-loss AUC"} <= set(header)
    # 1.5 is never reached by clipped_softmax, 2 is reached by one of its runs
    assert table.tokens_target == "2"
    assert "tokens to val loss ≤ 2" in header
    rows = results_rows(text)
    assert cell(rows, "clipped_softmax", "tokens to") == "600k (1/2)"
    assert cell(rows, "softmax", "tokens to").startswith("**220k ± 28k")


def test_figures_exist_and_are_linked(rendered):
    path, _, _, text = rendered
    for name in report.FIGURES:
        png = path.parent / f"{name}.png"
        assert png.is_file()  # what it draws: tests/test_report_figures.py
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name}.png)" in text


def test_broken_inputs_never_crash(tmp_path):
    root = tmp_path / "broken"
    bad_cfg = root / "bad_config"
    (bad_cfg / ".hydra").mkdir(parents=True)
    (bad_cfg / ".hydra" / "config.yaml").write_text("attention: [unclosed\n  : :")
    write_metrics(bad_cfg, 1.5, 100.0, 0.2, last_step=30)
    no_metrics = root / "no_metrics"
    write_config(no_metrics, "sink", 0)
    write_summary(no_metrics, {"convergence/final_val_loss": 1.4, "outliers/attn/sink_rate": None})
    bad_json = root / "bad_json"
    write_config(bad_json, "sink", 1)
    (bad_json / "metrics.csv").write_text("epoch,step,train/loss\n0,0,5.0\n0,1,4.0e")  # truncated mid-number
    (bad_json / "summary.json").write_text("{not json")
    no_name = root / "deep" / "er" / "no_attention"  # depth 3
    (no_name / ".hydra").mkdir(parents=True)
    (no_name / ".hydra" / "config.yaml").write_text("seed: ${oc.env:NOPE_NOT_SET}\nmodel: {}\n")
    (no_name / "metrics.csv").write_text("")
    failed = root / "3_sink_s2_seed=2"  # a sweep job that raised: outlier_lab/sweep.py record_failure
    write_config(failed, "sink", 2)
    write_metrics(failed, 1.6, 50.0, 0.1, last_step=20)
    (failed / "FAILED").write_text("Traceback (most recent call last):\n  ...\nValueError: loss is NaN at step 21\n")
    too_deep = root / "a" / "b" / "c" / "run"
    write_config(too_deep, "softmax", 0)

    path, table, runs, = report.write_report([root], tmp_path / "out")[:3]
    text = path.read_text()
    by_name = {r.path.name: r for r in runs}
    assert set(by_name) == {"bad_config", "no_metrics", "bad_json", "no_attention", "3_sink_s2_seed=2"}
    assert by_name["3_sink_s2_seed=2"].status == "failed"
    assert "job failed: ValueError: loss is NaN at step 21" in by_name["3_sink_s2_seed=2"].problems
    assert any(p.startswith("unreadable config") for p in by_name["bad_config"].problems)
    assert by_name["bad_config"].variant == "unknown"
    assert by_name["no_metrics"].complete and "no metrics.csv" in by_name["no_metrics"].problems
    assert any(p.startswith("unreadable summary.json") for p in by_name["bad_json"].problems)
    assert by_name["bad_json"].steps_done == 1
    assert "config has no attention.name" in by_name["no_attention"].problems
    assert by_name["no_attention"].seed is None
    for name in by_name:
        assert f"{name}` (" in text.split("## Broken runs", 1)[1]
    # no_metrics is the only complete run: a one-run table, no bold (nothing to compare), no test
    rows = results_rows(text)
    assert cell(rows, "sink", "final val loss") == "1.4 (n=1)"
    assert cell(rows, "sink", "seeds") == "1 (+2 broken)"
    assert "| 20/100 | failed |" in text
    assert not any("sink rate" in h for h in rows["header"])  # null in the only summary: dropped
    assert "no run of `softmax` was found" in text
    for name in report.FIGURES:
        assert (path.parent / f"{name}.png").stat().st_size > 0


def test_cli_writes_report(tmp_path):
    sweep = make_sweep(tmp_path)
    out = tmp_path / "cli-out"
    result = subprocess.run([sys.executable, "-m", "outlier_lab.report", str(sweep), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (out / "report.md").is_file()
    assert str(out / "report.md") in result.stdout.replace("\n", "")
    assert "±" in result.stdout and "clipped_softmax" in result.stdout
    assert all((out / f"{name}.png").stat().st_size > 0 for name in report.FIGURES)


def test_cli_default_out_and_empty_dir(tmp_path):
    sweep = make_sweep(tmp_path)
    assert report.main([str(sweep)]) == 0
    assert (sweep / "report" / "report.md").is_file()
    assert report.main([str(sweep)]) == 0  # the report folder is not mistaken for a run
    assert report.main([str(tmp_path / "empty")]) == 1


# ----------------------------------------------------------------------------- statistics

def _t_pdf(x: float, df: float) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def _p_by_integration(t: float, df: float, n: int = 4000) -> float:
    """Two-sided p = 1 - 2 * integral_0^|t| pdf, by Simpson's rule: independent of the beta function."""
    h = abs(t) / n
    total = _t_pdf(0, df) + _t_pdf(abs(t), df)
    total += sum((4 if i % 2 else 2) * _t_pdf(i * h, df) for i in range(1, n))
    return 1 - 2 * total * h / 3


def test_welch_textbook_and_closed_forms():
    # Wikipedia, "Welch's t-test", example 1 (published: t = -2.46, df = 25.0, p = 0.021)
    a1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    a2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    t, df, p = report.welch_t_test(a1, a2)
    assert t == pytest.approx(-2.46, abs=5e-3) and df == pytest.approx(25.0, abs=0.05)
    assert p == pytest.approx(0.021, abs=5e-4) and report.significance_mark(p) == "*"
    assert p == pytest.approx(_p_by_integration(t, df), abs=1e-9)
    assert report.welch_t_test(a2, a1)[2] == pytest.approx(p, rel=1e-12)
    # one side without spread, two values each: df = 1 exactly, the Cauchy distribution
    for shift in (0.3, 1.0, 4.0, 30.0):
        t, df, p = report.welch_t_test([-1.0, 1.0], [shift, shift])
        assert t == pytest.approx(-shift) and df == pytest.approx(1.0)
        assert p == pytest.approx(1 - 2 / math.pi * math.atan(shift), rel=1e-9)
    assert report.welch_t_test([1.0, 2.0], [1.0, 2.0])[2] == pytest.approx(1.0)
    assert math.isnan(report.welch_t_test([1.0, math.nan], [1.0, 2.0])[2])


def test_welch_by_hand():
    # a: mean 2.5, var 5/3; b: mean 6, var 10. se^2 = 5/12 + 2 = 29/12, t = -3.5 / sqrt(29/12),
    # df = (29/12)^2 / ((5/12)^2 / 3 + 2^2 / 4) = 841 * 3 / 457
    t, df, p = report.welch_t_test([1, 2, 3, 4], [2, 4, 6, 8, 10])
    assert t == pytest.approx(-3.5 / math.sqrt(29 / 12), rel=1e-12)
    assert df == pytest.approx(841 * 3 / 457, rel=1e-12)
    assert p == pytest.approx(_p_by_integration(t, df), abs=1e-9)
    assert 0.05 < p < 0.1 and report.significance_mark(p) == ""
    # equal variances and sizes: Welch's df is 2n - 2 and t is Student's
    t, df, p = report.welch_t_test([1.0, 1.02], [2.0, 2.02])
    assert df == pytest.approx(2.0) and t == pytest.approx(-1 / math.sqrt(0.0002), rel=1e-9)
    assert p == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), rel=1e-6)
    assert report.significance_mark(p) == "**"
    # no spread on either side: no p-value (it used to be 1 for equal and 0 for different means)
    assert math.isnan(report.welch_t_test([1.0, 1.0], [1.0, 1.0])[2])
    assert math.isnan(report.welch_t_test([1.0, 1.0], [2.0, 2.0])[2])
    with pytest.raises(ValueError):
        report.welch_t_test([1.0], [1.0, 2.0])
    assert report.significance_mark(0.03) == "*" and report.significance_mark(None) == ""


def test_format_number():
    assert report.format_number(1.0123456) == "1.012"
    assert report.format_number(123456.0) == "1.235e5"
    assert report.format_number(0.0001234) == "1.234e-4"
    assert report.format_number(2.4e5, "tokens") == "240k"
    assert report.format_number(1.5e6, "tokens") == "1.5M"
    assert report.format_number(math.inf) == "inf"


# ----------------------------------------------------------------------------- golden table

def make_golden_sweep(root: Path) -> Path:
    """3 variants: softmax 2 seeds (+ a crashed one), gated 3 seeds (one without a w4 ratio),
    slot_bias 1 seed; declared protocols with and without a header, one nobody declares."""
    sweep = root / "golden"
    specs = [("softmax", 0, 1.0), ("softmax", 1, 1.1), ("gated", 0, 1.2), ("gated", 1, 1.25),
             ("gated", 2, 1.3), ("slot_bias", 0, 1.5)]
    for job, (variant, seed, loss) in enumerate(specs):
        run_dir = sweep / f"{job}_{variant}_s{seed}"
        write_config(run_dir, variant, seed)
        write_metrics(run_dir, loss, 100.0 * loss, 0.5, last_step=99)
        out = 1000.0 / loss ** 4
        summary = {
            "convergence/final_val_loss": loss, "convergence/final_val_ppl": math.exp(loss),
            "convergence/val_loss_auc": 2 * loss + 0.01 * seed, "convergence/tokens_to_2": 2e5 * loss,
            "convergence/tokens_to_1.1": 1.5e6 if loss <= 1.1 else None,
            "convergence/tokens_to_1.4": 1e6 * loss if loss < 1.4 or variant == "slot_bias" else None,
            TOP1: out, "outliers/down/top1_over_median/max": 2 * out + seed, KURTOSIS: out / 10,
            INF_NORM: 123456.0 + seed, SINK: 0.0 if variant == "slot_bias" else 0.6 + 0.05 * seed,
            FIRST_TOKEN: 0.9, "compress/fp/ppl": math.exp(loss),
            "compress/w8a8/ppl_ratio": 1.0 + 0.001 * seed, "compress/w8_absmax/ppl_ratio": 1.00004,
            "compress/w4_per_channel/ppl_ratio": 1.1 + loss / 10, "compress/clip_p99.9/ppl_ratio": 1.0002,
        }
        if (variant, seed) == ("gated", 2):
            summary["compress/w4_per_channel/ppl_ratio"] = None
        if variant == "softmax":
            summary["compress/a_custom/ppl_ratio"] = 1.5 + 0.25 * seed  # undeclared: still data
        write_summary(run_dir, summary)
    crashed = sweep / "6_softmax_s2"
    write_config(crashed, "softmax", 2)
    write_metrics(crashed, 1.3, 600.0, 0.6, last_step=60)
    return sweep


GOLDEN = r"""
## Results

Mean ± std over the complete runs of each variant (std with ddof=1; a single run shows its value and "(n=1)"; "(k/n)": only k of the n complete runs have that value); a column "X > θ" counts the runs whose value is above θ instead. Lower is better in every column; **bold** marks the best mean (or fraction) of each column. Crashed/unfinished runs are left out of the table (see the seeds column and the list below).

| variant | seeds | final val loss | final ppl | tokens to val loss ≤ 1.4 | val-loss AUC | top1/median (max) | down-proj input top1/median | avg kurtosis | max inf-norm | sink rate > 0.5 | first-token share | W8A8 ppl ratio | W8 ppl ratio | clip_p99.9 ppl ratio | w4_per_channel ppl ratio | a_custom ppl ratio |
|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| softmax (baseline) | 2 (+1 broken) | **1.05 ± 0.071** | **2.861 ± 0.2** | **1.05M ± 71k** | **2.105 ± 0.15** | 841.5 ± 224 | 1684 ± 448 | 84.15 ± 22 | 1.235e5 ± 0.71 | 2/2 [0.16, 1] | 0.9 ± 0 | 1 ± 7.1e-4 | 1 ± 0 | 1 ± 0 | **1.205 ± 0.0071** | 1.625 ± 0.18 |
| gated | 3 | 1.25 ± 0.05 | 3.493 ± 0.17 | 1.25M ± 50k | 2.51 ± 0.11 | 414 ± 66 | 829 ± 131 | 41.4 ± 6.6 | 1.235e5 ± 1 | 3/3 [0.29, 1] | 0.9 ± 0 | 1.001 ± 0.001 | 1 ± 0 | 1 ± 0 | 1.223 ± 0.0035 (2/3) | — |
| slot_bias | 1 | 1.5 (n=1) | 4.482 (n=1) | 1.5M (n=1) | 3 (n=1) | **197.5 (n=1)** | **395.1 (n=1)** | **19.75 (n=1)** | **1.235e5 (n=1)** | **0/1 [0, 0.97]** | 0.9 (n=1) | **1 (n=1)** | 1 (n=1) | 1 (n=1) | 1.25 (n=1) | — |

Significance against the baseline `softmax`, two-sided, only where both have at least 2 runs, by each column's test: ᵗ Welch's t-test; ᶠ Fisher's exact test on the runs whose value is above the column's threshold ("X > θ", declared with the metric; the cell: yes / runs [exact Clopper-Pearson 95% interval]); ˡ log-rank test on the tokens to the target, a run that did not reach it censored at its last step. Marks are Holm-corrected over the whole table (family-wise α = 0.05): \* corrected p < 0.05, \*\* corrected p < 0.01. No variance (neither group varies): no test, no mark.

Holm's family: the 11 comparisons with a p-value in this table: gated × 11 (final val loss ᵗ, final ppl ᵗ, tokens to val loss ≤ 1.4 ˡ, val-loss AUC ᵗ, top1/median (max) ᵗ, down-proj input top1/median ᵗ, avg kurtosis ᵗ, max inf-norm ᵗ, sink rate > 0.5 ᶠ, W8A8 ppl ratio ᵗ, w4_per_channel ppl ratio ᵗ).

No test: gated × first-token share (no variance); gated × W8 ppl ratio (no variance); gated × clip_p99.9 ppl ratio (no variance).

Tokens to val loss ≤ 1.4: the lowest loss target that every variant reached in at least one run (`convergence/tokens_to_X`); the mean is over the runs that reached it.

Columns: final val loss = `convergence/final_val_loss`; final ppl = `convergence/final_val_ppl`; tokens to val loss ≤ 1.4 = `convergence/tokens_to_1.4`; val-loss AUC = `convergence/val_loss_auc`; top1/median (max) = `outliers/act/top1_over_median/max`; down-proj input top1/median = `outliers/down/top1_over_median/max`; avg kurtosis = `outliers/act/avg_kurtosis`; max inf-norm = `outliers/act/max_inf_norm`; sink rate > 0.5 = `outliers/attn/sink_rate`; first-token share = `outliers/attn/first_token_share/max`; W8A8 ppl ratio = `compress/w8a8/ppl_ratio`; W8 ppl ratio = `compress/w8_absmax/ppl_ratio`; clip_p99.9 ppl ratio = `compress/clip_p99.9/ppl_ratio`; w4_per_channel ppl ratio = `compress/w4_per_channel/ppl_ratio`; a_custom ppl ratio = `compress/a_custom/ppl_ratio`.

### Comparisons with the baseline

Each cell against its baseline. p: the column's test, uncorrected; Holm p: corrected over the table (this gives the mark). Beside Welch's test, as checks that give no mark: Mann-Whitney U's two-sided p (uncorrected) and the difference of means with its 95% bootstrap interval (BCa, groups resampled separately, seed 0; with a handful of seeds it is too narrow: it cannot see beyond the seeds' own spread). For Fisher's and the log-rank test: the counts.

| variant | column | test | p | Holm p | Mann-Whitney p | difference [bootstrap interval] or counts |
|:---|:---|:---|---:|---:|---:|---:|
| gated | final val loss | Welch's t-test | 0.094 | 0.847 | 0.200 | +0.2 [0.1167, 0.2833] |
| gated | final ppl | Welch's t-test | 0.069 | 0.690 | 0.200 | +0.632 [0.3727, 0.8914] |
| gated | tokens to val loss ≤ 1.4 | log-rank test | 0.039 | 0.428 | — | reached 3/3 against 2/2 |
| gated | val-loss AUC | Welch's t-test | 0.097 | 0.847 | 0.200 | +0.405 [0.2633, 0.5833] |
| gated | top1/median (max) | Welch's t-test | 0.210 | 1.000 | 0.200 | -427.5 [-630, -225] |
| gated | down-proj input top1/median | Welch's t-test | 0.210 | 1.000 | 0.200 | -854.5 [-1258, -450.6] |
| gated | avg kurtosis | Welch's t-test | 0.210 | 1.000 | 0.200 | -42.75 [-63, -22.5] |
| gated | max inf-norm | Welch's t-test | 0.561 | 1.000 | 0.761 | +0.5 [-0.6667, 1.667] |
| gated | sink rate > 0.5 | Fisher's exact test | 1.000 | 1.000 | — | 3/3 against 2/2 |
| gated | first-token share | Welch's t-test | no variance | — | — | +0 |
| gated | W8A8 ppl ratio | Welch's t-test | 0.561 | 1.000 | 0.761 | +0.0005 [-0.0006667, 0.001667] |
| gated | W8 ppl ratio | Welch's t-test | no variance | — | — | +0 |
| gated | clip_p99.9 ppl ratio | Welch's t-test | no variance | — | — | +0 |
| gated | w4_per_channel ppl ratio | Welch's t-test | 0.129 | 0.903 | 0.333 | +0.0175 [0.01, 0.025] |


## Figures

### Loss curves

![Validation loss vs step](loss_curves.png)

### Outlier metrics over training

![Outlier metrics vs step](outliers_vs_step.png)

### Growth of the first-token residual peak

![Residual-state peak vs step, log-log, per variant](peak_growth.png)

### Per-layer profile

![Per-layer top-1 and median |h|](layer_profile.png)

### First-token residual peak and value drain per layer

![Residual-state peak and value-state drain of the first token per layer](extreme_tokens.png)

## Runs

| run | variant | model | seed | steps | status |
|:---|:---|:---|---:|---:|:---|
| `golden/0_softmax_s0` | softmax | nano | 0 | 100/100 | complete |
| `golden/1_softmax_s1` | softmax | nano | 1 | 100/100 | complete |
| `golden/2_gated_s0` | gated | nano | 0 | 100/100 | complete |
| `golden/3_gated_s1` | gated | nano | 1 | 100/100 | complete |
| `golden/4_gated_s2` | gated | nano | 2 | 100/100 | complete |
| `golden/5_slot_bias_s0` | slot_bias | nano | 0 | 100/100 | complete |
| `golden/6_softmax_s2` | softmax | nano | 2 | 60/100 | crashed/unfinished |

"""


def test_golden_results_and_runs(tmp_path):
    """The exact text of report.md from the table to the run list, for a fixed sweep."""
    sweep = make_golden_sweep(tmp_path)
    runs = report.load_runs([sweep])
    table = report.build_table(report.group_runs(runs, "softmax"), "softmax")
    text = report.markdown_report(runs, table, [sweep], "softmax")
    assert "## Results" + text.split("## Results", 1)[1].split("## Broken runs", 1)[0] == GOLDEN.lstrip("\n")


# ----------------------------------------------------------------------------- columns and panels from declarations

def _table(*summaries: dict) -> report.Table:
    """The table of complete in-memory runs of one variant, one per summary."""
    runs = [report.Run(path=Path(f"run{i}"), name=f"run{i}", variant="v",
                       summary={"convergence/final_val_loss": 1.0, **summary}) for i, summary in enumerate(summaries)]
    return report.build_table(report.group_runs(runs, "v"), "v")


def test_declared_columns_in_section_order_and_no_header_ratio_only_with_data():
    headers = [c.header for c in _table({"compress/w8a8/ppl_ratio": 1.0, "outliers/attn/sink_rate": 0.5,
                                         "convergence/final_val_ppl": 2.7}).columns]
    assert headers == ["final val loss", "final ppl", "sink rate > 0.5", "W8A8 ppl ratio"]
    # w4_per_channel is declared without a header: a column once a run has a value, not before
    assert "compress/w4_per_channel/ppl_ratio" in {m.key for m in registry.declared("compress")}
    keys = [c.key for c in _table({"compress/w4_per_channel/ppl_ratio": None}).columns]
    assert keys == ["convergence/final_val_loss"]
    column = _table({}, {"compress/w4_per_channel/ppl_ratio": 1.2}).columns[-1]
    assert (column.key, column.header) == ("compress/w4_per_channel/ppl_ratio", "w4_per_channel ppl ratio")


def test_undeclared_ratio_is_shown_after_the_declared_ones():
    table = _table({"compress/a_custom/ppl_ratio": 1.5, "compress/w4_per_channel/ppl_ratio": 1.2,
                    "compress/clip_p99.9/ppl_ratio": 1.0, "compress/prune50/ppl_ratio": 3.0})
    assert [c.header for c in table.columns][1:] == [
        "prune50 ppl ratio", "clip_p99.9 ppl ratio", "w4_per_channel ppl ratio", "a_custom ppl ratio"]
    assert table.cells["v", "compress/a_custom/ppl_ratio"].values == [1.5]


def test_a_new_declaration_is_a_column_and_a_panel(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "_METRICS", dict(registry._METRICS))  # undone after the test
    registry.declare(registry.Metric("outliers/test/new", "a new outlier measure", column="new measure",
                                     curve=True, panel=True))
    headers = [c.header for c in _table({"outliers/test/new": 3.0, "compress/w8a8/ppl_ratio": 1.0}).columns]
    assert headers == ["final val loss", "new measure", "W8A8 ppl ratio"]
    # the panel: read from metrics.csv and drawn, titled with its declared title
    run_dir = tmp_path / "run"
    write_config(run_dir, "softmax", 0)
    (run_dir / "metrics.csv").write_text("step,train/loss,outliers/test/new\n0,5,1\n9,4,2\n")
    run = report.read_run(run_dir)
    assert run.curves["outliers/test/new"][1].tolist() == [1.0, 2.0]
    groups = report.group_runs([run], "softmax")
    fig = report.make_figures(groups)["outliers_vs_step"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [m.title for m in report.panel_metrics()]
    assert titles[-1] == "a new outlier measure" and fig.axes[len(titles) - 1].get_lines()


def test_panels_follow_the_declarations():
    panels = report.panel_metrics()
    assert panels == [m for m in registry.declared() if m.panel and not m.per_domain]
    assert [m.key for m in panels][:2] == ["outliers/act/top1_over_median/max", "outliers/down/top1_over_median/max"]
    fig = report.make_figures([])["outliers_vs_step"]
    assert [ax.get_title() for ax in fig.axes[:len(panels)]] == [m.title for m in panels]


def test_an_undeclared_key_named_by_the_report_is_an_error():
    assert report.declared_key("convergence/final_val_loss") == "convergence/final_val_loss"
    with pytest.raises(KeyError, match="no module declares"):
        report.declared_key("outliers/act/no_such_metric")


def test_metrics_csv_resumed_run_later_row_wins(tmp_path):
    run_dir = tmp_path / "resumed"
    write_config(run_dir, "softmax", 0)
    (run_dir / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss,lr,outliers/act/avg_kurtosis\n"
        "0,0,5.0,,1,\n0,9,4.0,,1,\n0,9,,3.9,,7\n0,19,3.5,,1,\n"  # crashed after step 19
        "0,9,4.1,,1,\n0,19,3.4,,1,\n0,20,,3.3,,8\n")           # resumed from step 9
    run = report.read_run(run_dir)
    steps, values = run.curves["train/loss"]
    assert steps.tolist() == [0, 9, 19] and values.tolist() == [5.0, 4.1, 3.4]
    assert run.curves["val/loss"][1].tolist() == [3.9, 3.3]
    assert "lr" not in run.curves and run.curves["outliers/act/avg_kurtosis"][0].tolist() == [9, 20]
    assert run.steps_done == 20


def test_runs_are_grouped_by_every_swept_key_and_tested_within_their_setting():
    def run(variant, optim, seed, loss, extra=()):
        overrides = [f"attention={variant}", f"seed={seed}", "+experiment=x", *([f"optim={optim}"] if optim else []),
                     *extra]
        return report.Run(path=Path(f"{variant}{optim}{seed}"), name="r", variant=variant, seed=seed,
                          overrides=report.load.parse_overrides(overrides),
                          summary={"convergence/final_val_loss": loss})

    runs = [run(v, o, s, base + 0.01 * s) for v, base in (("softmax", 1.0), ("explicit_scale", 2.0))
            for o in ("adamw", "sgd") for s in range(3)]
    runs += [run("differential", "adamw", s, 3.0, extra=("model.n_head=2",)) for s in range(2)]
    groups = report.group_runs(runs, "softmax")
    labels = [g.label for g in groups]
    assert labels[:2] == ["softmax (optim=adamw)", "explicit_scale (optim=adamw)"]
    assert "differential (model.n_head=2, optim=adamw)" in labels and "softmax (optim=sgd)" in labels
    table = report.build_table(groups, "softmax")
    # explicit_scale with sgd is tested against softmax with sgd (same setting), not with adamw
    sgd = next(g for g in groups if g.label == "explicit_scale (optim=sgd)")
    assert table.baseline_of(sgd).label == "softmax (optim=sgd)"
    assert table.cells[sgd.label, "convergence/final_val_loss"].p < 0.01
    # no softmax run has the differential's setting: no test rather than a mismatched one
    diff = next(g for g in groups if g.variant == "differential")
    assert table.baseline_of(diff) is None and table.cells[diff.label, "convergence/final_val_loss"].p is None
    # the same variant and setting in two sweeps is one group
    assert len(next(g for g in groups if g.label == "softmax (optim=adamw)").runs) == 3


def test_baseline_key_value_tests_each_optimizer_against_adamw_within_its_variant():
    """--baseline optim=adamw: every group against the same variant with adamw. The sgd runs
    set optim.lr, the adamw runs leave it at the default: the default matches any value."""
    def run(variant, optim, seed, loss, extra=()):
        overrides = [f"attention={variant}", f"seed={seed}", f"optim={optim}", *extra]
        return report.Run(path=Path(f"{variant}{optim}{seed}{extra}"), name="r", variant=variant, seed=seed,
                          overrides=report.load.parse_overrides(overrides),
                          summary={"convergence/final_val_loss": loss})

    losses = {("softmax", "adamw"): 1.0, ("softmax", "muon"): 1.0, ("explicit_scale", "adamw"): 2.0,
              ("explicit_scale", "muon"): 2.5}
    runs = [run(v, o, s, base + 0.01 * s) for (v, o), base in losses.items() for s in range(3)]
    runs += [run(v, "sgd", s, 3.0 + 0.01 * s, extra=("optim.lr=0.1",)) for v in ("softmax", "explicit_scale")
             for s in range(3)]
    groups = report.group_runs(runs, "optim=adamw")
    table = report.build_table(groups, "optim=adamw")
    by_label = {g.label: g for g in groups}
    assert [g.label for g in groups][:2] == ["explicit_scale (optim=adamw)", "softmax (optim=adamw)"]
    assert table.baseline_of(by_label["explicit_scale (optim=muon)"]).label == "explicit_scale (optim=adamw)"
    assert table.baseline_of(by_label["softmax (optim=sgd, optim.lr=0.1)"]).label == "softmax (optim=adamw)"
    p = {label: table.cells[label, "convergence/final_val_loss"].p for label in by_label}
    assert p["softmax (optim=muon)"] == pytest.approx(1.0)  # identical values: no difference
    assert p["explicit_scale (optim=muon)"] < 0.01 and p["softmax (optim=sgd, optim.lr=0.1)"] < 0.01
    assert p["softmax (optim=adamw)"] is None  # the baseline is not tested against itself


# ----------------------------------------------------------------------------- tests that fit the outcome

def _runs(spec: dict[str, list[dict]]) -> list[report.Run]:
    """Complete in-memory runs: {variant: [summary per seed]} (final loss 1.0 in every run, so that its
    column has no variance and no test unless a summary sets it)."""
    return [report.Run(path=Path(f"{variant}{seed}"), name=f"{variant}{seed}", variant=variant, seed=seed,
                       summary={"convergence/final_val_loss": 1.0, **summary})
            for variant, summaries in spec.items() for seed, summary in enumerate(summaries)]


def _build(runs: list[report.Run], baseline: str = "softmax") -> tuple[report.Table, str]:
    table = report.build_table(report.group_runs(runs, baseline), baseline)
    return table, report.markdown_report(runs, table, [Path("sweep")], baseline)


def _tested(table: report.Table) -> list:
    return [c.comparison for c in table.cells.values() if c.comparison is not None and c.comparison.tested]


def test_zero_spread_groups_get_no_p_value_and_no_mark():
    loss = "convergence/final_val_loss"
    table, text = _build(_runs({"softmax": [{loss: 1.0}, {loss: 1.0}], "v": [{loss: 2.0}, {loss: 2.0}],
                                "w": [{loss: 2.0}, {loss: 2.1}]}))
    none = table.cells["v", loss].comparison
    # the old rule gave p = 0 here, a "**" from two constant groups
    assert none.note == "no variance" and math.isnan(none.p) and none.mark == ""
    assert cell(results_rows(text), "v", "final val loss") == "2 ± 0"
    assert "No test: v × final val loss (no variance)." in text
    assert "| v | final val loss | Welch's t-test | no variance | — | — |" in text
    # one group without spread is still a test (df from the other), and the only one in the family
    one = table.cells["w", loss].comparison
    # (t = 1.05 / sqrt(0.005 / 2) = 21 on df = 1: the Cauchy distribution)
    assert one.p == pytest.approx(1 - 2 / math.pi * math.atan(21), rel=1e-9)
    assert _tested(table) == [one] and one.p_holm == one.p
    assert "Holm's family: the 1 comparisons with a p-value in this table: w × 1 (final val loss ᵗ)." in text
    # tokens to a target that every run reached, each group at one time: no test either (the log-rank
    # test would give p = 0.025 from the order of two constant groups)
    key = "convergence/tokens_to_2"
    tokens = _build(_runs({"softmax": [{key: 6e5}] * 3, "v": [{key: 8e5}] * 3}))[0].cells["v", key].comparison
    assert tokens.test == "logrank" and tokens.note == "no variance" and tokens.mark == ""
    assert stats.logrank([8e5] * 3, [6e5] * 3).pvalue < 0.05


def test_a_binary_outcome_gets_clopper_pearson_and_fisher():
    # 10 seeds: the variant forms a sink (rate > 0.5) in 9, softmax in 2. The mean rates point the other
    # way (0.459 against 0.592) and Welch's test on them finds nothing: the per-run outcome is the point.
    rates = {"softmax": [1.0] * 2 + [0.49] * 8, "v": [0.51] * 9 + [0.0]}
    table, text = _build(_runs({v: [{SINK: r} for r in rs] for v, rs in rates.items()}))
    column = next(c for c in table.columns if c.key == SINK)
    assert column.header == "sink rate > 0.5" and column.test == "fisher"
    assert registry.get(SINK).binary_above == 0.5
    assert registry.get("outliers/domain/{domain}/sink_rate").binary_above == 0.5
    for variant, k in (("v", 9), ("softmax", 2)):  # Clopper-Pearson: the beta quantiles (textbook form)
        low, high = report.clopper_pearson(k, 10)
        assert (low, high) == pytest.approx((stats.beta.ppf(0.025, k, 11 - k), stats.beta.ppf(0.975, k + 1, 10 - k)))
        ci = stats.binomtest(k, 10).proportion_ci(method="exact")
        assert (low, high) == (ci.low, ci.high)
    assert report.clopper_pearson(9, 10) == pytest.approx((0.5550, 0.9975), abs=1e-4)
    # Fisher's two-sided p: the tables with the margins (11 yes of 20, 10 per side) no likelier than 9 vs 2
    prob = [math.comb(10, k) * math.comb(10, 11 - k) / math.comb(20, 11) for k in range(1, 11)]
    by_hand = sum(q for q in prob if q <= prob[9 - 1] * (1 + 1e-9))
    sink = table.cells["v", SINK].comparison
    assert sink.p == pytest.approx(by_hand, rel=1e-12) == stats.fisher_exact([[9, 1], [2, 8]]).pvalue
    assert sink.p == pytest.approx(0.005477, abs=1e-6) and sink.counts == "9/10 against 2/10"
    assert stats.ttest_ind(rates["v"], rates["softmax"], equal_var=False).pvalue > 0.05  # the mean's test: no mark
    rows = results_rows(text)
    assert cell(rows, "v", "sink rate > 0.5") == "9/10 [0.55, 1] \\*\\*ᶠ"
    assert cell(rows, "softmax", "sink rate > 0.5") == "**2/10 [0.025, 0.56]**"  # fewer sinks: the best


def test_holm_textbook_example_and_its_marks():
    # four p-values, alpha 0.05: uncorrected all four are significant; Holm compares the sorted p with
    # alpha / 4, / 3, / 2, / 1 and stops at the third (0.03 > 0.025): only 0.005 and 0.01 stay
    p = [0.01, 0.04, 0.03, 0.005]
    adjusted = report.holm(p)
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [report.significance_mark(x) for x in p] == ["*", "*", "*", "**"]
    assert [report.significance_mark(x) for x in adjusted] == ["*", "", "", "*"]
    assert report.holm([]) == [] and report.holm([0.6, 0.5]) == [1.0, 1.0]
    with pytest.raises(ValueError):
        report.holm([0.01, math.nan])
    # in a table: two variants each at Welch p = 0.034; uncorrected both marked, corrected neither
    loss = "convergence/final_val_loss"
    base, shifted = [1.0, 1.1, 1.2, 1.3], [1.25, 1.35, 1.45, 1.55]
    table, text = _build(_runs({"softmax": [{loss: x} for x in base], "a": [{loss: x} for x in shifted],
                                "b": [{loss: x} for x in shifted]}))
    for variant in ("a", "b"):
        c = table.cells[variant, loss].comparison
        assert c.p == pytest.approx(0.0338, abs=1e-4) and report.significance_mark(c.p) == "*"
        assert c.p_holm == pytest.approx(2 * c.p) and c.mark == ""
        assert "\\*" not in cell(results_rows(text), variant, "final val loss")
    assert "Holm's family: the 2 comparisons with a p-value in this table: a, b × 1 (final val loss ᵗ)." in text


def _logrank_by_hand(events_a, censored_a, events_b, censored_b) -> float:
    """The textbook log-rank test: at each event time, observed minus expected events of group a and
    the hypergeometric variance, over the runs at risk (a run censored at t is at risk at t)."""
    o_minus_e = variance = 0.0
    for t in sorted(set(events_a) | set(events_b)):
        n_a = sum(x >= t for x in list(events_a) + list(censored_a))
        n_b = sum(x >= t for x in list(events_b) + list(censored_b))
        d_a, d = events_a.count(t), events_a.count(t) + events_b.count(t)
        n = n_a + n_b
        o_minus_e += d_a - d * n_a / n
        variance += d * (n_a / n) * (n_b / n) * (n - d) / (n - 1) if n > 1 else 0.0
    return float(stats.chi2.sf(o_minus_e ** 2 / variance, 1))


def test_runs_that_miss_the_target_are_censored_not_dropped():
    key = "convergence/tokens_to_2"
    base = [100e3, 110e3, 120e3, 130e3, 140e3, 150e3]
    reached = [100e3, 120e3]  # the variant's 4 other runs stop at 200k tokens without reaching loss 2
    runs = _runs({"softmax": [{key: x} for x in base], "v": [{key: x} for x in reached] + [{}] * 4})
    for run in runs:  # 100 steps of 2000 tokens: train/tokens after the 0-indexed step 99 is 200k
        run.steps_done = 100
        run.tokens_done = report.load.tokens_done((np.array([0.0, 99.0]), np.array([2e3, 2e5])), run.steps_done)
    assert runs[-1].tokens_done == 2e5
    table, text = _build(runs)
    assert table.tokens_target == "2"
    c = table.cells["v", key].comparison
    censored = stats.CensoredData(uncensored=reached, right=[2e5] * 4)
    assert c.test == "logrank" and c.p == pytest.approx(stats.logrank(censored, base).pvalue, rel=1e-12)
    assert c.p == pytest.approx(_logrank_by_hand(reached, [2e5] * 4, base, []), rel=1e-9)
    assert c.p == pytest.approx(0.0461, abs=1e-4) and c.p_holm == c.p and c.mark == "*"
    assert c.counts == "reached 2/6 against 6/6"
    # its 2 runs that got there were quick, but 2 of 6 is not the best of the column: softmax's 6 of 6 is
    assert cell(results_rows(text), "v", "tokens to") == "110k ± 14k (2/6) \\*ˡ"
    assert cell(results_rows(text), "softmax", "tokens to") == "**125k ± 19k**"
    # the wrong versions: dropping the four runs (Welch on 2 against 6) or counting who got there (Fisher)
    assert stats.ttest_ind(reached, base, equal_var=False).pvalue > 0.3
    assert stats.fisher_exact([[2, 4], [6, 0]]).pvalue > 0.05
    # without train/tokens the end is unknown: censored after every time in the comparison, the same here
    for run in runs:
        run.tokens_done = report.load.tokens_done(None, run.steps_done)
    assert _build(runs)[0].cells["v", key].comparison.p == pytest.approx(c.p, rel=1e-12)


def test_mann_whitney_and_bootstrap_against_scipy():
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0]
    # complete separation, no ties: U = 0, and 2 of the C(10, 5) = 252 equally likely orders are as extreme
    assert report.mann_whitney(a, b) == (0.0, pytest.approx(2 / 252, rel=1e-12))
    tied_a, tied_b = [1.1, 2.3, 2.3, 4.0, 0.7], [2.3, 5.0, 6.1, 3.3]
    expected = stats.mannwhitneyu(tied_a, tied_b, alternative="two-sided")
    assert report.mann_whitney(tied_a, tied_b) == (expected.statistic, expected.pvalue)
    assert all(math.isnan(x) for x in report.mann_whitney([1.0, 1.0], [2.0, 2.0]))
    # the bootstrap: scipy's with the fixed seed, the same interval every time
    x, y = [1.2, 1.5, 0.9, 1.4, 1.1], [2.0, 2.6, 1.8, 2.2, 2.9]
    reference = stats.bootstrap((x, y), lambda p, q, axis=-1: np.mean(p, axis) - np.mean(q, axis), vectorized=True,
                                n_resamples=9999, rng=np.random.default_rng(0)).confidence_interval
    low, high = report.bootstrap_mean_difference(x, y)
    assert (low, high) == pytest.approx((reference.low, reference.high), rel=1e-12)
    assert (low, high) == report.bootstrap_mean_difference(x, y)
    assert low < np.mean(x) - np.mean(y) < high < 0
    # in the table: both are listed beside Welch's test, which gives the mark
    loss = "convergence/final_val_loss"
    table, text = _build(_runs({"softmax": [{loss: v} for v in y], "v": [{loss: v} for v in x]}))
    c = table.cells["v", loss].comparison
    assert c.mann_whitney == pytest.approx(stats.mannwhitneyu(x, y).pvalue) and c.interval == (low, high)
    assert c.p == pytest.approx(stats.ttest_ind(x, y, equal_var=False).pvalue) and c.mark == "**"
    assert c.p == pytest.approx(0.0030, abs=5e-5)
    assert "| v | final val loss | Welch's t-test | 0.003 | 0.003 \\*\\* | 0.008 | -1.08 [" in text
