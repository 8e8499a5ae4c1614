"""analyze.py on Hugging Face causal LMs: tiny randomly initialised models of every supported
family, built from a transformers config (nothing is downloaded), with planted outliers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import analyze
from outlier_lab.errors import ConfigError
from outlier_lab.models.gpt import GPT
from outlier_lab.probe.ours import measure_model
from outlier_lab.probe import families
from outlier_lab.pretrained.convert import gpt_to_hf_gpt2, hf_gpt2_to_nanogpt
from outlier_lab.probe.hf import measure_hf, prepare, probe_hf
from tests.test_analyze import compose_analyze

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]
SIZES = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=64)


def tiny(family: str, vocab_size: int = 256):
    """A random model of one family: 3 layers, width 64, 4 heads, a byte vocabulary (or larger)."""
    torch.manual_seed(0)
    t, sizes = transformers, dict(SIZES, vocab_size=vocab_size)
    config = {
        "gpt2": lambda: t.GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=64, vocab_size=vocab_size,
                                     activation_function="gelu", bos_token_id=None, eos_token_id=None),
        "llama": lambda: t.LlamaConfig(intermediate_size=128, num_key_value_heads=2, **sizes),
        "mistral": lambda: t.MistralConfig(intermediate_size=128, num_key_value_heads=2, sliding_window=8, **sizes),
        "qwen2": lambda: t.Qwen2Config(intermediate_size=128, num_key_value_heads=2, **sizes),
        "opt": lambda: t.OPTConfig(ffn_dim=128, word_embed_proj_dim=64, **sizes),
        "gpt_neox": lambda: t.GPTNeoXConfig(intermediate_size=128, **sizes),
    }[family]()
    config._attn_implementation = "eager"
    return transformers.AutoModelForCausalLM.from_config(config).eval()


FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "opt", "gpt_neox")
# the FFN's first projection(s) of each family, whose hidden unit the planted outlier drives
UP = {"gpt2": ("mlp.c_fc",), "llama": ("mlp.gate_proj", "mlp.up_proj"), "mistral": ("mlp.gate_proj", "mlp.up_proj"),
      "qwen2": ("mlp.gate_proj", "mlp.up_proj"), "opt": ("fc1",), "gpt_neox": ("mlp.dense_h_to_4h",)}


@torch.no_grad()
def plant_massive(model, name: str, layer: int, token: int, channel: int, marker: int = 7, unit: int = 3):
    """One residual channel x1000 from ``layer`` on, at the positions of ``token`` only: the
    token's embedding gets a marker channel no other token has, one FFN hidden unit of
    ``layer`` reads only that marker, and the down projection writes it into ``channel``."""
    family = families.family_of(model.config.model_type)
    embedding = model.get_input_embeddings().weight
    embedding[:, marker] = 0.0
    embedding[token, marker] = 1.0
    block = family.blocks(model)[layer]
    for up in UP[name]:
        weight = families.projection_weight(block.get_submodule(up))  # (hidden, C), a view
        weight[unit] = 0.0
        weight[unit, marker] = 30.0  # after the norm the marker is ~8 (one channel of 64 in an RMS of 1/8)
        if getattr(block.get_submodule(up), "bias", None) is not None:
            block.get_submodule(up).bias[unit] = 0.0
    down = families.projection_weight(block.get_submodule(family.down))  # (C, hidden)
    down[:, unit] = 0.0
    down[channel, unit] = 1000.0 / (30.0 * 8) ** (2 if len(UP[name]) == 2 else 1)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_probe_attention_is_transformers_eager_attention(name):
    model = tiny(name)
    idx = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        want = model(idx, output_attentions=True)
    family = families.family_of(model.config.model_type)
    prepare(model, family)
    result = probe_hf(model, family, idx)
    with torch.no_grad():
        got = model(idx).logits
    assert torch.equal(got, want.logits)
    assert len(result.attention) == len(result.residual) == len(result.down_input) == 3
    for layer in range(3):  # streamed one sequence at a time, then stacked: the batch's own weights
        torch.testing.assert_close(result.attention[layer]["probs"], want.attentions[layer], rtol=1e-5, atol=1e-6)
    assert set(result.tensors) >= {"h.0.ln_1", "h.0.attn.c_proj", "h.0.ln_2", "h.0.mlp.c_proj", "h.0", "ln_f"}
    assert result.down_weights[0].shape == (64, result.down_input[0].shape[-1])  # (out, in), GPT-2's Conv1D too
    assert model.get_output_embeddings() is model.lm_head  # the name keep_head_fp of the compression protocols finds


def test_a_gpt2_model_and_its_conversion_to_our_gpt_give_identical_metrics():
    """One metric implementation: the same weights through our GPT's probe and through the
    Hugging Face probe give the same numbers, key by key."""
    hf = tiny("gpt2")
    ours = GPT.from_nanogpt(hf_gpt2_to_nanogpt(hf.state_dict()), n_head=4).eval()
    idx = torch.randint(0, 256, (3, 32))
    with torch.no_grad():
        assert torch.allclose(ours(idx), hf(idx).logits, atol=1e-5)
    prepare(hf, families.family_of("gpt2"))
    _, from_hf = measure_hf(hf, families.family_of("gpt2"), idx)
    _, from_ours = measure_model(ours, idx)
    assert set(from_hf) == set(from_ours)
    for key, value in from_ours.items():
        assert from_hf[key] == pytest.approx(value, rel=1e-4, abs=1e-6, nan_ok=True), key
    back = gpt_to_hf_gpt2(ours)  # and back: a trained GPT analysed through the Hugging Face path
    with torch.no_grad():
        assert torch.allclose(back(idx).logits, hf(idx).logits, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama", "opt", "gpt_neox"])
def test_analyze_finds_a_planted_massive_activation(tmp_path, name):
    model = tiny(name, vocab_size=320)  # more ids than the byte tokenizer has: a padded vocabulary
    token, layer, channel = ord("x"), 1, 42
    plant_massive(model, name, layer, token, channel)
    model.save_pretrained(tmp_path / "model")
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over a lazy dog, then x marks the spot. " * 4)
    metrics = analyze.analyze(compose_analyze(tmp_path / "out", f"hf={tmp_path / 'model'}", f"text={text}",
                                              "tokenizer=byte", "window=32", "windows=4"))
    massive = [metrics[f"outliers/act/massive/layer_{l}"] for l in range(3)]
    assert massive[0] == 0 and massive[1] > 0, massive  # it appears at the planted layer
    assert metrics["outliers/act/top_channel"] == channel
    assert metrics["outliers/act/top1/layer_1"] > 500
    written = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert written["window"] == 32 and written["windows"] == 4
    assert (tmp_path / "out" / "plots" / "weight_columns.png").stat().st_size > 5000


def test_the_models_own_tokenizer_and_its_leading_bos(tmp_path):
    """A directory with tokenizer files: windows are cut from the text's own ids, and each
    starts with the BOS that the tokenizer puts before a text (as LLaMA's does)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    text = "the cat sat on the mat and the dog sat on the log " * 8
    words = ["<s>", "<unk>", *sorted(set(text.split()))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", unk_token="<unk>")
    tiny("llama").save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "text.txt").write_text(text)
    analyze.analyze(compose_analyze(tmp_path / "out", f"hf={tmp_path / 'model'}", f"text={tmp_path / 'text.txt'}",
                                    "window=9", "windows=3"))
    written = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert written["windows"] == 3 and written["window"] == 9
    ids = [words.index(w) for w in text.split()]
    subject = analyze.hf_subject(compose_analyze(tmp_path / "out2", f"hf={tmp_path / 'model'}",
                                                 f"text={tmp_path / 'text.txt'}", "window=9", "windows=3"))
    assert subject.idx.tolist() == [[0, *ids[0:8]], [0, *ids[8:16]], [0, *ids[16:24]]]
    assert subject.decode(words.index("cat")) == "cat"


@pytest.mark.parametrize("case, message", [
    ("family", "unsupported model family 'bloom'"),
    ("offline", "not a local directory and could not be fetched"),
    ("short", "fewer than one window"),
    ("no_tokenizer", "has no tokenizer files"),
    ("both", "give one of ckpt=PATH"),
    ("device", "unknown device 'tpu'"),
])
def test_bad_input_is_one_clear_line(tmp_path, case, message):
    text = tmp_path / "text.txt"
    text.write_text("short" if case == "short" else "long enough text " * 20)
    if case == "family":
        config = transformers.BloomConfig(hidden_size=32, n_layer=1, n_head=2, vocab_size=256)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    else:
        tiny("llama").save_pretrained(tmp_path / "model")
    model = "hf:some-org/no-such-model" if case == "offline" else f"hf:{tmp_path / 'model'}"
    extra = {"short": ["tokenizer=byte"], "both": [f"ckpt={tmp_path / 'x.ckpt'}"], "device": ["device=tpu"]}.get(case, [])
    result = subprocess.run([sys.executable, "analyze.py", f"model={model}", f"text={text}", *extra,
                             f"hydra.run.dir={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2 and message in out and "Traceback" not in out, out


def test_a_model_that_bypasses_the_attention_interface_is_refused():
    model = tiny("llama")
    family = families.family_of("llama")
    prepare(model, family)
    model.config._attn_implementation = "sdpa"  # as a model with its own attention code would
    with pytest.raises(ConfigError, match="attention weights cannot be read"):
        probe_hf(model, family, torch.randint(0, 256, (1, 8)))


def test_compression_of_a_gpt2_model_equals_that_of_its_conversion_to_our_gpt():
    """The protocols on a transformers GPT-2 (Conv1D made nn.Linear, logits from its output)
    score exactly as on the same weights in our GPT; the model itself is left untouched."""
    from outlier_lab.pretrained.compress import score_on_windows

    hf = tiny("gpt2")
    ours = GPT.from_nanogpt(hf_gpt2_to_nanogpt(hf.state_dict()), n_head=4).eval()
    idx = torch.randint(0, 256, (3, 24))
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    names = ["w8_absmax", "w4_per_channel", "prune50", "w8a8_linear", "clip_p99.9"]
    got = score_on_windows(hf, families.family_of("gpt2"), idx, names)
    want = score_on_windows(ours, families.OURS, idx, names)
    assert set(got) == set(want) and len(got) == 1 + 4 * len(names)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert got["compress/w4_per_channel/kl"] > got["compress/w8_absmax/kl"] > 0  # 4 bits move it more than 8
    assert all(torch.equal(before[k], v) for k, v in hf.state_dict().items())


def test_a_protocol_that_needs_our_gpt_is_refused_for_a_transformers_model():
    from outlier_lab.pretrained.compress import score_on_windows

    with pytest.raises(ConfigError, match=r"need this project's GPT .* choose from w8a8_linear"):
        score_on_windows(tiny("llama"), families.family_of("llama"), torch.randint(0, 256, (1, 8)), ["w8a8"])


def test_an_untied_head_is_refused_by_the_gpt2_conversion_not_silently_tied():
    from outlier_lab.errors import ConfigError
    from outlier_lab.models.gpt import GPT

    untied = GPT(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8, tie_embeddings=False)
    with pytest.raises(ConfigError, match="a tied head"):
        gpt_to_hf_gpt2(untied)


def test_a_bf16_checkpoint_loads_in_bf16_without_a_float32_copy(tmp_path):
    """dtype=auto reads the checkpoint's bf16 straight onto the device: no float32 tensor of a
    weight's size is made on the way (every op's output watched while it loads)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from outlier_lab.pretrained.load import load_hf

    tiny("llama").to(torch.bfloat16).save_pretrained(tmp_path / "model")
    smallest = min(p.numel() for p in tiny("llama").parameters() if p.dim() == 2)

    class Float32Watch(TorchDispatchMode):
        made: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.made += [str(func) for t in tree_leaves(out) if isinstance(t, torch.Tensor)
                          and t.dtype == torch.float32 and t.device.type != "meta" and t.numel() >= smallest]
            return out

    with Float32Watch() as watch:
        model, _, _ = load_hf(str(tmp_path / "model"), "auto", "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert watch.made == []
    with Float32Watch() as watch:  # the watch sees a float32 detour when there is one
        model.float()
    assert len(watch.made) >= 1
