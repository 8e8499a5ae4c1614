"""``compile``: the training and validation loss through torch.compile, with eager fallback.

Only the loss of training and validation steps is compiled (``torch.compile`` of the bound
``GPT.loss``, not a wrapper module), so parameter names, checkpoints and resume are those of
the eager model, and the probes, compression and analyze.py run the eager model unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from outlier_lab.errors import ConfigError, is_integer

CHOICES = ("auto", True, False)


def quiet_lru_cache_notice() -> None:
    """Silence dynamo's notice that it traces through functools.lru_cache: our cached helpers
    (causal masks, import checks) are pure functions of their arguments, the case it cannot
    check for itself. The notice is only raised while tracing."""
    warnings.filterwarnings("ignore", message=".*functools.lru_cache.*-wrapped function.*")


def wants_compile(option, device: torch.device) -> bool:
    """``compile``: true, false, or auto (true on CUDA, where it pays; false on CPU, where the
    first steps would wait for the C++ compiler)."""
    if option not in CHOICES or is_integer(option):  # 1 == True, but 1 is not a choice
        raise ConfigError(f"compile={option!r}: choose one of auto, true, false")
    return device.type == "cuda" if option == "auto" else bool(option)


class CompiledLoss:
    """``loss(idx, targets)`` through torch.compile; when dynamo or its backend cannot compile
    this model (a variant, a kernel, a missing C++ compiler), one warning names the reason and
    every later call runs eager. Errors of the model itself propagate as in eager mode."""

    def __init__(self, model: torch.nn.Module, label: str):
        self.model, self.label = model, label
        # dynamo caches compiled code per code object (GPT.loss), with a guard on the model
        # it was traced with: models compiled one after another in one process (a sweep on
        # the basic launcher, the tests) would reach its recompile limit (8) and silently
        # run eager. One model trains per process at a time, so a fresh cache per model.
        torch._dynamo.reset()
        quiet_lru_cache_notice()
        self.compiled: Callable | None = torch.compile(model.loss)

    def __call__(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(idx, targets)
            except torch._dynamo.exc.TorchDynamoException as e:
                reason = " ".join(str(e).split())[:300]
                warnings.warn(f"compile: {self.label} cannot be compiled ({type(e).__name__}: {reason}); "
                              f"training runs eager", stacklevel=2)
                self.compiled = None
        return self.model.loss(idx, targets)
