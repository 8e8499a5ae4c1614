"""The probe measured window by window (outlier_lab/probe/stream.py) gives every statistic of
one pass over all windows: the same captures, reduced per window and merged, against the
same captures reduced at once. Statistics that are per-sequence values, counts, maxima or
order statistics are exact; means assembled from per-window sums equal to float32 rounding."""

from __future__ import annotations

import math

import pytest
import torch

from outlier_lab.metrics.activations import channel_peaks, top_channel, top_channel_of
from outlier_lab.metrics.partials import Max, Peaks, Rows, Sum, First, merge, values
from outlier_lab.metrics.probe_result import ProbeResult
from outlier_lab.metrics.thresholds import Thresholds
from outlier_lab.models.gpt import GPT
from outlier_lab.probe import families
from outlier_lab.probe.hf import measure_hf, prepare
from outlier_lab.probe.ours import probe
from outlier_lab.probe.stream import measure_stream
from outlier_lab.pretrained.interventions import run_interventions
from tests.test_interventions import planted_llama, windows

# the keys that are assembled from per-window sums (a mean as sum / count): float32 rounding
SUMMED = ("/first_token_share", "/entropy", "/null_mass", "/loss", "/excess_loss", "/mean/layer_",
          "/scale/layer_", "/gate/layer_", "/slot_weight/layer_")
THRESHOLDS = Thresholds(massive_abs=100.0, massive_ratio=100.0)


def check_equal(streamed: dict, at_once: dict) -> None:
    assert streamed.keys() == at_once.keys()
    for key, want in at_once.items():
        got = streamed[key]
        if any(part in key for part in SUMMED):
            assert got == pytest.approx(want, rel=1e-6, abs=1e-7, nan_ok=True), key
        else:
            assert got == want or (math.isnan(got) and math.isnan(want)), (key, got, want)


def test_merged_partials_follow_their_rules():
    a = {"r": Rows(torch.tensor([1.0, 2.0])), "m": [Max(torch.tensor([1.0, 5.0]))], "s": Sum(torch.tensor(2.0)),
         "f": First("first")}
    b = {"r": Rows(torch.tensor([3.0])), "m": [Max(torch.tensor([4.0, 0.0]))], "s": Sum(torch.tensor(3.0)),
         "f": First("second")}
    got = values(merge(a, b))
    assert got["r"].tolist() == [1.0, 2.0, 3.0] and got["m"][0].tolist() == [4.0, 5.0]
    assert got["s"].item() == 5.0 and got["f"] == "first"
    with pytest.raises(ValueError, match="different keys"):
        merge(a, {"r": a["r"]})
    with pytest.raises(TypeError, match="cannot merge a Rows with a Sum"):
        merge(Rows(torch.ones(1)), Sum(torch.ones(1)))


def test_peaks_keep_exactly_what_the_top_channel_counts():
    """Windows of growing scale: entries at or above half an early window's maximum are
    pruned once a later window raises it, and the shares still equal the all-at-once ones."""
    torch.manual_seed(0)
    h = torch.randn(6, 10, 8) * torch.arange(1, 7).float()[:, None, None]
    h[4, 3, 5] = 30.0  # the top channel: 5, its largest entry in window 4
    h[5, :, 5] = 16.0  # window 5: ten entries >= half of 30 in the top channel
    h[1, 2, 5] = 14.0  # >= half window 1's maximum, below half the final one: must not count
    positions = torch.randint(0, 4, (6, 10))
    merged = None
    for b in range(6):
        channel_max, peaks = channel_peaks(h[b:b + 1], positions[b:b + 1])
        part = [Max(channel_max), peaks]
        merged = part if merged is None else merge(merged, part)
    assert top_channel_of(merged[0].value, merged[1]) == top_channel(h, positions)
    assert top_channel(h, positions)["channel"] == 5
    assert len(merged[1].values) < sum(len(channel_peaks(h[b:b + 1])[1].values) for b in range(6))  # pruned
    assert isinstance(merged[1], Peaks) and merged[1].values.min() >= 15.0


def test_a_hugging_face_model_streamed_equals_all_windows_at_once():
    model, idx, family = planted_llama(), windows(), families.family_of("llama")
    prepare(model, family)
    classes = torch.randint(0, 4, (100,), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    at_once_parts, at_once = measure_hf(model, family, idx, classes, None, thresholds=THRESHOLDS)
    for per_pass in (1, 3):
        seen = []
        parts, streamed = measure_hf(model, family, idx, classes, per_pass, seen.append, thresholds=THRESHOLDS)
        check_equal(streamed, at_once)
        assert seen == list(range(per_pass, len(idx), per_pass)) + [len(idx)]
    assert at_once["outliers/act/massive/total"] > 0  # the planted massive activations are counted
    # the interventions planned on the streamed partials edit the same entries, with the same effect
    names = ["massive_zero", "massive_mean", "sink_drop", "super_weight", "super_column"]
    rows = [run_interventions(model, family, idx, names, p, at_once, THRESHOLDS) for p in (at_once_parts, parts)]
    for x, y in zip(*rows):
        means = [row["details"].pop("means", {}) for row in (x, y)]  # sums over windows: float32 rounding
        assert x["details"] == y["details"] and means[0].keys() == means[1].keys(), x["name"]
        for channel, value in means[0].items():
            assert value == pytest.approx(means[1][channel], rel=1e-5)
        assert x["kl"] == pytest.approx(y["kl"], rel=1e-6, abs=1e-9), x["name"]


def sliced(result: ProbeResult, rows: slice) -> ProbeResult:
    """The captures of the windows ``rows`` of one pass: the same tensors a pass over them gives."""
    def cut(t):
        return t[rows] if t.dim() >= 3 or (t.dim() == 2 and t.shape[0] == result.residual[0].shape[0]) else t

    return ProbeResult(residual=[cut(h) for h in result.residual], down_input=[cut(x) for x in result.down_input],
                       down_output=[cut(y) for y in result.down_output],
                       attention=[{k: cut(v) for k, v in extras.items()} for extras in result.attention],
                       tensors={k: cut(v) for k, v in result.tensors.items()}, down_weights=result.down_weights,
                       linear_weights=result.linear_weights,
                       token_loss=None if result.token_loss is None else result.token_loss[rows])


@pytest.mark.parametrize("attention", ["softmax", "explicit_scale", "gated", "attn_bias", "differential"])
def test_our_gpt_streamed_equals_one_pass_with_domains(attention):
    torch.manual_seed(0)
    model = GPT(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=16, attention={"name": attention}).eval()
    idx = torch.randint(0, 11, (5, 12), generator=torch.Generator().manual_seed(2))
    domains = {"even": idx % 2 == 0, "odd": idx % 2 == 1}
    optimum = torch.rand(5, 12, generator=torch.Generator().manual_seed(3))
    classes = torch.tensor([0, 1, 2, 3, 1, 2, 3, 1, 2, 3, 3], dtype=torch.int8)
    full = probe(model, idx)  # one pass; the streamed run gets its windows' slices of it
    _, at_once = measure_stream(lambda ids: full, model, idx, classes, None, domains=domains, optimum=optimum)
    _, streamed = measure_stream(lambda ids: _window(full, ids, idx), model, idx, classes, 2, domains=domains,
                                 optimum=optimum)
    check_equal(streamed, at_once)


def _window(full: ProbeResult, ids: torch.Tensor, idx: torch.Tensor) -> ProbeResult:
    start = next(i for i in range(len(idx)) if torch.equal(idx[i:i + len(ids)], ids))
    return sliced(full, slice(start, start + len(ids)))
