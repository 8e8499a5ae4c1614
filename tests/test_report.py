"""The offline comparison report (outliers/report.py) on synthetic run directories: table,
significance, bolding, broken runs, figures, the CLI, and the Welch/Student-t p-values."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from outliers import report

ROOT = Path(__file__).resolve().parents[1]
N_LAYER = 4
HEADLINE_KEYS = [key for key, _ in report.HEADLINE]
LAYER_KEYS = [f"outliers/act/{stat}/layer_{l}" for stat in ("top1", "top2", "top3", "median")
              for l in range(N_LAYER)]
CSV_KEYS = ["epoch", "step", "train/loss", "train/tokens", "val/loss", "val/ppl"] + HEADLINE_KEYS + LAYER_KEYS

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
            row = {"step": step, HEADLINE_KEYS[0]: 5 + top1_over_median * scale,
                   HEADLINE_KEYS[1]: 3 + 40 * size * scale, HEADLINE_KEYS[2]: 10 + 200 * size * scale,
                   HEADLINE_KEYS[3]: sink * scale, HEADLINE_KEYS[4]: 0.1 + 0.8 * sink * scale}
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
    lines = markdown.split("## Results", 1)[1].split("## Figures", 1)[0].splitlines()
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
    # 1.01 ± 0.014 vs 2.01 ± 0.014: t = 70.7, df = 2, p = 2e-4
    assert cell(rows, "clipped_softmax", "final val loss").endswith("\\*\\*")
    # identical sink rates: t = 0, p = 1
    assert "\\*" not in cell(rows, "clipped_softmax", "sink rate")
    # the baseline is never marked against itself
    assert all("\\*" not in c for c in rows["softmax"][2:])
    table = rendered[1]
    sink = table.cells["clipped_softmax", "outliers/attn/sink_rate"]
    assert sink.p == pytest.approx(1.0)
    assert table.cells["clipped_softmax", "convergence/final_val_loss"].p < 0.01


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
        assert png.is_file() and png.stat().st_size > 10_000
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
    failed = root / "3_sink_s2_seed=2"  # a sweep job that raised: outliers/sweep.py record_failure
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
    result = subprocess.run([sys.executable, "-m", "outliers.report", str(sweep), "--out", str(out)],
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


def test_student_t_p_values_known():
    assert report.t_two_sided_p(2.0, 10) == pytest.approx(0.07339, abs=1e-4)
    assert report.t_two_sided_p(-2.0, 10) == report.t_two_sided_p(2.0, 10)
    assert report.t_two_sided_p(2.5706, 5) == pytest.approx(0.05, abs=1e-4)  # t table, 97.5 %
    assert report.t_two_sided_p(3.1693, 10) == pytest.approx(0.01, abs=1e-4)  # t table, 99.5 %
    assert report.t_two_sided_p(0.0, 7) == pytest.approx(1.0)
    for t in (0.3, 1.0, 4.0, 30.0):  # closed forms: df=1 (Cauchy) and df=2
        assert report.t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-9)
        assert report.t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert report.t_two_sided_p(1.96, math.inf) == pytest.approx(0.05, abs=1e-4)
    assert report.t_two_sided_p(1.96, 1e5) == pytest.approx(0.05, abs=1e-4)
    for t, df in ((0.5, 3.3), (2.2, 5.52), (6.0, 17.9), (1.0, 150.0)):
        assert report.t_two_sided_p(t, df) == pytest.approx(_p_by_integration(t, df), abs=1e-9)


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
    assert report.welch_t_test([1.0, 1.0], [1.0, 1.0])[2] == 1.0
    assert report.welch_t_test([1.0, 1.0], [2.0, 2.0])[2] == 0.0
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
