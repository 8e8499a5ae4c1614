"""The regime search of docs/peak.md: every try of +experiment=residual_peak on softmax,
read once from its run directory into docs/peak/regime.csv (one row per try and probe step),
and the page's table and figure computed from that file.

    python train.py +experiment=residual_peak OVERRIDES... hydra.run.dir=outputs/peak_regime/NAME
    python docs/peak/regime_tries.py collect outputs/peak_regime    # -> docs/peak/regime.csv
    python docs/peak/regime_tries.py                                 # the table, and regime.png

The growth rate and the extrapolated steps are those of outlier_lab.metrics.growth, fitted to
each try's residual peak (max over layers) over the second half of its steps.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from outlier_lab.metrics.growth import power_law_fit, step_to_reach  # noqa: E402
from outlier_lab.report.load import read_metrics_csv  # noqa: E402

HERE = Path(__file__).resolve().parent
CSV = HERE / "regime.csv"
FIGURE = HERE / "regime.png"
PEAK_LAYER = "outliers/act/residual_peak/layer_"  # the peak per layer; PEAK_CURVE is their max
CURVES = {"outliers/act/residual_peak/layer_0": "peak_layer_0",
          "outliers/act/top1_over_median/max": "top1_over_median", "outliers/act/max_abs/max": "max_abs",
          "outliers/act/top_channel_initial_share": "top_channel_initial_share"}
PRESET = "+experiment=residual_peak"


def _shown(override: str) -> str:
    """An override as the table shows it: a data source by its file name, not this machine's path."""
    key, _, value = override.partition("=")
    return f"{key}={Path(value).name}" if key == "data.source" else override


def collect(root: Path) -> None:
    """One row per try (a run directory under root) and probe step: its overrides beyond the
    preset, the peak (PEAK_CURVE, as the max of the per-layer values: the first tries ran
    before it was logged) and the CURVES at that step, and the val loss where it was measured
    (Lightning logs it at the step before: step s - 1 after s optimizer steps)."""
    frames = []
    for run in sorted(p for p in root.iterdir() if (p / "metrics.csv").exists()):
        overrides = (run / ".hydra" / "overrides.yaml").read_text().splitlines()
        changed = " ".join(_shown(line.removeprefix("- ")) for line in overrides if PRESET not in line)
        metrics = read_metrics_csv(run / "metrics.csv", wanted=lambda key: key in CURVES or key.startswith(
            PEAK_LAYER) or key == "val/loss")
        probes = metrics.dropna(subset=[next(iter(CURVES))])
        rows = probes[list(CURVES)].rename(columns=CURVES).assign(
            peak=probes.filter(like=PEAK_LAYER).max(axis=1))
        val = metrics["val/loss"].dropna()
        rows = rows.join(pd.Series(val.to_numpy(), index=val.index + 1, name="val_loss"), how="outer")
        frames.append(rows.rename_axis("step").reset_index().assign(run=run.name, overrides=changed))
    frame = pd.concat(frames)[["run", "overrides", "step", "peak", *CURVES.values(), "val_loss"]]
    frame.to_csv(CSV, index=False, float_format="%.6g")
    print(f"{CSV}: {frame['run'].nunique()} tries, {len(frame)} rows")


def steps_text(value: float) -> str:
    if math.isinf(value) or math.isnan(value):
        return "never" if math.isinf(value) else "—"
    return f"{value:,.0f}" if value < 1e6 else f"{value:.1e}"


def regime_table() -> str:
    tries = pd.read_csv(CSV, keep_default_na=False, na_values=[""])
    lines = ["| try | overrides of the preset | steps | peak at the end (max over layers) | highest peak (step) | "
             "slope, 2nd half | fit reaches 5× / 100× at step | top1/median | max \\|h\\| | val loss |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in tries.groupby("run", sort=True):
        probes = run.dropna(subset=["peak"])
        slope, intercept = power_law_fit(probes["step"], probes["peak"])
        top = probes.loc[probes["peak"].idxmax()]
        end = probes.iloc[-1]
        val = run.dropna(subset=["val_loss"])
        lines.append(
            f"| {name.split('_')[0]} | {run['overrides'].iloc[0] or '(none)'} | {int(end['step']):,} | {end['peak']:.2f} | "
            f"{top['peak']:.2f} ({int(top['step']):,}) | {slope:.2f} | "
            f"{steps_text(step_to_reach(5, slope, intercept))} / {steps_text(step_to_reach(100, slope, intercept))} | "
            f"{end['top1_over_median']:.1f} | {end['max_abs']:,.0f} | "
            f"{val['val_loss'].iloc[-1]:.3f} |")
    return "\n".join(lines)


def figure() -> None:
    from outlier_lab import figure_style as style

    tries = pd.read_csv(CSV, keep_default_na=False, na_values=[""])
    fig = style.new_figure(12.0, 4.6)
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
    for (name, run), color in zip(tries.groupby("run", sort=True), style.colors(sorted(tries["run"].unique())).values()):
        probes = run.dropna(subset=["peak"])
        axes[0].plot(probes["step"], probes["peak"], color=color, linewidth=1.4, label=name)
        axes[1].plot(probes["step"], probes["top1_over_median"], color=color, linewidth=1.4)
    for ax, title in zip(axes, ("residual peak ||h_0|| / median_j ||h_j|| (max over layers)",
                                "top-1 / median |h| (max over layers)")):
        style.step_panel(ax, title)
    axes[0].axhline(5.0, color="gray", linestyle=":", linewidth=0.9)  # the target
    style.outside_legend(fig, axes[0].get_lines()[:-1], [line.get_label() for line in axes[0].get_lines()[:-1]])
    style.save(fig, FIGURE)


def tables() -> dict[str, str]:
    return {"regime": regime_table()}


if __name__ == "__main__":
    if sys.argv[1:2] == ["collect"]:
        collect(Path(sys.argv[2]))
    else:
        figure()
        print(regime_table())
