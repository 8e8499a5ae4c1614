"""Interventions on tiny random models with planted outliers (nothing is downloaded): each
finds exactly what was planted, edits it for the length of a ``with`` block, and our GPT and
its transformers GPT-2 conversion give the same numbers."""

from __future__ import annotations

import pytest
import torch

from outlier_lab.metrics.thresholds import Thresholds
from outlier_lab.errors import ConfigError
from outlier_lab.models.gpt import GPT
from outlier_lab.probe.ours import measure_model, probe
from outlier_lab.probe import families
from outlier_lab.pretrained.convert import gpt_to_hf_gpt2
from outlier_lab.pretrained.interventions import (INTERVENTIONS, Plan, default_logits, evaluate, plan_edits,
                                                  run_interventions)
from outlier_lab.probe.hf import measure_hf, prepare

transformers = pytest.importorskip("transformers")

# the planted token, its marker channel, the outlier channel, the FFN unit, the sink head
X, MARKER, CHANNEL, UNIT, HEAD = 7, 5, 42, 3, 2
NAMES = list(INTERVENTIONS)
POSITIONS = [0, 9, 15, 20]  # where X is in ``windows()``
THRESHOLDS = Thresholds(massive_abs=100.0, massive_ratio=1000.0, sink_eps=0.3, sink_tokens=64)


def windows(count: int = 4, length: int = 24) -> torch.Tensor:
    """Random ids without X, X first in every window (a BOS) and once more in windows 1 to 3."""
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(10, 100, (count, length), generator=g)
    idx[:, 0] = X
    idx[1, 9], idx[2, 15], idx[3, 20] = X, X, X
    return idx


@torch.no_grad()
def planted_gpt() -> GPT:
    """Our GPT with, in layer 0: residual channel CHANNEL ~ +1000 at every X (a marker channel
    only X's embedding has drives FFN unit UNIT, which the down projection writes into
    CHANNEL: a massive activation and an aligned weight-outlier column), and head HEAD whose
    query is constant and whose key reads the marker, so it attends to X (a sink)."""
    torch.manual_seed(0)
    model = GPT(vocab_size=100, block_size=32, n_layer=2, n_head=4, n_embd=64).eval()
    t, block = model.transformer, model.transformer.h[0]
    t.wte.weight[:, MARKER] = 0.0
    t.wte.weight[X, MARKER] = 1.0
    t.wpe.weight[:, MARKER] = 0.0
    block.attn.c_proj.weight[MARKER] = 0.0  # nothing else writes the marker
    block.mlp.c_fc.weight[UNIT] = 0.0
    block.mlp.c_fc.weight[UNIT, MARKER] = 30.0  # the marker is ~8 after the norm: 240 - 40
    block.mlp.c_fc.bias[UNIT] = -40.0
    block.mlp.c_proj.weight[:, UNIT] = 0.0
    block.mlp.c_proj.weight[CHANNEL, UNIT] = 1000.0 / 200.0
    q, k = slice(HEAD * 16, HEAD * 16 + 16), slice(64 + HEAD * 16, 64 + HEAD * 16 + 16)
    for rows in (q, k):
        block.attn.c_attn.weight[rows] = 0.0
        block.attn.c_attn.bias[rows] = 0.0
    block.attn.c_attn.bias[HEAD * 16] = 1.0
    block.attn.c_attn.weight[64 + HEAD * 16, MARKER] = 20.0
    return model


@pytest.fixture(scope="module")
def pair():
    """(our planted GPT, its probe), (its GPT-2 conversion, prepared, its probe), the windows."""
    ours, idx = planted_gpt(), windows()
    hf = gpt_to_hf_gpt2(ours)
    prepare(hf, families.family_of("gpt2"))
    return (ours, *measure_model(ours, idx, thresholds=THRESHOLDS)), (hf, *measure_hf(hf, families.family_of("gpt2"), idx,
                                                                            thresholds=THRESHOLDS)), idx


def rows_by_name(rows):
    return {row["name"]: row for row in rows}


def test_our_gpt_interventions_find_what_was_planted(pair):
    (ours, parts, metrics), _, idx = pair
    rows = rows_by_name(run_interventions(ours, families.OURS, idx, NAMES, parts, metrics, THRESHOLDS))
    assert rows["baseline"]["kl"] == 0 and rows["baseline"]["edited"] == "nothing"
    for name in ("massive_zero", "massive_mean"):
        details = rows[name]["details"]
        assert details["layer"] == metrics["outliers/act/top_channel_layer"]
        assert details["channels"] == [CHANNEL] and details["positions"] == POSITIONS
        assert details["entries"] == 7, details  # every X of the 4 windows, found in each forward
    # the mean: of the probe's massive activations, at the first token and at the others apart
    layer = rows["massive_mean"]["details"]["layer"]
    h = probe(ours, idx).residual[layer][..., CHANNEL]
    want = [h[:, 0].mean().item(), h[[1, 2, 3], [9, 15, 20]].mean().item()]
    assert rows["massive_mean"]["details"]["means"][str(CHANNEL)] == pytest.approx(want, abs=1e-3)
    plan = Plan(ours, families.OURS, parts, metrics, THRESHOLDS)
    for edit, value in zip(plan_edits(["massive_zero", "massive_mean"], plan), ([0.0, 0.0], want)):
        seen = []
        with edit:  # what the next layer reads: a hook registered after the edit's sees its output
            handle = ours.transformer.h[layer].register_forward_hook(lambda m, i, out: seen.append(out))
            with torch.no_grad():
                ours(idx[1:2])
            handle.remove()
        assert seen[0][0, [0, 9], CHANNEL].tolist() == pytest.approx(value, abs=1e-3), edit.name
    zero, mean = rows["massive_zero"]["kl"], rows["massive_mean"]["kl"]
    assert zero > 0.05 and mean < 1e-3 * zero, (zero, mean)  # zero breaks the model, the mean keeps it working
    assert rows["massive_mean"]["ppl"] == pytest.approx(rows["baseline"]["ppl"], rel=1e-3)
    assert rows["sink_drop"]["details"] == {"heads": {"0": [HEAD]}}
    assert rows["sink_drop"]["kl"] > 1e-4
    columns = rows["super_column"]["details"]["columns"]
    assert {"layer": 0, "column": UNIT, "row": CHANNEL} == {k: columns[0][k] for k in ("layer", "column", "row")}
    assert rows["super_column"]["kl"] > 0.05
    # the column UNIT holds one weight, 5, at CHANNEL: the super weight, whose input spikes ~200 at UNIT
    [weight] = rows["super_weight"]["details"]["weights"]
    assert (weight["layer"], weight["row"], weight["column"]) == (0, CHANNEL, UNIT)
    assert weight["value"] == 5.0 and weight["output"] == pytest.approx(5 * weight["input"], rel=1e-3)
    assert rows["super_weight"]["kl"] == pytest.approx(rows["super_column"]["kl"], rel=1e-5)
    # every hook and flag is gone: the model computes what it computed before
    assert not any(block.attn.expose_probs for block in ours.transformer.h)
    assert all(not m._forward_hooks for m in ours.modules())
    assert evaluate(ours, lambda m, ids: m(ids), idx)[0]["ppl"] == rows["baseline"]["ppl"]


def test_our_gpt_and_its_gpt2_conversion_give_the_same_interventions(pair):
    (ours, r_ours, m_ours), (hf, r_hf, m_hf), idx = pair
    a = run_interventions(ours, families.OURS, idx, NAMES, r_ours, m_ours, THRESHOLDS)
    b = run_interventions(hf, families.family_of("gpt2"), idx, NAMES, r_hf, m_hf, THRESHOLDS)
    assert [row["name"] for row in a] == [row["name"] for row in b] == ["baseline", *NAMES]
    for x, y in zip(a, b):
        assert x["ppl"] == pytest.approx(y["ppl"], rel=1e-4), x["name"]
        assert x["kl"] == pytest.approx(y["kl"], rel=1e-3, abs=1e-7), x["name"]
        for u, v in zip(x["details"].get("weights", []), y["details"].get("weights", [])):
            for key in ("value", "input", "output"):
                assert u.pop(key) == pytest.approx(v.pop(key), rel=1e-4), key
        for d in (x["details"], y["details"]):  # floats, compared through ppl and KL
            d.pop("means", None)
            for column in d.get("columns", []):
                column.pop("ratio")
        assert x["details"] == y["details"], x["name"]
    assert all(not tap.drop_first for tap in (attn.outlier_tap for attn in families.family_of("gpt2").attentions(hf)))


def test_super_column_zeroes_the_real_conv1d_weight_and_restores_it(pair):
    _, (hf, parts, metrics), _ = pair
    family = families.family_of("gpt2")
    weight = hf.transformer.h[0].mlp.c_proj.weight  # Conv1D: (in, out), the column is a row here
    before = weight.detach().clone()
    [edit] = plan_edits(["super_column"], Plan(hf, family, parts, metrics, THRESHOLDS))
    with edit:
        assert torch.all(weight[UNIT] == 0) and torch.equal(weight[UNIT + 1], before[UNIT + 1])
    assert torch.equal(weight, before)
    with pytest.raises(RuntimeError), edit:  # restored after an error too
        raise RuntimeError
    assert torch.equal(weight, before)


@torch.no_grad()
def planted_llama():
    """A random LLaMA with residual channel CHANNEL ~ +1000 at every X from layer 1 on."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                      max_position_embeddings=64)
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.model.embed_tokens.weight[:, MARKER] = 0.0
    model.model.embed_tokens.weight[X, MARKER] = 1.0
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight[MARKER] = 0.0
        layer.mlp.down_proj.weight[MARKER] = 0.0
    mlp = model.model.layers[1].mlp
    for up in (mlp.gate_proj, mlp.up_proj):
        up.weight[UNIT] = 0.0
        up.weight[UNIT, MARKER] = 30.0  # the marker is ~8 after the RMS norm
    mlp.down_proj.weight[:, UNIT] = 0.0
    mlp.down_proj.weight[CHANNEL, UNIT] = 1000.0 / 240.0 ** 2
    model.lm_head.weight *= 10  # a sharper next-token distribution than a random init's, as a trained model's
    return model


def test_massive_activations_of_a_llama_model():
    model, idx = planted_llama(), windows()
    family = families.family_of("llama")
    prepare(model, family)
    parts, metrics = measure_hf(model, family, idx, thresholds=THRESHOLDS)
    assert metrics["outliers/act/top_channel_layer"] == 1
    rows = rows_by_name(run_interventions(model, family, idx, ["massive_zero", "massive_mean"], parts, metrics,
                                          THRESHOLDS))
    for name in ("massive_zero", "massive_mean"):
        d = rows[name]["details"]
        assert (d["layer"], d["channels"], d["positions"], d["entries"]) == (1, [CHANNEL], POSITIONS, 7), d
    first, other = rows["massive_mean"]["details"]["means"][str(CHANNEL)]
    assert 500 < first < 2000 and 500 < other < 2000
    assert rows["massive_zero"]["kl"] > 0.05 and rows["massive_mean"]["kl"] < 1e-2 * rows["massive_zero"]["kl"]


def test_nothing_qualifies_in_an_unplanted_model():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=100,
                                     activation_function="gelu")
    model, family, idx = transformers.GPT2LMHeadModel(config).eval(), families.family_of("gpt2"), windows()
    prepare(model, family)
    parts, metrics = measure_hf(model, family, idx, thresholds=THRESHOLDS)
    names = ["massive_zero", "massive_mean", "sink_drop", "super_weight"]
    rows = rows_by_name(run_interventions(model, family, idx, names, parts, metrics, THRESHOLDS))
    for name in names:
        assert rows[name]["edited"].startswith("nothing: no "), rows[name]["edited"]
        assert rows[name]["kl"] == 0 and rows[name]["ppl"] == rows["baseline"]["ppl"]
    assert rows["super_weight"]["details"] == {"weights": []}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    [edit] = plan_edits(["super_weight"], Plan(model, family, parts, metrics, THRESHOLDS))
    with edit:
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# the super weight: in layer 1, input channel UNIT ~ +200 at the one X of ``one_spike()`` and
# W[ROW, UNIT] = 5 (the rest of the column random), so the output spikes ~ +1000 at ROW; a larger
# weight, DECOY at (DECOY_ROW, DECOY_COL), whose input stays small, is the top weight and column
ROW, DECOY, DECOY_ROW, DECOY_COL, SPIKE_AT = 11, 20.0, 30, 77, [2, 13]


def one_spike() -> torch.Tensor:
    """``windows()`` with X only once: window 2, token 13."""
    idx = windows()
    idx[idx == X] = 50
    idx[2, 13] = X
    return idx


@torch.no_grad()
def planted_super_weight() -> GPT:
    """Our GPT with X's marker channel read, in layer 1 only, by FFN unit UNIT (~200 at X, 0
    elsewhere), whose down-projection column is random but for W[ROW, UNIT] = 5; and a decoy
    weight DECOY at (DECOY_ROW, DECOY_COL), the largest |W| and the top column, never spiking."""
    torch.manual_seed(0)
    model = GPT(vocab_size=100, block_size=32, n_layer=2, n_head=4, n_embd=64).eval()
    t = model.transformer
    t.wte.weight[:, MARKER] = 0.0
    t.wte.weight[X, MARKER] = 1.0
    t.wpe.weight[:, MARKER] = 0.0
    for block in t.h:  # nothing else writes the marker
        block.attn.c_proj.weight[MARKER] = 0.0
        block.mlp.c_proj.weight[MARKER] = 0.0
    mlp = t.h[1].mlp
    mlp.c_fc.weight[UNIT] = 0.0
    mlp.c_fc.weight[UNIT, MARKER] = 30.0
    mlp.c_fc.bias[UNIT] = -40.0
    mlp.c_proj.weight[ROW, UNIT] = 5.0
    mlp.c_proj.weight[DECOY_ROW, DECOY_COL] = DECOY
    return model


def changed_entries(model, before) -> list[tuple]:
    """(parameter name, index) of every entry that differs from ``before``."""
    return [(name, tuple(i.tolist())) for name, p in model.named_parameters()
            for i in (p.detach() != before[name]).nonzero()]


def test_super_weight_zeroes_the_one_scalar_and_restores_it():
    ours, idx = planted_super_weight(), one_spike()
    hf, family = gpt_to_hf_gpt2(ours), families.family_of("gpt2")
    prepare(hf, family)
    name = "transformer.h.1.mlp.c_proj.weight"
    for model, fam, index in ((ours, families.OURS, (ROW, UNIT)), (hf, family, (UNIT, ROW))):  # Conv1D: (in, out)
        parts, metrics = (measure_model(ours, idx, thresholds=THRESHOLDS) if model is ours
                           else measure_hf(hf, family, idx, thresholds=THRESHOLDS))
        W = fam.down_weights(model)[1]  # (out, in)
        assert W.abs().argmax() == DECOY_ROW * W.shape[1] + DECOY_COL  # the weight alone points elsewhere
        [edit, column] = plan_edits(["super_weight", "super_column"], Plan(model, fam, parts, metrics, THRESHOLDS))
        [found] = edit.summary()[1]["weights"]
        assert (found["layer"], found["row"], found["column"], found["value"]) == (1, ROW, UNIT, 5.0), found
        assert found["input_at"] == found["output_at"] == SPIKE_AT
        assert 100 < found["input"] < 300 and found["output"] == pytest.approx(5 * found["input"], rel=0.05)
        assert "layer 1 W[11, 3] = 5 " in edit.summary()[0]
        assert all(c["layer"] != 1 for c in column.summary()[1]["columns"])  # the column method misses it
        before = {k: p.detach().clone() for k, p in model.named_parameters()}
        with edit:
            assert changed_entries(model, before) == [(name, index)]
            assert dict(model.named_parameters())[name][index] == 0
        assert changed_entries(model, before) == []
        with pytest.raises(RuntimeError), edit:  # restored after an error too
            raise RuntimeError
        assert changed_entries(model, before) == []
        assert evaluate(model, default_logits(fam), idx, [edit])[1]["kl"] > 1e-5  # the forward sees the edit


def test_an_unknown_intervention_names_the_valid_ones(pair):
    (ours, parts, metrics), _, idx = pair
    with pytest.raises(ConfigError, match="unknown intervention 'massive'; choose from massive_zero, massive_mean, "
                                          "sink_drop, super_weight, super_column"):
        run_interventions(ours, families.OURS, idx, ["massive_zero", "massive"], parts, metrics, THRESHOLDS)
    # one name on its own (intervene=sink_drop on the command line) is that one intervention, not its letters
    rows = run_interventions(ours, families.OURS, idx, "sink_drop", parts, metrics, THRESHOLDS)
    assert [row["name"] for row in rows] == ["baseline", "sink_drop"]
