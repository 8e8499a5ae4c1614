"""The GPT: nanoGPT checkpoint import against a reference forward written here, and input checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from outlier_lab.errors import ConfigError
from outlier_lab.models.gpt import GPT

V, T_MAX, L, C, H = 50, 12, 2, 24, 3


def nanogpt_state_dict(bias: bool, variant: str = "softmax", seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in nanoGPT's format (nn.Linear weights are (out, in))."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    sd = {"transformer.wte.weight": rnd(V, C), "transformer.wpe.weight": rnd(T_MAX, C)}
    for i in range(L):
        p = f"transformer.h.{i}."
        sd |= {
            p + "ln_1.weight": 1 + rnd(C), p + "attn.c_attn.weight": rnd(3 * C, C), p + "attn.c_proj.weight": rnd(C, C),
            p + "ln_2.weight": 1 + rnd(C), p + "mlp.c_fc.weight": rnd(4 * C, C), p + "mlp.c_proj.weight": rnd(C, 4 * C),
            p + "attn.bias": torch.ones(1, 1, T_MAX, T_MAX).tril(),  # nanoGPT's mask buffer, not a parameter
        }
        if bias:
            sd |= {p + "ln_1.bias": rnd(C), p + "attn.c_attn.bias": rnd(3 * C), p + "attn.c_proj.bias": rnd(C),
                   p + "ln_2.bias": rnd(C), p + "mlp.c_fc.bias": rnd(4 * C), p + "mlp.c_proj.bias": rnd(C)}
        if variant == "explicit_scale":
            sd |= {p + "attn.context_scale.0.weight": rnd(H, C), p + "attn.context_scale.0.bias": rnd(H)}
        if variant == "v_bias":
            sd[p + "attn.v_bias"] = rnd(C)
        if variant in ("ca_bias", "attn_bias"):
            sd |= {p + "attn.k_bias": rnd(1, H, 1, C // H) * 10, p + "attn.v_bias": rnd(1, H, 1, C // H)}
    sd["transformer.ln_f.weight"] = 1 + rnd(C)
    if bias:
        sd["transformer.ln_f.bias"] = rnd(C)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def reference_logits(sd, idx, variant="softmax"):
    """GPT-2 forward from the raw tensors, no project code involved."""
    get = lambda k: sd.get(k)  # noqa: E731
    lin = lambda x, w, b: x @ w.T + (b if b is not None else 0)  # noqa: E731

    def ln(x, p):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        y = (x - mu) / torch.sqrt(var + 1e-5) * sd[p + ".weight"]
        return y + (sd[p + ".bias"] if p + ".bias" in sd else 0)

    B, T = idx.shape
    d = C // H
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    for i in range(L):
        p = f"transformer.h.{i}."
        h = ln(x, p + "ln_1")
        qkv = lin(h, sd[p + "attn.c_attn.weight"], get(p + "attn.c_attn.bias"))
        q, k, v = (qkv[..., j * C : (j + 1) * C].reshape(B, T, H, d).transpose(1, 2) for j in range(3))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        att = att.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        if variant == "sigmoid":
            y = torch.sigmoid(att - math.log(T)) @ v
        elif variant in ("ca_bias", "attn_bias"):
            extra = q @ sd[p + "attn.k_bias"].transpose(-1, -2) / math.sqrt(d)  # (B, H, T, 1)
            w = torch.cat([att, extra], -1).softmax(-1)
            pi = w[..., -1:]
            soft = att.softmax(-1) @ v if variant == "ca_bias" else w[..., :-1] @ v
            y = soft + pi * sd[p + "attn.v_bias"]
        else:
            y = att.softmax(-1) @ v  # (B, H, T, d)
        if variant == "v_bias":
            y = y + sd[p + "attn.v_bias"].view(1, H, 1, d)
        if variant == "explicit_scale":
            s = 2 * torch.sigmoid(lin(h, sd[p + "attn.context_scale.0.weight"], sd[p + "attn.context_scale.0.bias"]))
            y = y * s.transpose(1, 2).unsqueeze(-1)
        y = y.transpose(1, 2).reshape(B, T, C)
        x = x + lin(y, sd[p + "attn.c_proj.weight"], get(p + "attn.c_proj.bias"))
        h = ln(x, p + "ln_2")
        h = F.gelu(lin(h, sd[p + "mlp.c_fc.weight"], get(p + "mlp.c_fc.bias")))
        x = x + lin(h, sd[p + "mlp.c_proj.weight"], get(p + "mlp.c_proj.bias"))
    return ln(x, "transformer.ln_f") @ sd["lm_head.weight"].T


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("attention", ["softmax", "explicit_scale", "v_bias", "ca_bias", "attn_bias", "sigmoid"])
def test_from_nanogpt_matches_reference(bias, attention):
    """The seed paper's variant checkpoints (a)-(f) load, and compute their formulas."""
    sd = nanogpt_state_dict(bias, attention)
    model = GPT.from_nanogpt(sd, n_head=H, attention=attention).eval()
    assert model.config["bias"] is bias
    assert (model.config["n_layer"], model.config["n_embd"], model.config["vocab_size"], model.config["block_size"]) == (
        L, C, V, T_MAX)
    idx = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        logits = model(idx)
    assert logits.shape == (2, 9, V)
    torch.testing.assert_close(logits, reference_logits(sd, idx, attention), rtol=0, atol=1e-5)


def test_from_nanogpt_accepts_compiled_prefix_and_rejects_wrong_variant():
    sd = {"_orig_mod." + k: v for k, v in nanogpt_state_dict(True).items()}
    GPT.from_nanogpt(sd, n_head=H)
    with pytest.raises(ConfigError, match="context_scale"):  # softmax weights lack the scale parameters
        GPT.from_nanogpt(nanogpt_state_dict(True), n_head=H, attention="explicit_scale")
    with pytest.raises(ConfigError, match="unexpected .*v_bias"):
        GPT.from_nanogpt(nanogpt_state_dict(True, "v_bias"), n_head=H, attention="softmax")
    with pytest.raises(ConfigError, match="not a nanoGPT state dict"):
        GPT.from_nanogpt({"foo": torch.zeros(1)}, n_head=H)


def test_tied_embeddings_and_shapes():
    model = GPT(vocab_size=V, block_size=T_MAX, n_layer=L, n_head=H, n_embd=C)
    assert model.lm_head.weight is model.transformer.wte.weight
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, T_MAX + 1, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_embd=130, n_head=4), r"does not divide model.n_embd=130; valid n_head: \[1, 2, 5, 10, 13, 26\]"),
        (dict(n_layer=0), "model.n_layer must be a positive integer"),
        (dict(attention={"name": "nope"}), "registered variants: attn_bias, ca_bias, clipped_softmax"),
        (dict(attention={"name": "softmax", "backend": "fast"}), "unknown attention backend"),
    ],
)
def test_bad_model_config_fails_with_clear_message(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GPT(**kwargs)


def test_guo_block_options_build_a_relu_mlp_and_unit_embeddings_and_leave_the_default_as_it_was():
    torch.manual_seed(0)
    default = GPT(vocab_size=V, block_size=T_MAX, n_layer=L, n_head=H, n_embd=C)
    torch.manual_seed(0)
    spelled = GPT(vocab_size=V, block_size=T_MAX, n_layer=L, n_head=H, n_embd=C, mlp="gelu", init={"embedding_std": 0.02})
    for (name, a), b in zip(default.state_dict().items(), spelled.state_dict().values()):
        assert torch.equal(a, b), name  # the explicit defaults draw the same numbers, in the same order
    torch.manual_seed(0)
    guo = GPT(vocab_size=500, block_size=400, n_layer=L, n_head=H, n_embd=C, bias=False, mlp="relu",
              init={"embedding_std": 1.0})
    wte, wpe = guo.transformer.wte.weight, guo.transformer.wpe.weight
    assert guo.lm_head.weight is wte  # still tied: the head is the N(0, 1) embedding
    assert abs(wte.std().item() - 1.0) < 0.02 and abs(wpe.std().item() - 1.0) < 0.03
    assert abs(guo.transformer.h[0].attn.c_attn.weight.std().item() - 0.02) < 0.002  # the Linears keep 0.02
    assert guo.config["mlp"] == "relu" and guo.config["init"] == {"embedding_std": 1.0}
    # the MLP computes c_proj(relu(c_fc(x))): negative pre-activations contribute nothing
    mlp, x = guo.transformer.h[0].mlp, torch.randn(2, 3, C)
    torch.testing.assert_close(mlp(x), F.linear(F.relu(F.linear(x, mlp.c_fc.weight)), mlp.c_proj.weight))
    assert not torch.allclose(mlp(x), F.linear(F.gelu(F.linear(x, mlp.c_fc.weight)), mlp.c_proj.weight))
    llama = GPT(vocab_size=V, block_size=T_MAX, n_layer=1, n_head=H, n_embd=C, style="llama", mlp="relu")
    assert isinstance(llama.transformer.h[0].mlp.act, torch.nn.ReLU)  # mlp overrides the style's SwiGLU


@pytest.mark.parametrize("kwargs, message", [
    (dict(mlp="swish"), r"unknown model.mlp 'swish'; choose one of gelu, relu, swiglu"),
    (dict(init={"embeding_std": 1.0}), r"unknown model.init keys \['embeding_std'\]; valid: embedding_std"),
    (dict(init={"embedding_std": 0}), r"model.init.embedding_std=0: give a positive number"),
])
def test_bad_block_options_fail_with_the_valid_choices(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GPT(vocab_size=V, block_size=T_MAX, n_layer=1, n_head=H, n_embd=C, **kwargs)
