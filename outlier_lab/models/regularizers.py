"""Outlier penalties added to the training loss (the ``regularizer`` config group; none by
default). Each penalty is declared once here; configs/regularizer/NAME.yaml builds it with
``_target_`` and LitGPT adds ``weight * value`` to the cross-entropy and logs both.

- ``WeightKurtosis``: KURE, Shkolnik et al. 2020, "Robust Quantization: One Model to Rule Them
  All" (NeurIPS; moranshkolnik/RobustQuantization, distiller_with_kure/.../image_classifier.py,
  KurtosisWeight): R = (1/L) sum_i (Kurt[W_i] - K_T)^2 over the L weight tensors W_i, with
  Kurt[W] = E[((W - mu) / sigma)^4] over all the tensor's entries and K_T = 1.8, the kurtosis
  of a uniform distribution (9/5), which is robust to quantization. Their ``--weight-name
  all`` takes every Conv2d weight but the first layer's, one term per tensor, averaged
  (``--kurtosis-mode avg``; lambda 1.0 in their commands); the classifier (an FC layer) is
  not among them. Here, likewise: every nn.Linear weight inside the transformer blocks
  (attention c_attn, c_proj, the variant's own Linears, MLP c_fc, c_proj), not the tied
  token embedding / output head. sigma is the population standard deviation, as in the
  formula; their code's torch.std is Bessel-corrected, which scales Kurt by ((n-1)/n)^2
  (under 0.1% for n > 2000 entries).
- ``ActivationKurtosis``: the mean over the blocks of the kurtosis of the block output (the
  residual stream after the block) of the training batch, each computed per sequence over
  its T*C values (population moments, not excess: a Gaussian gives 3), averaged over the
  sequences: Bondarenko et al. 2023's kurtosis, the one that ``outliers/act/avg_kurtosis``
  monitors, made differentiable. Forward hooks capture the block outputs during the
  training forward itself (no extra pass) and are removed after it.

``kurtosis_rows`` is the one kurtosis formula of the project: outlier_lab/metrics/activations.py
uses it too (metrics/ may import models/, not the reverse).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from outlier_lab.errors import ConfigError, is_number


def kurtosis_rows(rows: torch.Tensor) -> torch.Tensor:
    """mu4 / sigma^4 of each row of (N, M) with population moments (not excess: a Gaussian
    gives 3, a uniform 1.8). Differentiable; the caller chooses the dtype."""
    d = rows - rows.mean(dim=1, keepdim=True)
    return d.pow(4).mean(dim=1) / d.pow(2).mean(dim=1).pow(2)


class Penalty:
    """``weight`` (lambda) times ``value(model)``, a scalar tensor. ``capture(model)`` is the
    context the training forward runs in (hooks that keep what ``value`` needs)."""

    reads_activations = False  # True: capture() adds forward hooks each step (compile falls back to eager)

    def __init__(self, weight: float):
        if not is_number(weight) or not weight >= 0:
            raise ConfigError(f"{type(self).__name__}.weight={weight!r}: give a number >= 0")
        self.weight = float(weight)

    @contextmanager
    def capture(self, model: nn.Module) -> Iterator[None]:
        yield

    def value(self, model: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict:
        """Plain, rebuildable description (checkpoints hold it in hyper_parameters)."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", "weight": self.weight}


class WeightKurtosis(Penalty):
    """KURE (module docstring): mean over the blocks' nn.Linear weights of (Kurt(W) - target)^2."""

    def __init__(self, weight: float, target: float = 1.8):
        super().__init__(weight)
        if not is_number(target):
            raise ConfigError(f"WeightKurtosis.target={target!r}: give a number (1.8: a uniform distribution)")
        self.target = float(target)

    @staticmethod
    def weights(model: nn.Module) -> list[torch.Tensor]:
        return [m.weight for m in model.transformer.h.modules() if isinstance(m, nn.Linear)]

    def value(self, model):
        kurt = torch.stack([kurtosis_rows(w.float().reshape(1, -1))[0] for w in self.weights(model)])
        return (kurt - self.target).pow(2).mean()

    def config(self):
        return {**super().config(), "target": self.target}


class ActivationKurtosis(Penalty):
    """Mean over blocks of the per-sequence kurtosis of the block output (module docstring)."""

    reads_activations = True

    def __init__(self, weight: float):
        super().__init__(weight)
        self._outputs: list[torch.Tensor] = []

    @contextmanager
    def capture(self, model):
        self._outputs = []
        hooks = [block.register_forward_hook(lambda _m, _a, out: self._outputs.append(out))
                 for block in model.transformer.h]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def value(self, model):
        if not self._outputs:
            raise RuntimeError("ActivationKurtosis.value needs a forward pass inside capture(model)")
        per_layer = [kurtosis_rows(h.float().reshape(h.size(0), -1)).mean() for h in self._outputs]
        self._outputs = []  # the batch's activations are not kept past its step
        return torch.stack(per_layer).mean()


class Penalties:
    """The penalties of a run, by name: Penalty objects (built by Hydra) or their ``config()``
    mappings (from a checkpoint); None entries are skipped. Empty: the loss is untouched."""

    def __init__(self, penalties: Mapping | None = None):
        self.items: dict[str, Penalty] = {}
        for name, penalty in (penalties or {}).items():
            if penalty is None:
                continue
            if isinstance(penalty, Mapping) and "_target_" in penalty:
                from hydra.utils import instantiate  # only when rebuilding from a checkpoint
                penalty = instantiate(dict(penalty))
            if not isinstance(penalty, Penalty):
                raise ConfigError(f"regularizer.{name} is a {type(penalty).__name__}, not a penalty of "
                                  "outlier_lab/models/regularizers.py (configs/regularizer/ shows the form)")
            self.items[name] = penalty

    @contextmanager
    def capture(self, model: nn.Module) -> Iterator[None]:
        with ExitStack() as stack:
            for penalty in self.items.values():
                stack.enter_context(penalty.capture(model))
            yield

    def terms(self, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """name -> (value, weight * value); the weighted term is None when the weight is 0
        (the value is then only logged, and detached: no effect on the gradients)."""
        out = {}
        for name, penalty in self.items.items():
            with torch.set_grad_enabled(torch.is_grad_enabled() and penalty.weight > 0):
                value = penalty.value(model)
            out[name] = (value, penalty.weight * value) if penalty.weight else (value.detach(), None)
        return out

    def config(self) -> dict:
        return {name: penalty.config() for name, penalty in self.items.items()}
