"""The optimizers of ``configs/optim/``: how LitGPT turns an ``optim.optimizer`` spec into a
torch optimizer, and the optimizers torch does not have.

Each option of the ``optim`` config group declares its optimizer as a Hydra partial
(``_target_`` + ``_partial_: true`` + its hyper-parameters); nothing here lists them. LitGPT
groups the parameters (``weight_decay_groups``: decay on the >=2-D ones only, the same two
groups for every optimizer) and calls the partial through ``build_optimizer``:

    factory(groups, lr=optim.lr, **context)

where ``context`` holds what only the running module knows, passed to the factories whose
signature names it: ``fused`` (True on CUDA: torch's AdamW and SGD take it) and ``model`` (the
GPT: ``muon.muon_adamw`` finds its hidden matrices there). A factory may be a torch class
(``torch.optim.AdamW``, ``torch.optim.SGD``) or a builder here (``muon.muon_adamw``,
``orthoadam.OrthoAdam``); adding one is a yaml, plus a builder when torch lacks it.

Checkpoints keep the spec as a plain dict (``optimizer_spec``), so they load with
``weights_only=True`` and a checkpoint rebuilds the same optimizer. DDP needs nothing more
(every rank builds the same optimizer; OrthoAdam draws the same rotations from the seed);
under FSDP a rank holds flat shards of the parameters, which ``muon`` (2-D matrices) and
``orthoadam`` (per-axis rotations) cannot treat as the model's tensors: use adamw or sgd there.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Mapping

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from outlier_lab.errors import ConfigError

CONTEXT = ("fused", "model")  # the keywords LitGPT offers a factory besides the groups and lr
RESERVED = ("params", "lr", "weight_decay", *CONTEXT)  # set by LitGPT (weight_decay: in the groups)


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay on matrices (and the few >2-D tensors) only, in the model's parameter order:
    nanoGPT's grouping, which every optimizer of configs/optim/ receives."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def _plain(value):
    """OmegaConf containers and tuples as plain lists and dicts (weights_only checkpoints)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def optimizer_spec(spec) -> dict:
    """The plain-dict spec of ``optim.optimizer``: given as a mapping (a checkpoint's
    hyper-parameters, a test) or as the partial that Hydra built from it (train.py
    instantiates the module's config recursively). The partial's target is written back as
    the importable path of the object it calls."""
    if isinstance(spec, functools.partial):
        if spec.args:
            raise ConfigError("optim.optimizer takes keyword arguments only (no _args_)")
        spec = {"_target_": _import_path(spec.func), "_partial_": True, **spec.keywords}
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise ConfigError(f"optim.optimizer must be a config with a _target_ (pick one with optim=NAME), "
                          f"got {type(spec).__name__}")
    spec = _plain(spec)
    _check_keys(spec)
    return spec


def _import_path(target: Callable) -> str:
    """The shortest dotted path that imports ``target``: torch.optim.AdamW, not torch.optim.adamw.AdamW."""
    parts = target.__module__.split(".")
    for end in range(1, len(parts) + 1):
        module = sys.modules.get(".".join(parts[:end]))
        found = module
        for name in target.__qualname__.split("."):
            found = getattr(found, name, None)
        if found is target:
            return ".".join([*parts[:end], target.__qualname__])
    return f"{target.__module__}.{target.__qualname__}"


def _target(spec: Mapping) -> Callable:
    try:
        return get_object(spec["_target_"])
    except Exception as e:  # ImportError, AttributeError: one line naming the key
        raise ConfigError(f"optim.optimizer._target_={spec['_target_']!r} cannot be imported "
                          f"({type(e).__name__})") from None


def _check_keys(spec: Mapping) -> None:
    """A misspelt hyper-parameter fails here, in one line, not at the first training step."""
    parameters = inspect.signature(_target(spec)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    given = {k for k in spec if not (k.startswith("_") and k.endswith("_"))}
    reserved = sorted(given & set(RESERVED))
    if reserved:
        raise ConfigError(f"optim.optimizer sets {reserved}, which LitGPT passes itself "
                          f"(use optim.lr and optim.weight_decay)")
    valid = [name for name in list(parameters)[1:] if name not in RESERVED]
    unknown = sorted(given - set(valid))
    if unknown:
        raise ConfigError(f"unknown optim.optimizer keys {unknown} for {spec['_target_']}; valid: {', '.join(valid)}")


def build_optimizer(spec: Mapping, groups: list[dict], lr: float, **context) -> torch.optim.Optimizer:
    """``factory(groups, lr=lr, **the context keywords the factory names)``."""
    factory = instantiate(dict(spec), _convert_="all")  # plain lists in the optimizer's groups, its state dict
    accepted = inspect.signature(factory).parameters
    return factory(groups, lr=lr, **{k: v for k, v in context.items() if k in accepted})
