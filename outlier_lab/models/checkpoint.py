"""Loading a checkpoint file that the user named: only tensors and plain containers are
unpickled (``weights_only=True``), and every way the file can be unusable is a one-line
ConfigError that names the path and what was expected."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from outlier_lab.errors import ConfigError
from outlier_lab.models.gpt import GPT


def load_checkpoint(path: str | Path, expected: str, required_keys: Iterable[str] = (), mmap: bool = False) -> dict:
    """The dict in ``path``. ``expected`` describes the accepted files for the messages
    ("a train.py checkpoint"); ``required_keys`` must all be in the dict; ``mmap`` maps the
    tensors instead of reading them (for a quick look at a large file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}; expected {expected}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # any failure to unpickle means the file is unusable
        raise ConfigError(f"checkpoint {path} is corrupt or not a safe checkpoint ({_one_line(e)}); "
                          f"expected {expected}") from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a dict; expected {expected}")
    missing = [key for key in required_keys if key not in checkpoint]
    if missing:
        raise ConfigError(f"checkpoint {path} has no {'/'.join(missing)}; expected {expected}")
    return checkpoint


def _one_line(error: Exception) -> str:
    """torch's reason without the paragraphs of advice that its weights_only errors wrap it in."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    return " ".join(text.split())


# top-level packages before everything moved under outlier_lab (docs/architecture.md)
LEGACY_PACKAGES = {"models": "outlier_lab.models", "data": "outlier_lab.data", "kernels": "outlier_lab.kernels",
                   "outliers": "outlier_lab"}


def upgrade_targets(config):
    """``config`` with every ``_target_`` that names a class by its path before the move under
    outlier_lab (``models.gpt.GPT``) rewritten to its path now, so that the configs saved in
    older checkpoints (hyper-parameters, data config, optimizer spec) still instantiate."""
    if isinstance(config, Mapping):
        out = {key: upgrade_targets(value) for key, value in config.items()}
        target = out.get("_target_")
        if isinstance(target, str) and target.split(".")[0] in LEGACY_PACKAGES:
            head, _, rest = target.partition(".")
            out["_target_"] = f"{LEGACY_PACKAGES[head]}.{rest}"
        return out
    if isinstance(config, list | tuple):
        return type(config)(upgrade_targets(value) for value in config)
    return config


def load_model(path: str | Path, nanogpt: Mapping | None = None) -> tuple[GPT, dict | None]:
    """A GPT from a train.py checkpoint, or from a nanoGPT checkpoint / state dict (the seed
    paper's format; ``nanogpt`` gives its attention variant and, without model_args, n_head),
    and the data config the checkpoint was trained with (None when it carries none)."""
    from outlier_lab.models.lit_gpt import LitGPT  # lightning, only when a checkpoint is loaded

    checkpoint = load_checkpoint(path, "a train.py checkpoint, or a nanoGPT checkpoint or state dict")
    if "state_dict" in checkpoint and "hyper_parameters" in checkpoint:  # train.py / Lightning
        module = LitGPT(**upgrade_targets(checkpoint["hyper_parameters"]))
        module.load_state_dict(checkpoint["state_dict"])
        return module.model, upgrade_targets(checkpoint.get("data_config"))
    nanogpt = dict(nanogpt or {})
    state_dict = checkpoint.get("model", checkpoint)
    model_args = checkpoint.get("model_args") or {}
    n_head = model_args.get("n_head") or nanogpt.get("n_head")
    if not n_head:
        raise ConfigError(f"{path} looks like a nanoGPT state dict without model_args: set nanogpt.n_head")
    norm_options = {key: source[key] for source in (model_args, nanogpt) for key in ("qk_norm", "norm_scale")
                    if key in source}  # from_nanogpt refuses them: nanoGPT has neither
    return GPT.from_nanogpt(state_dict, n_head=int(n_head), attention=nanogpt.get("attention", "softmax"),
                            **norm_options), None


def data_config(saved: Mapping | None, given: Mapping | None) -> dict | None:
    """The data config to evaluate a checkpoint with: ``given`` when it is a whole config
    (the user chose ``data=NAME``), else the checkpoint's own (``saved``) with the keys of
    ``given`` merged over it (``+data.KEY=VALUE``); None when neither says (a nanoGPT
    checkpoint carries no data config). Both are plain, resolved containers."""
    from omegaconf import OmegaConf

    given = dict(given or {})
    if "_target_" in given:
        return given
    if saved is None:
        return None
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(dict(saved)), given), resolve=True)


def checkpoint_data(given, saved: Mapping | None, block_size: int, ckpt: str,
                    alternative: str = "choose one with data=NAME, e.g. data=stdlib") -> dict:
    """The data config to evaluate or analyse checkpoint ``ckpt`` with, at the model's block
    size: the one chosen with data=NAME, or the checkpoint's own (``saved``) with
    +data.KEY=VALUE merged over it (``given``: the composed ``data`` node, or None); a
    ConfigError naming ``alternative`` when there is none (a nanoGPT checkpoint)."""
    from omegaconf import OmegaConf, open_dict

    if given is not None:
        with open_dict(given):
            given.block_size = block_size  # before resolving: a data config may interpolate it
        given = OmegaConf.to_container(given, resolve=True)
    chosen = data_config(saved, given)
    if chosen is None:
        raise ConfigError(f"{ckpt} carries no data config (a nanoGPT checkpoint): {alternative}")
    return {**chosen, "block_size": block_size}
