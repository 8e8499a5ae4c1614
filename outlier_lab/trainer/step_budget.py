"""Whether one training step fits the machine, estimated before the first one.

A long context is quadratic: ``model.block_size=100000`` (a typo for 1000) once started
training without a word and grew past 5 GB with no step done after 4 minutes. Before
training, train.py estimates the memory of a step and of the monitor's probe and refuses,
in one line, what cannot fit; it warns when a step will take minutes.

Memory, fp32 (an estimate, not a bound): per layer, the activations kept for the backward
pass, 17 values per token and channel (Korthikanti et al. 2022's 34 bytes per token and
channel at 16 bits, without their attention term), plus the (B, H, T, T) logits and
weights where the attention path stores them (every variant but softmax, whose SDPA /
flash kernels do not); the output logits and their gradient; the weights with AdamW's two
moments and the gradient. The monitor's probe runs the eager path and keeps every layer's
(probe_sequences, H, T, T) weights. Time: 6 N + 12 L C T FLOPs per token (the PaLM
appendix count that LitGPT reports), at the rate of a matmul timed here."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from outlier_lab.errors import ConfigError

FP32 = 4
KEPT_PER_TOKEN_CHANNEL = 17  # values per layer, token and channel kept for backward
SLOW_STEP_SECONDS = 60.0


@dataclass
class Step:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    parameters: int
    batch_size: int
    stores_attention_maps: bool  # the training attention path keeps (B, H, T, T) tensors
    probe_sequences: int = 0  # 0: no monitor

    def attention_map_bytes(self, batch: int) -> int:
        return self.n_layer * batch * self.n_head * self.block_size ** 2 * FP32

    def train_bytes(self) -> int:
        b, t = self.batch_size, self.block_size
        kept = self.n_layer * b * t * self.n_embd * KEPT_PER_TOKEN_CHANNEL * FP32
        maps = 2 * self.attention_map_bytes(b) if self.stores_attention_maps else 0  # logits and weights
        logits = 2 * b * t * self.vocab_size * FP32
        return kept + maps + logits + 4 * self.parameters * FP32  # weights, gradient, AdamW's two moments

    def probe_bytes(self) -> int:
        if not self.probe_sequences:
            return 0
        per_layer = self.probe_sequences * self.n_head * self.block_size ** 2 * FP32
        return self.attention_map_bytes(self.probe_sequences) + per_layer  # kept weights + one layer's logits

    def flops(self) -> float:
        per_token = 6 * self.parameters + 12 * self.n_layer * self.n_embd * self.block_size
        return float(per_token) * self.batch_size * self.block_size


def available_bytes(device: torch.device) -> int:
    """Memory a step can use now: free CUDA memory, or the OS's MemAvailable (else the RAM)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def matmul_flops_per_second(device: torch.device, n: int = 512, repeats: int = 4) -> float:
    a = torch.full((n, n), 0.5, device=device)  # not randn: the run's random streams stay untouched
    a @ a  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n ** 3 * repeats / max(time.perf_counter() - start, 1e-9)


def check_step(step: Step, device: torch.device, warn) -> None:
    """ConfigError when the step or the probe needs more memory than ``device`` has available;
    ``warn(text)`` when one step will take more than a minute."""
    have = available_bytes(device)
    for need, what in ((step.train_bytes(), f"one training step at data.batch_size={step.batch_size}"),
                       (step.probe_bytes(), f"the monitor's probe of {step.probe_sequences} windows")):
        if need > have:
            raise ConfigError(
                f"{what} needs about {need / 2**30:,.1f} GiB at model.block_size={step.block_size} (memory grows with "
                f"it, the attention's as its square), more than the {have / 2**30:.1f} GiB available on "
                f"{device.type}; lower model.block_size, data.batch_size or callbacks.outlier_monitor.probe_sequences")
    seconds = step.flops() / matmul_flops_per_second(device)
    if seconds > SLOW_STEP_SECONDS:
        warn(f"one training step will take about {seconds / 60:.0f} min here ({step.flops():.2g} FLOPs at "
             f"model.block_size={step.block_size}, data.batch_size={step.batch_size})")
