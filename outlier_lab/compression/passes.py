"""Working copies of a model, and forward passes over calibration batches with temporary hooks.

Every protocol compresses a copy (``working_copy``) and never touches the trained model: a
pass here leaves no hook behind and restores every module's train/eval flag.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

HEAD = "lm_head"  # module name of the output head (tied to transformer.wte in models.gpt.GPT)


def working_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode without gradients. Tied weights stay tied within the copy."""
    clone = copy.deepcopy(model)
    for p in clone.parameters():
        p.grad = None
    return clone.eval()


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def token_ids(batches: Iterable) -> list[torch.Tensor]:
    """The model inputs of a batch iterable: x from (x, y) pairs, or the tensors themselves."""
    return [b[0] if isinstance(b, (tuple, list)) else b for b in batches]


def linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    return ((name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear))


@contextmanager
def eval_mode(model: nn.Module):
    """Eval mode and no grad inside; every module's own train/eval flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, training in flags:
            m.training = training


def forward_all(model: nn.Module, inputs: list[torch.Tensor], hooks: list[RemovableHandle]) -> None:
    """Run ``model`` on each input (eval, no grad, on the model's device); the ``hooks``
    are removed afterwards, also on error."""
    device = device_of(model)
    try:
        with eval_mode(model):
            for x in inputs:
                model(x.to(device))
    finally:
        for hook in hooks:
            hook.remove()


def run_with_input_hooks(model: nn.Module, inputs: list[torch.Tensor],
                         record: Callable[[str, torch.Tensor], None]) -> None:
    """``forward_all`` calling ``record(name, x)`` with the input of every nn.Linear."""
    hooks = [
        module.register_forward_pre_hook(lambda _m, args, name=name: record(name, args[0].detach()))
        for name, module in linears(model)
    ]
    forward_all(model, inputs, hooks)


def replace_input(transform: Callable[[torch.Tensor], torch.Tensor]):
    """A forward pre-hook that replaces a module's first input by ``transform(input)``."""
    def hook(_module, args):
        return (transform(args[0]), *args[1:])
    return hook
