"""The optimizers of configs/optim/ (outlier_lab/models/optim/): every option composes from the real
configs and owns exactly the model's parameters; Muon's split into hidden matrices and the
rest; OrthoAdam against a plain-torch Adam on the rotated gradient; exact resume; and adamw
identical to the AdamW that LitGPT hard-coded before the config group existed."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import hydra
import pytest
import torch
from hydra.errors import MissingConfigException
from torch import nn

import train
from outlier_lab.errors import ConfigError
from outlier_lab.models.lit_gpt import LitGPT, warmup_cosine
from outlier_lab.models.optim.orthoadam import OrthoAdam, rotations
from tests.helpers import TINY, compose_train, read_metric

ROOT = Path(__file__).resolve().parents[1]
OPTIMS = sorted(p.stem for p in (ROOT / "configs" / "optim").glob("*.yaml"))
SMALL = {"vocab_size": 64, "n_layer": 2, "n_embd": 32, "n_head": 2, "block_size": 16}


def build(tmp_path, name, *overrides, model=None):
    """LitGPT as train.py builds it (Hydra instantiates the optimizer's partial), and its optimizer."""
    cfg = compose_train(tmp_path, f"optim={name}", "optim.decay_steps=100", *overrides)
    module = hydra.utils.instantiate(cfg.module, model={**SMALL, **(model or {})})
    return module, module.configure_optimizers()


def owned(optimizer):
    return [p for g in optimizer.param_groups for p in g["params"]]


def random_grads(params, seed):
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)


def test_the_group_lists_every_option_and_an_unknown_one_names_them(tmp_path):
    assert OPTIMS == ["adamw", "muon", "orthoadam", "sgd"]
    with pytest.raises(MissingConfigException) as info:
        compose_train(tmp_path, "optim=lion")
    assert "Could not find 'optim/lion'" in str(info.value)
    assert all(f"\t{name}\n" in str(info.value) + "\n" for name in OPTIMS), str(info.value)


@pytest.mark.parametrize("name", OPTIMS)
def test_each_option_steps_exactly_the_parameters_it_owns(tmp_path, name):
    module, conf = build(tmp_path, name)
    optimizer, params = conf["optimizer"], list(module.model.parameters())
    mine = owned(optimizer)
    assert len(mine) == len({id(p) for p in mine}) and {id(p) for p in mine} == {id(p) for p in params}
    assert module.hparams["optim"]["name"] == name
    before = [p.detach().clone() for p in params]
    some = params[::3]  # a gradient on every third parameter only: the others must not move
    random_grads(some, 0)
    optimizer.step()
    changed = [i for i, (p, b) in enumerate(zip(params, before)) if not torch.equal(p, b)]
    assert changed == list(range(0, len(params), 3))
    optimizer.zero_grad()
    random_grads(params, 1)
    before = [p.detach().clone() for p in params]
    optimizer.step()
    assert all(not torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("name", OPTIMS)
def test_hyperparameters_are_plain_and_rebuild_the_same_optimizer(tmp_path, name):
    module, _ = build(tmp_path, name)
    torch.save({"hyper_parameters": dict(module.hparams)}, tmp_path / "hp.ckpt")
    restored = LitGPT(**torch.load(tmp_path / "hp.ckpt", weights_only=True)["hyper_parameters"])
    assert restored.optim == module.optim and restored.optim.optimizer["_target_"] == module.optim.optimizer["_target_"]
    assert type(restored.configure_optimizers()["optimizer"]) is type(module.configure_optimizers()["optimizer"])


def test_optimizer_keys_are_checked_in_one_line(tmp_path):
    optim = dict(build(tmp_path, "adamw")[0].hparams["optim"])
    for bad, message in [({**optim, "optimizer": {**optim["optimizer"], "betaz": 1}},
                          r"unknown optim.optimizer keys \['betaz'\] for torch.optim.AdamW; valid: betas, eps,"),
                         ({**optim, "optimizer": {**optim["optimizer"], "lr": 1}}, r"sets \['lr'\], which LitGPT passes"),
                         ({**optim, "betas": [0.9, 0.9]}, r"unknown optim keys \['betas'\].*go under optim.optimizer"),
                         ({**optim, "optimizer": {"_target_": "torch.optim.Lion"}}, r"cannot be imported")]:
        with pytest.raises(ConfigError, match=message) as info:
            LitGPT(SMALL, bad)
        assert "\n" not in str(info.value)


def test_a_checkpoint_from_before_the_group_loads_as_adamw():
    old = {"lr": 1e-3, "min_lr": 1e-4, "weight_decay": 0.1, "betas": [0.9, 0.95], "warmup_steps": 100, "decay_steps": None}
    module = LitGPT(SMALL, old)
    assert module.optim.name == "adamw"
    assert module.optim.optimizer == {"_target_": "torch.optim.AdamW", "_partial_": True, "betas": [0.9, 0.95]}


@pytest.mark.parametrize("style, attention", [("gpt2", "softmax"), ("gpt2", "attn_bias"), ("llama", "gated")])
def test_muon_holds_the_hidden_matrices_and_adamw_the_rest(tmp_path, style, attention):
    module, conf = build(tmp_path, "muon", f"attention={attention}", f"model.style={style}")
    model, optimizer = module.model, conf["optimizer"]
    muon, adamw = optimizer.optimizers
    assert (type(muon), type(adamw)) == (torch.optim.Muon, torch.optim.AdamW)
    hidden = [m.weight for m in model.transformer.h.modules() if isinstance(m, nn.Linear)]
    assert {id(p) for p in owned(muon)} == {id(p) for p in hidden} and all(p.dim() == 2 for p in hidden)
    rest = [p for p in model.parameters() if all(p is not h for h in hidden)]
    assert sorted(map(id, owned(adamw))) == sorted(map(id, rest))
    assert len(owned(optimizer)) == len(list(model.parameters())) == len(owned(muon)) + len(owned(adamw))
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: one tensor, AdamW's
    decayed, plain = adamw.param_groups
    assert any(p is model.lm_head.weight for p in decayed["params"]) and decayed["weight_decay"] == 0.1
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert plain["weight_decay"] == 0.0 and [g["weight_decay"] for g in muon.param_groups] == [0.1]
    first = muon.param_groups[0]  # muon_lr null: Muon starts at optim.lr, Moonlight's RMS matching, Nesterov 0.95
    assert (first["initial_lr"], first["adjust_lr_fn"], first["nesterov"], first["momentum"], first["ns_steps"]) == (
        decayed["initial_lr"], "match_rms_adamw", True, 0.95, 5)
    if attention == "attn_bias":  # its 4-D key/value biases are not Linear weights: AdamW, with decay
        assert any(p.dim() == 4 for p in decayed["params"])


def dense(factors):
    """The rotation of a flattened (row-major) parameter: the Kronecker product of the axes' block-diagonals."""
    axes = [torch.eye(1, dtype=torch.float64) if f is None else torch.block_diag(*f) for f in factors]
    return functools.reduce(torch.kron, axes)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_orthoadam_is_adam_on_the_rotated_gradient_rotated_back(weight_decay):
    shapes, lr, (b1, b2), eps = [(6, 4), (5,), (3, 2, 4), (1, 3)], 0.01, (0.9, 0.95), 1e-8
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=generator, dtype=torch.float64, requires_grad=True) for s in shapes]
    expected = [p.detach().flatten().clone() for p in params]
    plain = [p.detach().clone().requires_grad_() for p in params]
    opt = OrthoAdam([{"params": params, "weight_decay": weight_decay}], lr=lr, betas=(b1, b2), eps=eps, seed=3, max_dim=4)
    adam = torch.optim.AdamW([{"params": plain, "weight_decay": weight_decay}], lr=lr, betas=(b1, b2), eps=eps)
    m = [torch.zeros_like(e) for e in expected]
    v = [torch.zeros_like(e) for e in expected]
    for t in range(1, 5):
        grads = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
        for p, q, g in zip(params, plain, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        adam.step()
        for i, (p, g) in enumerate(zip(params, grads)):
            Q = dense(opt.factors(p, i, opt.param_groups[0]))
            assert torch.allclose(Q @ Q.T, torch.eye(len(Q), dtype=torch.float64), atol=1e-12)
            rotated = Q @ g.flatten()
            m[i] = b1 * m[i] + (1 - b1) * rotated
            v[i] = b2 * v[i] + (1 - b2) * rotated ** 2
            step = (m[i] / (1 - b1 ** t)) / ((v[i] / (1 - b2 ** t)).sqrt() + eps)
            expected[i] = expected[i] * (1 - lr * weight_decay) - lr * (Q.T @ step)
            assert torch.allclose(p.detach().flatten(), expected[i], rtol=0, atol=1e-12), (t, shapes[i])
    assert not torch.allclose(params[0], plain[0])  # the basis matters: not plain AdamW
    assert not torch.allclose(params[3], plain[3])  # (1, 3): its length-3 axis turns


def test_orthoadam_rotations_come_from_the_seed():
    a, b, c = rotations((6, 4), 5, 4), rotations((6, 4), 5, 4), rotations((6, 4), 6, 4)
    assert [q.shape for q in a[0]] == [(3, 3), (3, 3)] and [q.shape for q in a[1]] == [(4, 4)]
    assert all(torch.equal(x, y) for fa, fb in zip(a, b) for x, y in zip(fa, fb))
    assert not torch.allclose(a[1][0], c[1][0])
    assert (dense(a).abs() < 0.99).all()  # dense: no coordinate keeps its own axis
    assert rotations((1, 3), 0, 4)[0] is None


@pytest.mark.parametrize("name", OPTIMS)
def test_the_optimizer_state_round_trips_exactly(tmp_path, name):
    """Three steps, save with weights_only, load into a fresh module's optimizer: two more
    steps equal those of the uninterrupted optimizer, bit for bit."""
    module, conf = build(tmp_path, name)
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    params = list(module.model.parameters())
    for step in range(3):
        random_grads(params, step)
        optimizer.step()
        scheduler.step()
    torch.save({"opt": optimizer.state_dict(), "sched": scheduler.state_dict(), "model": module.model.state_dict()},
               tmp_path / "state.ckpt")
    saved = torch.load(tmp_path / "state.ckpt", weights_only=True)
    resumed, rconf = build(tmp_path, name)
    resumed.model.load_state_dict(saved["model"])
    rconf["optimizer"].load_state_dict(saved["opt"])
    rconf["lr_scheduler"]["scheduler"].load_state_dict(saved["sched"])
    fresh, fconf = build(tmp_path, name)  # the control: the same weights and schedule, the optimizer state lost
    fresh.model.load_state_dict(saved["model"])
    fconf["lr_scheduler"]["scheduler"].load_state_dict(saved["sched"])
    indices = sorted(i for g in saved["opt"]["param_groups"] for i in g["params"])
    assert indices == list(range(len(params)))
    for step in range(3, 5):
        for mod, conf_ in ((module, conf), (resumed, rconf), (fresh, fconf)):
            random_grads(list(mod.model.parameters()), step)
            conf_["optimizer"].step()
            conf_["lr_scheduler"]["scheduler"].step()
    assert all(torch.equal(a, b) for a, b in zip(module.model.parameters(), resumed.model.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(module.model.parameters(), fresh.model.parameters()))
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in rconf["optimizer"].param_groups]


def test_adamw_is_the_adamw_litgpt_hard_coded_before(tmp_path):
    """The old configure_optimizers (outlier_lab/models/lit_gpt.py before configs/optim/), written out
    here: the same parameters after six steps, bit for bit, and the same settings."""
    module, conf = build(tmp_path, "adamw", "optim.warmup_steps=3")
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    old_model, hp = copy.deepcopy(module.model), module.optim
    matrices = [p for p in old_model.parameters() if p.requires_grad and p.dim() >= 2]
    others = [p for p in old_model.parameters() if p.requires_grad and p.dim() < 2]
    old = torch.optim.AdamW([{"params": matrices, "weight_decay": hp.weight_decay},
                             {"params": others, "weight_decay": 0.0}], lr=hp.lr, betas=(0.9, 0.95), fused=False)
    old_scheduler = torch.optim.lr_scheduler.LambdaLR(old, lambda s: warmup_cosine(s, 3, 100, hp.min_lr / hp.lr))
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        x, y = torch.randint(0, 64, (2, 4, 16), generator=generator)
        for model, opt, sched in ((module.model, optimizer, scheduler), (old_model, old, old_scheduler)):
            model.loss(x, y).backward()
            opt.step()
            opt.zero_grad()
            sched.step()
    assert all(torch.equal(a, b) for a, b in zip(module.model.parameters(), old_model.parameters()))
    settings = [[(k, list(v) if k == "betas" else v) for k, v in g.items() if k != "params"] for g in optimizer.param_groups]
    assert settings == [[(k, list(v) if k == "betas" else v) for k, v in g.items() if k != "params"] for g in old.param_groups]


@pytest.mark.parametrize("name", OPTIMS)
def test_resume_through_train_is_exact(tmp_path, name, corpus_glob, cache_dir):
    """Crash after the step-3 checkpoint, resume to 6: losses and final weights equal an uninterrupted run's."""
    def cfg(run, *extra):
        return compose_train(tmp_path / run, *TINY, "data=text_files", f"data.corpus.paths=[{corpus_glob}]",
                             f"optim={name}", "trainer.max_steps=6", "trainer.val_check_interval=3", "optim.warmup_steps=2",
                             "eval.compression=[]", *extra, cache_dir=cache_dir)

    train.train(cfg("straight"))
    with pytest.raises(RuntimeError, match="simulated crash at step 4"):
        train.train(cfg("resumed", "+callbacks.crash._target_=tests.helpers.InterruptAt", "+callbacks.crash.step=4"))
    saved = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3 and saved["optimizer_states"][0]["state"]  # what ckpt_path=auto resumes from
    train.train(cfg("resumed", "ckpt_path=auto"))
    ref, res = read_metric(tmp_path / "straight", "train/loss"), read_metric(tmp_path / "resumed", "train/loss")
    assert sorted(res) == sorted(ref) == list(range(6))
    assert [res[s] for s in range(6)] == [ref[s] for s in range(6)]
    a, b = (torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True) for run in ("straight", "resumed"))
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["hyper_parameters"]["optim"]["name"] == name
