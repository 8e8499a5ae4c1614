"""Training tokens/s of train.py's step against a minimal plain-PyTorch loop.

Both run the same GPT, the same AdamW (decay on matrices only), gradient clipping and
the same batches from the data module; the framework run goes through train.train() with
the default callbacks and loggers (CSV here, so no wandb process competes for the CPU).
Runs alternate (plain, framework, plain, framework, ...) and the median of each is used.

    python benchmarks/throughput.py [--models nano small] [--repeats 3]

Last line: framework_over_plain_loop=<min over models of the framework/plain ratio>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs from any working directory

import train  # noqa: E402
from outlier_lab.data.datamodule import RandomWindowBatches  # noqa: E402

STEPS = {"nano": (5, 40), "small": (3, 12)}  # (warm-up steps, timed steps)


class StepTimer(L.Callback):
    """Wall time from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


@contextmanager
def added_callbacks(*extra: L.Callback):
    """Every Trainer built inside also gets ``extra`` (train.train builds its own from the config)."""
    original = L.Trainer.__init__

    def with_extra(self, *args, callbacks=None, **kwargs):
        original(self, *args, callbacks=[*(callbacks or []), *extra], **kwargs)

    L.Trainer.__init__ = with_extra
    try:
        yield
    finally:
        L.Trainer.__init__ = original


def config(model: str, out: Path, steps: int):
    return train.compose_config(
        out, f"model={model}", "logger=csv", f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
        "+trainer.limit_val_batches=1", "callbacks.model_checkpoint=null",
    )


def framework_tokens_per_s(model: str, warmup: int, timed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(model, Path(tmp), warmup + timed)
        timer = StepTimer(warmup)
        with added_callbacks(timer):
            train.train(cfg)
        return timed * cfg.data.batch_size * cfg.model.block_size / (timer.end - timer.start)


def plain_tokens_per_s(model: str, warmup: int, timed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(model, Path(tmp), warmup + timed)
    import hydra

    torch.manual_seed(0)
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    gpt = hydra.utils.instantiate(cfg.model, vocab_size=dm.vocab_size, _convert_="all")
    decay = [p for p in gpt.parameters() if p.dim() >= 2]
    rest = [p for p in gpt.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.optim.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.optim.lr,
                            betas=tuple(cfg.optim.optimizer.betas))
    batches = RandomWindowBatches(dm.train_tokens, cfg.data.block_size, cfg.data.batch_size, warmup + timed, 0)
    gpt.train()
    for i in range(warmup + timed):
        if i == warmup:
            start = time.perf_counter()
        x, y = batches[i]
        loss = gpt.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gpt.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the framework logs the loss every step
    return timed * cfg.data.batch_size * cfg.model.block_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["nano", "small"], choices=sorted(STEPS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ratios = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':<8}{'plain tok/s':>14}{'framework tok/s':>18}{'ratio':>8}")
    for model in args.models:
        warmup, timed = STEPS[model]
        plain, framework = [], []
        for _ in range(args.repeats):
            plain.append(plain_tokens_per_s(model, warmup, timed))
            framework.append(framework_tokens_per_s(model, warmup, timed))
        p, f = statistics.median(plain), statistics.median(framework)
        ratios.append(f / p)
        print(f"{model:<8}{p:>14.0f}{f:>18.0f}{f / p:>8.3f}   (runs: plain {[round(v) for v in plain]}, "
              f"framework {[round(v) for v in framework]})")
    print(f"framework_over_plain_loop={min(ratios):.3f}")


if __name__ == "__main__":
    main()
