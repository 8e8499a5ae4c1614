"""The outlier statistics (outlier_lab/metrics/{activations,weights,attention,tokens}.py) on
constructed tensors whose answers are known in closed form, each on a case where a
plausible wrong definition (the batch-wide version, a ratio of maxima, thresholding after
averaging, hard-coded byte ids) gives a different number."""

from __future__ import annotations

import math

import pytest
import torch

from outlier_lab.metrics.activations import (activation_stats, channel_max, inf_norm, kurtosis, norm_ratio_to_others,
                                          token_outliers, top_channel)
from outlier_lab.metrics.attention import (attention_entropy, first_token_share, null_mass, outlier_keys,
                                        sink_rate, sink_scores, value_stats)
from outlier_lab.metrics.tokens import INITIAL, OTHER, STRONG, WEAK, position_classes, token_class, vocabulary_classes
from outlier_lab.metrics.weights import channel_alignment, column_ratios, weight_stats

# ----------------------------------------------------------------------------- activations


def two_sequences():
    """Sequence 0: |h| = 1 everywhere but one 50; sequence 1: |h| = 3 everywhere but one 4."""
    h = torch.ones(2, 4, 5)
    h[1] *= 3
    h[0, 2, 1] = -50.0
    h[1, 3, 4] = 4.0
    return h


def test_top_and_median_are_per_sequence_then_averaged():
    s = activation_stats(two_sequences())
    assert s["top1"] == pytest.approx((50 + 4) / 2)  # the batch-wide top1 would be 50
    assert s["top2"] == pytest.approx((1 + 3) / 2)
    assert s["median"] == pytest.approx((1 + 3) / 2)  # the batch-wide median would be 1 or 3
    assert s["top1_over_median"] == pytest.approx(27 / 2)
    assert s["max_abs"] == 50


def test_median_is_exact_for_even_counts():
    h = torch.tensor([[[1.0, 2.0], [3.0, 10.0]]])  # one sequence, 4 values: median (2 + 3) / 2
    assert activation_stats(h)["median"] == pytest.approx(2.5)


def test_massive_needs_both_thresholds_against_its_own_sequence_median():
    h = torch.full((2, 4, 250), 0.1)
    h[0, 1, 3] = 150.0  # > 100 and >= 1000 x 0.1: massive
    h[1] = 1.0
    h[1, 2, 7] = 600.0  # > 100 but < 1000 x its own median 1: not massive (batch median would say yes)
    s = activation_stats(h)
    assert s["massive"] == 1 and s["massive_ratio"] == 1
    assert activation_stats(h, abs_threshold=1000.0)["massive"] == 0


def test_token_outliers_against_each_sequences_own_mean():
    h = torch.full((2, 4, 1000), 0.001)
    h[0, 2, 5] = 5.0   # mean |h| of sequence 0 ~ 0.0022: 5 > 1000 x mean
    h[1] = 1.0
    h[1, 3, 0] = 50.0  # sequence 1's mean is ~1: not an outlier (the batch mean ~0.5 would not flag it either)
    h[1, 1, 9] = 900.0  # 900 < 1000 x its own mean ~1.2, but > 1000 x the batch-wide mean ~0.6
    assert token_outliers(h) == [(0, 2)]
    assert activation_stats(h)["token_outliers"] == 1


def test_kurtosis_reference_values():
    torch.manual_seed(0)
    assert kurtosis(torch.randn(4, 256, 64)) == pytest.approx(3.0, abs=0.1)
    assert kurtosis(torch.rand(4, 256, 64)) == pytest.approx(1.8, abs=0.05)  # uniform: 9/5
    spike = torch.zeros(1, 10, 10)
    spike[0, 0, 0] = 1.0  # one spike among n = 100: (n - 1)^3 + 1 over n (n - 1)^2 ... = 98.01...
    n = 100
    want = ((n - 1) ** 4 / n ** 4 + (n - 1) / n ** 4) / n / (((n - 1) / n ** 2) ** 2)
    assert kurtosis(spike) == pytest.approx(want, rel=1e-4)


def test_kurtosis_and_inf_norm_average_over_sequences():
    h = torch.zeros(2, 10, 10)
    h[0, 0, 0] = 4.0
    h[1] = torch.randn(10, 10, generator=torch.Generator().manual_seed(0)).sign()  # |h| = 1, kurtosis ~1
    k0 = kurtosis(h[:1])
    assert kurtosis(h) == pytest.approx((k0 + kurtosis(h[1:])) / 2)
    assert inf_norm(h) == pytest.approx((4 + 1) / 2)  # not the batch max 4


def test_any_float_dtype_and_no_autograd():
    h = torch.randn(2, 8, 16, requires_grad=True)
    for x in (h, h.to(torch.bfloat16), h.to(torch.float16)):
        s = activation_stats(x)
        assert all(isinstance(v, (int, float)) for v in s.values())


def test_top_channel_and_the_classes_of_its_positions():
    h = torch.ones(2, 6, 8) * 0.1
    h[:, 0, 3] = 9.0   # channel 3: large on the initial token of both sequences...
    h[0, 4, 3] = 10.0  # ... and on a strong delimiter at position 4 of sequence 0
    positions = torch.tensor([[INITIAL, OTHER, OTHER, WEAK, STRONG, OTHER]] * 2)
    top = top_channel(h, positions)
    assert top["channel"] == 3 and top["value"] == 10.0
    assert top["shares"] == pytest.approx([2 / 3, 1 / 3, 0.0, 0.0])  # initial, strong, weak, other
    assert all(math.isnan(s) for s in top_channel(h)["shares"])


def test_norm_ratio_to_others_is_first_over_median_of_the_rest():
    v = torch.ones(1, 2, 5, 3)
    v[0, 0, 0] = 0.1         # head 0: a drained first value (norm 0.1 sqrt 3 over sqrt 3)
    v[0, 1, 3] = 100.0       # head 1: an outlier elsewhere does not move the median
    got = norm_ratio_to_others(v)
    torch.testing.assert_close(got, torch.tensor([[0.1, 1.0]]))

# ----------------------------------------------------------------------------- weights


def test_seed_column_ratio_is_scale_invariant_per_column():
    W = torch.ones(4, 3)
    W[:, 1] = 100.0  # a column large as a whole: ratio 1, not an outlier
    W[2, 2] = 9.0    # a single large entry in its column: 9 / mean(1, 1, 9, 1) = 3
    torch.testing.assert_close(column_ratios(W), torch.tensor([1.0, 1.0, 3.0]))
    s = weight_stats(W)
    assert s["col_ratio"] == pytest.approx(3.0) and s["col_argmax"] == 2  # max of maxima / mean would flag column 1
    assert s["col_ratio_median"] == pytest.approx(1.0)
    assert s["row_ratio"] == pytest.approx(100 / (102 / 3))  # rows 0, 1, 3: max 100 over mean (1 + 100 + 1) / 3
    assert s["max_abs"] == 100.0


def test_weight_stats_by_row_blocks_equal_one_pass(monkeypatch):
    """Blocks of 3 rows (the weights are read a block at a time): the column and row ratios,
    the kurtosis of all entries (against the training penalty's one-row formula) and max |W|
    are those of the whole matrix."""
    from outlier_lab.metrics import weights
    from outlier_lab.models.regularizers import kurtosis_rows

    W = torch.randn(10, 7, generator=torch.Generator().manual_seed(0)) ** 3
    monkeypatch.setattr(weights, "BLOCK_ENTRIES", 3 * 7)
    assert len(list(weights.row_blocks(W))) == 4
    a = W.abs()
    torch.testing.assert_close(column_ratios(W), a.amax(0) / a.mean(0))
    torch.testing.assert_close(column_ratios(W.t()), a.amax(1) / a.mean(1))
    s = weight_stats(W)
    assert s["kurtosis"] == pytest.approx(kurtosis_rows(W.reshape(1, -1).double()).item(), rel=1e-9)
    assert s["kurtosis"] > 3  # a cubed Gaussian is heavy-tailed: not a Gaussian's 3
    assert s["max_abs"] == a.max().item()
    assert math.isnan(weight_stats(torch.full((4, 4), 2.0))["kurtosis"])  # no spread: no kurtosis


def test_channel_alignment_ranks_columns_by_the_seed_ratio():
    W = torch.ones(4, 6)
    W[:, 1] = 50.0   # large column, ratio 1
    W[0, 4] = 20.0   # the seed's outlier column
    h = torch.zeros(1, 3, 6)
    h[0, 1, 4] = 7.0
    got = channel_alignment(channel_max(h), W)
    assert got == {"act_channel": 4, "weight_column": 4, "aligned": True, "weight_rank": 0}
    h[0, 1, 1] = 9.0
    assert channel_alignment(channel_max(h), W)["aligned"] is False
    assert channel_alignment(channel_max(h), W)["weight_rank"] >= 1

# ----------------------------------------------------------------------------- attention


def uniform_causal(b, h, t):
    return torch.ones(t, t).tril().div(torch.arange(1, t + 1)[:, None]).expand(b, h, t, t).clone()


def test_first_token_share_skips_query_zero():
    p = uniform_causal(1, 1, 4)  # p_i0 = 1/(i+1): queries 1..3 give 1/2, 1/3, 1/4
    assert first_token_share(p).item() == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)


def test_sink_rate_thresholds_each_sequence_before_averaging():
    """Half the sequences sink with alpha = 0.8, half with 0: the rate is 0.5, where
    thresholding the batch mean (0.4 > 0.3) would give 1."""
    t = 8
    p = torch.zeros(4, 2, t, t)
    p[:2, :, :, 0] = 0.8
    p[:2, :, :, 1] = 0.2
    p[2:, :, :, 1] = 1.0
    scores = sink_scores(p, tokens=None)
    torch.testing.assert_close(scores, torch.tensor([[0.8, 0.8]] * 2 + [[0.0, 0.0]] * 2))
    assert sink_rate(scores) == 0.5


def test_sink_scores_include_query_zero_and_use_the_first_tokens():
    p = uniform_causal(1, 1, 8)
    want = sum(1 / (i + 1) for i in range(4)) / 4  # queries 0..3, query 0 included (its p_00 = 1)
    assert sink_scores(p, tokens=4).item() == pytest.approx(want)
    assert sink_scores(p, tokens=None).item() == pytest.approx(sum(1 / (i + 1) for i in range(8)) / 8)


def test_outlier_keys_one_sequence_at_a_time():
    t = 10
    p = torch.zeros(2, 2, t, t)
    p[0, :, :, 0] = 1.0          # sequence 0: everything on key 0 -> acc_0 = 10 >= 1
    p[1, :, :, :] = 1.0 / t      # sequence 1: uniform -> acc_j = 1 >= 0.1 T = 1 for every key
    keys = outlier_keys(p)
    assert keys[0].tolist() == [True] + [False] * (t - 1) and keys[1].all()


def test_entropy_null_mass_and_value_stats():
    p = uniform_causal(2, 3, 4)
    ent = attention_entropy(p)
    torch.testing.assert_close(ent, torch.full((3,), sum(math.log(i) for i in range(1, 5)) / 4))
    null = torch.rand(2, 3, 4)
    torch.testing.assert_close(null_mass(null), null.mean(dim=(0, 2)))
    assert value_stats(torch.tensor([1.0, 2.0, 6.0])) == {"mean": 3.0, "min": 1.0, "max": 6.0}

# ----------------------------------------------------------------------------- token classes


def test_token_classes_follow_the_seed_sets():
    assert token_class(".") == STRONG and token_class(" ,") == STRONG and token_class("\n") == WEAK
    assert token_class(" the") == WEAK and token_class("The") == WEAK and token_class(" cat") == OTHER


def test_classes_come_from_the_runs_tokenizer_not_byte_ids():
    """Under a BPE-like vocabulary, id 46 (byte '.') is an ordinary word: a hard-coded byte id
    would call it a delimiter."""
    vocab = {46: " O", 10: "+", 7: ".", 8: "  "}
    classes = vocabulary_classes(lambda i: vocab.get(i, "word"), 64)
    assert classes[46] == OTHER and classes[7] == STRONG and classes[8] == WEAK
    positions = position_classes(torch.tensor([[7, 7, 46, 8]]), classes)
    assert positions.tolist() == [[INITIAL, STRONG, OTHER, WEAK]]


def test_a_sequence_without_a_spread_contributes_no_kurtosis():
    """0 / 0 is not a kurtosis: a constant (here all-zero, as SGD can leave an output) sequence
    is left out, so the value is the other sequences' own, finite, and not dragged to NaN."""
    from outlier_lab.metrics.activations import kurtosis, mean_kurtosis

    torch.manual_seed(0)
    live = torch.randn(3, 16, 8)
    live[1, 0, 0] = 40.0  # one heavy-tailed sequence, so the mean is not just a Gaussian's 3
    with_dead = torch.cat([live, torch.zeros(1, 16, 8), torch.full((1, 16, 8), 0.1)])
    assert kurtosis(with_dead) == pytest.approx(kurtosis(live), rel=1e-6)
    by_hand = [float((s - s.mean()).pow(4).mean() / (s - s.mean()).pow(2).mean() ** 2) for s in live.reshape(3, -1)]
    assert kurtosis(live) == pytest.approx(sum(by_hand) / 3, rel=1e-5)
    assert math.isnan(mean_kurtosis(torch.zeros(2, 5)))


def test_avg_kurtosis_skips_a_tensor_with_no_spread():
    from outlier_lab.metrics import Probe, run_measures
    from outlier_lab.metrics.activations import kurtosis
    from outlier_lab.models.gpt import GPT
    from outlier_lab.probe.ours import probe

    torch.manual_seed(0)
    model = GPT(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16)
    result = probe(model, torch.randint(0, 32, (2, 8)))
    result.tensors["h.0.mlp.c_proj"] = torch.zeros_like(result.tensors["h.0.mlp.c_proj"])  # a dead FFN
    values = run_measures(Probe(result, model))
    alive = [kurtosis(h) for name, h in result.tensors.items() if name != "h.0.mlp.c_proj"]
    assert values["outliers/act/avg_kurtosis"] == pytest.approx(sum(alive) / len(alive), rel=1e-6)


def test_a_misspelt_threshold_is_an_error_naming_the_valid_ones():
    from outlier_lab.errors import ConfigError
    from outlier_lab.metrics.thresholds import Thresholds

    with pytest.raises(ConfigError, match=r"unknown thresholds keys \['sink_epz'\]; valid: massive_abs, "
                                          r"massive_ratio, token_ratio, sink_eps, sink_tokens$"):
        Thresholds.of({"sink_epz": 0.4})
    assert Thresholds.of({"sink_eps": 0.4}).sink_eps == 0.4
