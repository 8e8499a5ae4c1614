"""outliers/metrics/functions.py on constructed tensors whose answers are known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from outliers.metrics.functions import (
    activation_stats,
    attention_entropy,
    attention_outlier_keys,
    channel_alignment,
    first_token_share,
    inf_norm,
    kurtosis,
    massive_count,
    massive_ratio_count,
    median_abs,
    null_mass,
    sink_rate,
    token_outliers,
    top_abs,
    top_channels,
    value_stats,
    weight_column_ratio,
    weight_kurtosis,
    weight_row_ratio,
    weight_stats,
)

B, T, C = 2, 16, 32


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def background():
    """0.1 * N(0, 1) of shape (B, T, C): median |h| ~ 0.0674, so 1000 x median ~ 67 (checked)."""
    h = 0.1 * torch.randn(B, T, C, generator=gen())
    assert 60 < 1000 * median_abs(h) < 75  # the premise the thresholds below rely on
    return h


def planted(value, b=1, t=5, c=7):
    h = background()
    h[b, t, c] = value
    return h


# ----------------------------------------------------------------------------- activations


def test_top_abs_uses_absolute_values():
    h = torch.tensor([[[-7.0, 2.0], [5.0, -1.0]]])
    assert top_abs(h) == [7.0, 5.0, 2.0]
    assert top_abs(h, k=1) == [7.0]
    assert top_abs(h, k=10) == [7.0, 5.0, 2.0, 1.0]  # no more than there is


def test_median_abs_exact():
    assert median_abs(torch.tensor([[-5.0, 1.0, 3.0]])) == 3.0  # odd count: the middle |h|
    assert median_abs(torch.tensor([[-3.0, 1.0], [2.0, -4.0]])) == 2.5  # even: mean of 2 and 3
    x = torch.randn(3, 5, 7, generator=gen())
    assert median_abs(x) == pytest.approx(x.abs().flatten().sort().values[52].item())


def test_massive_needs_both_thresholds():
    # 1000 x median ~ 67: 500 passes both, 80 only the ratio, 50 neither.
    for value, massive, ratio_only in [(500.0, 1, 1), (-500.0, 1, 1), (80.0, 0, 1), (50.0, 0, 0)]:
        h = planted(value)
        assert massive_count(h) == massive, value
        assert massive_ratio_count(h) == ratio_only, value
        assert massive_count(h, 0.0, 1000.0) == ratio_only
    assert massive_count(background()) == massive_ratio_count(background()) == 0
    # Under N(0, 1) the median is ~0.674, so 1000 x median ~ 674 and a 500 is *not* massive.
    h = torch.randn(B, T, C, generator=gen())
    h[1, 5, 7] = 500.0
    assert massive_count(h) == massive_ratio_count(h) == 0
    assert massive_count(h, median_ratio=100.0) == 1


def test_token_outliers_locates_the_token():
    h = planted(500.0, b=1, t=5, c=7)
    # The mean |h| includes the plant (500 / 1024 ~ 0.49), so at ratio 1000 the threshold is
    # ~570 and nothing qualifies; at ratio 100 it is ~57 and only that token does.
    assert token_outliers(h) == []
    assert token_outliers(h, ratio=100.0) == [(1, 5)]
    h[0, 0, 3] = -400.0
    assert token_outliers(h, ratio=100.0) == [(0, 0), (1, 5)]
    assert token_outliers(background(), ratio=100.0) == []


def test_kurtosis_reference_distributions():
    g = gen()
    assert kurtosis(torch.randn(4, 64, 1024, generator=g)) == pytest.approx(3.0, abs=0.1)
    assert kurtosis(torch.rand(4, 64, 1024, generator=g)) == pytest.approx(1.8, abs=0.05)
    signs = torch.tensor([1.0, -1.0]).repeat(4 * 512)[torch.randperm(4 * 1024, generator=g)]
    rademacher = torch.stack([signs[torch.randperm(4096, generator=g)] for _ in range(3)]).view(3, 64, 64)
    assert kurtosis(rademacher) == 1.0  # exactly: mean 0, x^2 = x^4 = 1
    # not excess kurtosis, and independent of location and scale
    x = torch.randn(2, 32, 256, generator=g)
    assert kurtosis(5 * x + 3) == pytest.approx(kurtosis(x), rel=1e-4)


def test_kurtosis_averages_over_sequences():
    ones = torch.tensor([1.0, -1.0] * 8).view(4, 4)  # kurtosis 1
    sparse = torch.zeros(4, 4)
    sparse[0, 0], sparse[2, 3] = 1.0, -1.0  # two +-1 among 16: mu2 = 2/16, mu4 = 2/16, kurtosis 8
    h = torch.stack([ones, sparse])
    assert kurtosis(h[:1]) == pytest.approx(1.0)
    assert kurtosis(h[1:]) == pytest.approx(8.0)
    assert kurtosis(h) == pytest.approx(4.5)  # mean of 1 and 8
    assert weight_kurtosis(h.view(2, 16)) == pytest.approx(32 / 18)  # the pooled value, one "sequence"
    assert kurtosis(h.view(2, 16)) == pytest.approx(32 / 18)  # 2-D counts as one sequence


def test_inf_norm_averages_over_sequences():
    h = torch.zeros(2, 3, 4)
    h[0, 1, 2] = 2.0
    h[1, 2, 0] = -4.0
    h[1, 0, 1] = 1.0
    assert inf_norm(h) == 3.0


def test_activation_stats_agrees_with_the_single_metrics():
    h = planted(500.0)
    h[0, 3, 1] = 80.0
    s = activation_stats(h, token_ratio=100.0)
    assert set(s) == {"top1", "top2", "top3", "median", "top1_over_median", "massive",
                      "massive_ratio", "token_outliers", "kurtosis", "inf_norm"}
    assert [s["top1"], s["top2"], s["top3"]] == pytest.approx(top_abs(h))
    assert s["top1"] == 500.0 and s["top2"] == 80.0
    assert s["median"] == median_abs(h)
    assert s["top1_over_median"] == pytest.approx(500.0 / median_abs(h))
    assert (s["massive"], s["massive_ratio"]) == (1, 2)
    assert s["massive"] == massive_count(h) and s["massive_ratio"] == massive_ratio_count(h)
    assert s["token_outliers"] == len(token_outliers(h, ratio=100.0)) == 2
    assert s["kurtosis"] == pytest.approx(kurtosis(h))
    assert s["inf_norm"] == pytest.approx(inf_norm(h)) == (500.0 + 80.0) / 2
    s2 = activation_stats(h, abs_threshold=50.0, median_ratio=100.0, token_ratio=1000.0)
    assert (s2["massive"], s2["massive_ratio"], s2["token_outliers"]) == (2, 2, 0)


def test_any_float_dtype_and_no_autograd():
    h = planted(500.0).to(torch.bfloat16).requires_grad_()
    s = activation_stats(h, token_ratio=100.0)
    assert s["top1"] == 500.0 and s["massive"] == 1
    assert s["median"] == pytest.approx(median_abs(h.detach().float()))
    assert isinstance(kurtosis(h), float) and not math.isnan(kurtosis(h))
    assert weight_stats(torch.randn(8, 16, dtype=torch.float16))["max_abs"] > 0
    assert first_token_share(uniform_causal(1, 2, 4).half()).dtype == torch.float32


# ----------------------------------------------------------------------------- channels


def test_top_channels_single_plant():
    (top,) = top_channels(planted(-500.0, b=1, t=5, c=7), k=1)
    assert top == dict(channel=7, value=500.0, batch=1, position=5, kind="other",
                       share_initial=0.0, share_delimiter=top["share_delimiter"])
    assert math.isnan(top["share_delimiter"])  # unknown without tokens
    assert top_channels(planted(500.0, b=0, t=0, c=7), k=1)[0]["kind"] == "initial"
    tokens = torch.full((B, T), 97, dtype=torch.long)  # "a"
    tokens[1, 5] = 10  # newline
    (top,) = top_channels(planted(500.0, b=1, t=5, c=7), k=1, tokens=tokens)
    assert (top["kind"], top["share_initial"], top["share_delimiter"]) == ("delimiter", 0.0, 1.0)
    tokens[1, 5] = 98
    assert top_channels(planted(500.0, b=1, t=5, c=7), k=1, tokens=tokens)[0]["kind"] == "other"


def test_top_channels_distinct_and_shares():
    h = background()
    tokens = torch.full((B, T), 97, dtype=torch.long)
    tokens[:, 0] = 10  # a delimiter at position 0 still counts as "initial", not both
    tokens[0, 4], tokens[1, 7], tokens[1, 9] = 10, 46, 32
    # channel 3: 5 entries >= 50 (half its max): 2 initial, 2 delimiters, 1 other; 40 is below.
    for (b, t), v in {(0, 0): 100.0, (1, 0): -90.0, (0, 4): 80.0, (1, 7): 60.0, (0, 9): 55.0, (1, 9): 40.0}.items():
        h[b, t, 3] = v
    h[1, 2, 9] = 70.0  # second channel: its only large value, on an "a"
    h[0, 11, 20] = -20.0  # third
    top = top_channels(h, k=3, tokens=tokens)
    assert [c["channel"] for c in top] == [3, 9, 20]  # distinct, though channel 3 holds the top two
    assert [c["value"] for c in top] == [100.0, 70.0, 20.0]
    assert [(c["batch"], c["position"], c["kind"]) for c in top] == [(0, 0, "initial"), (1, 2, "other"), (0, 11, "other")]
    assert top[0]["share_initial"] == pytest.approx(0.4)
    assert top[0]["share_delimiter"] == pytest.approx(0.4)
    assert (top[1]["share_initial"], top[1]["share_delimiter"]) == (0.0, 0.0)
    custom = top_channels(h, k=1, tokens=tokens, delimiter_ids=(46,))
    assert custom[0]["share_delimiter"] == pytest.approx(0.2)


# ----------------------------------------------------------------------------- weights


def spiky_weight():
    W = 0.02 * torch.randn(64, 256, generator=gen())
    W[:, 17] *= 50
    return W


def test_weight_column_outlier():
    W = spiky_weight()
    ratio, argmax = weight_column_ratio(W)
    # every column max ~ m except column 17's ~ 50 m: ratio ~ 50 m / ((255 m + 50 m) / 256) ~ 42
    assert argmax == 17 and ratio > 20
    row_ratio, _ = weight_row_ratio(W)
    assert row_ratio < 5  # every row holds one entry of column 17, so no row stands out
    c = W.abs().amax(dim=0)
    assert ratio == pytest.approx((c.max() / c.mean()).item())
    assert weight_row_ratio(W.t()) == pytest.approx(weight_column_ratio(W))
    s = weight_stats(W)
    assert (s["col_argmax"], s["col_ratio"], s["row_ratio"]) == (17, pytest.approx(ratio), pytest.approx(row_ratio))
    assert s["max_abs"] == W.abs().max().item()
    assert s["kurtosis"] == pytest.approx(weight_kurtosis(W)) and s["kurtosis"] > 10
    assert weight_kurtosis(0.02 * torch.randn(256, 256, generator=gen())) == pytest.approx(3.0, abs=0.1)


def test_weight_row_outlier():
    W = 0.02 * torch.randn(64, 256, generator=gen())
    W[40] *= 50
    assert weight_row_ratio(W)[1] == 40 and weight_row_ratio(W)[0] > 20
    assert weight_column_ratio(W)[0] < 5


def test_channel_alignment():
    W = spiky_weight()  # (C, 4C) = (64, 256), top column 17
    x = torch.randn(2, 8, 256, generator=gen())
    x[1, 3, 17] = 50.0
    assert channel_alignment(x, W) == {"act_channel": 17, "weight_column": 17, "aligned": True, "weight_rank": 0}
    x = torch.randn(2, 8, 256, generator=gen())
    x[0, 6, 100] = -50.0
    out = channel_alignment(x, W)
    order = W.abs().amax(dim=0).argsort(descending=True).tolist()
    assert (out["act_channel"], out["weight_column"], out["aligned"]) == (100, 17, False)
    assert out["weight_rank"] == order.index(100) > 0
    with pytest.raises(ValueError):
        channel_alignment(x, W.t())


# ----------------------------------------------------------------------------- attention


def uniform_causal(b, h, t):
    """p_ij = 1 / (i + 1) for j <= i."""
    p = torch.ones(t, t).tril()
    return (p / p.sum(dim=-1, keepdim=True)).expand(b, h, t, t).clone()


def sink_attention(shares, b=2, t=8):
    """Head h puts shares[h] on key 0 in every row i >= 1, the rest spread evenly over keys 1..i."""
    p = torch.zeros(b, len(shares), t, t)
    for h, s in enumerate(shares):
        p[:, h, 0, 0] = 1.0
        for i in range(1, t):
            p[:, h, i, 0] = s
            p[:, h, i, 1 : i + 1] = (1 - s) / i
    return p


def test_first_token_share():
    assert first_token_share(sink_attention([0.9, 0.9, 0.9])).tolist() == pytest.approx([0.9] * 3)
    assert first_token_share(sink_attention([0.9, 0.2, 0.0])).tolist() == pytest.approx([0.9, 0.2, 0.0])
    t = 8  # uniform: p_i0 = 1 / (i + 1), mean over i = 1..7 (row 0 is excluded)
    expected = sum(1 / (i + 1) for i in range(1, t)) / (t - 1)
    assert first_token_share(uniform_causal(2, 3, t)).tolist() == pytest.approx([expected] * 3)


def test_sink_rate():
    assert sink_rate(torch.tensor([[0.9, 0.1], [0.5, 0.2]])) == 0.5
    assert sink_rate(torch.tensor([[0.9, 0.1], [0.5, 0.2]]), eps=0.6) == 0.25
    assert sink_rate(torch.tensor([0.3, 0.31])) == 0.5  # strictly greater than eps
    assert sink_rate([[0.9, 0.1], [0.5, 0.2]]) == 0.5


def test_attention_outlier_keys():
    t = 16
    p = torch.zeros(2, 3, t, t)
    p[..., 0] = 1.0  # everything on key 0: acc_0 = T
    assert attention_outlier_keys(p) == [0]
    p[:, :, 3] = 0
    p[:, :, 3, 3] = 1.0  # one row on key 3: acc_3 = 1 = 0.1 T at T = 10, which counts (>=)
    assert attention_outlier_keys(p[..., :10, :10]) == [0, 3]
    # Uniform causal: acc_j = sum_{i >= j} 1 / (i + 1) = H_T - H_j. At T = 16, 0.1 T = 1.6:
    # acc_0 = 3.38, acc_1 = 2.38, acc_2 = 1.88, acc_3 = 1.55 -> keys 0, 1, 2.
    assert attention_outlier_keys(uniform_causal(2, 3, 16)) == [0, 1, 2]
    # At T = 64, 0.1 T = 6.4 > acc_0 = H_64 = 4.74: no outlier at all.
    assert attention_outlier_keys(uniform_causal(2, 3, 64)) == []
    assert attention_outlier_keys(uniform_causal(2, 3, 64), ratio=0.07) == [0]  # 4.48 is the threshold
    # the mean over heads: one head of three on key 5 everywhere gives acc_5 = T / 3
    p = uniform_causal(1, 3, 64)
    p[0, 0] = 0
    p[0, 0, 5:, 5] = 1.0
    assert 5 in attention_outlier_keys(p) and attention_outlier_keys(p, ratio=0.2) == [5]


def test_attention_entropy_and_null_mass():
    t = 12
    p = uniform_causal(2, 3, t)
    expected = math.lgamma(t + 1) / t  # mean over rows of log(i + 1)
    assert attention_entropy(p).tolist() == pytest.approx([expected] * 3, rel=1e-5)
    assert null_mass(p).tolist() == pytest.approx([0.0] * 3, abs=1e-6)
    assert (null_mass(p) >= 0).all()
    half = 0.5 * p  # rows used as they are: -sum 0.5/(i+1) log(0.5/(i+1)) = 0.5 (log(i+1) + log 2)
    assert null_mass(half).tolist() == pytest.approx([0.5] * 3)
    assert attention_entropy(half).tolist() == pytest.approx([0.5 * (expected + math.log(2))] * 3, rel=1e-5)
    one_hot = torch.zeros(2, 3, t, t)
    one_hot[..., 0] = 1.0
    assert attention_entropy(one_hot).tolist() == [0.0] * 3  # 0 log 0 = 0, no nan
    mixed = torch.stack([p[:, 0], half[:, 0]], dim=1)  # per head
    assert null_mass(mixed).tolist() == pytest.approx([0.0, 0.5], abs=1e-6)


def test_value_stats():
    assert value_stats(torch.tensor([[0.5, 1.5], [1.0, 1.0]])) == {"mean": 1.0, "min": 0.5, "max": 1.5}
    s = value_stats(torch.tensor([0.25, 1.75], dtype=torch.bfloat16))
    assert (s["mean"], s["min"], s["max"]) == (1.0, 0.25, 1.75)
