"""Forward+backward time and peak memory of the attention core of every slot variant and
every elementwise variant with a fused kernel, on its fastest path, as ratios to softmax on
flash-attn (SDPA without it).

The core is the variant's ``attend`` (q, k, v -> o, then o.backward), without the QKV and
output projections: softmax on flash-attn or SDPA; softpick, sigmoid and clipped_softmax
on their fused Triton kernels (outlier_lab/kernels/triton/; eager if triton is missing); softmax1,
sink, attn_bias and ca_bias on the slot fast path (FlexAttention on CUDA, augmented-key
SDPA otherwise). Default sizes: T = 1k, 4k, 16k, d = 64 and 128, bf16, B = 1, H = 16, on
CUDA. Times are medians of CUDA-event timings; memory is the peak allocated during one
forward+backward above what q, k, v and dO take (torch.cuda.max_memory_allocated). The
last table gives each variant's memory ratio 16k/4k: about 4 for O(T) memory, about 16
for a (T, T) tensor. Targets at T=4k, bf16, d=64: fused elementwise <= 1.3x, slot <= 1.2x.

``--cpu-smoke`` runs tiny sizes (T = 64, 128, d = 16, 32, fp32, B = 1, H = 2) on CPU, the
fused kernels in Triton's interpreter (it sets TRITON_INTERPRET=1 before triton is
imported), to check that the script works; its times mean nothing and its memory column is
the bytes autograd saves for backward (CPU has no allocator peak counter).

    python benchmarks/fused_kernels.py [--seqs 1024 4096 16384] [--dims 64 128] [--batch 1] [--heads 16] [--reps 20]
    python benchmarks/fused_kernels.py --cpu-smoke

Last line: worst_fused_over_softmax_T4k=<the largest time ratio to softmax among the fused
and slot variants at T=4096> (at the largest T run when 4096 is not, named after it, e.g.
worst_fused_over_softmax_T128=...).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if "--cpu-smoke" in sys.argv:  # must precede the first import of triton (see tests/conftest.py)
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outlier_lab import kernels  # noqa: E402
from benchmarks.attention import saved_bytes  # noqa: E402
from outlier_lab.kernels import triton as triton_kernels  # noqa: E402
from outlier_lab.models.attention import build_attention, get_attention_class, registered_names  # noqa: E402

TARGET = {"elementwise": 1.3, "slot": 1.2, "softmax": 1.0}


def variants() -> dict[str, str]:
    """softmax, then every registered slot variant and every elementwise one with a fused
    kernel -> its family (an elementwise variant without one, e.g. relu, runs the eager
    path, which this benchmark does not set out to measure)."""
    found = {"softmax": "softmax"}
    for name in registered_names():
        cls = get_attention_class(name)
        if cls.family == "slot" or (cls.family == "elementwise" and cls.fused_kernel):
            found[name] = cls.family
    return found


def backend_for(fam: str) -> str:
    """Force the fused kernels where triton imports (auto would not pick them on CPU)."""
    return "triton" if fam == "elementwise" and triton_kernels.triton_available() else "auto"


def path_label(module, fam: str, q: torch.Tensor) -> str:
    fused = fam == "elementwise" and module.backend == "triton"
    return kernels.select_backend(module.backend, q.device.type, q.dtype, family=fam, fused=fused)


class Case:
    """One variant at one size: q, k, v, dO and the module, ready for fwd+bwd."""

    def __init__(self, name, fam, b, h, t, d, device, dtype):
        g = torch.Generator(device=device).manual_seed(0)
        self.q, self.k, self.v = (torch.randn(b, h, t, d, device=device, dtype=dtype, generator=g).requires_grad_()
                                  for _ in range(3))
        self.do = torch.randn(b, h, t, d, device=device, dtype=dtype, generator=g)
        torch.manual_seed(0)
        module = build_attention(name, n_embd=h * d, n_head=h, block_size=t, backend=backend_for(fam))
        module.init_extra_parameters()
        self.module = module.to(device=device, dtype=dtype)
        self.path = path_label(self.module, fam, self.q)

    def step(self) -> None:
        for t in (self.q, self.k, self.v, *self.module.parameters()):
            t.grad = None
        o, _ = self.module.attend(self.q, self.k, self.v, None, False)
        o.backward(self.do)


def time_ms(case: Case, reps: int, cuda: bool) -> float:
    case.step()  # warm-up (and compilation)
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            case.step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            case.step()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_bytes(case: Case, cuda: bool) -> int:
    if not cuda:
        return saved_bytes(lambda: case.module.attend(case.q, case.k, case.v, None, False))
    for t in (case.q, case.k, case.v, *case.module.parameters()):
        t.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    case.step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def measure(name, fam, b, h, t, d, device, dtype, reps) -> tuple[str, float, float]:
    """(path, ms, bytes); ms and bytes are nan when the case does not fit in memory."""
    cuda = device == "cuda"
    try:
        case = Case(name, fam, b, h, t, d, device, dtype)
        result = case.path, time_ms(case, reps, cuda), float(peak_bytes(case, cuda))
    except torch.OutOfMemoryError:
        result = "oom", float("nan"), float("nan")
    case = None
    if cuda:
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU, the fused kernels interpreted")
    args = parser.parse_args()
    if args.cpu_smoke:
        device, dtype = "cpu", torch.float32
        args.seqs, args.dims, args.batch, args.heads, args.reps = [64, 128], [16, 32], 1, 2, 2
    elif torch.cuda.is_available():
        device, dtype = "cuda", torch.bfloat16
    else:
        sys.exit("benchmarks/fused_kernels.py measures CUDA kernels; without a GPU run it with --cpu-smoke")

    names = variants()
    memory_unit = "saved MB" if device == "cpu" else "peak MB"
    print(f"torch {torch.__version__}, {device}"
          f"{' ' + torch.cuda.get_device_name() if device == 'cuda' else ' (triton interpreter)'}, {dtype}, "
          f"B={args.batch}, H={args.heads}, fwd+bwd of the attention core, triton "
          f"{'available' if triton_kernels.triton_available() else 'missing'}")
    results = {}  # (name, t, d) -> (path, ms, bytes)
    for d in args.dims:
        for t in args.seqs:
            print(f"\nT={t}, d={d}")
            print(f"{'variant':<16}{'family':<12}{'path':<8}{'ms':>9}{'x softmax':>10}{'target':>7}"
                  f"{memory_unit:>10}{'x softmax':>10}")
            for name, fam in names.items():
                results[name, t, d] = measure(name, fam, args.batch, args.heads, t, d, device, dtype, args.reps)
            _, base_ms, base_mem = results["softmax", t, d]
            for name, fam in names.items():
                path, ms, mem = results[name, t, d]
                ratio = ms / base_ms
                flag = "  over target" if device == "cuda" and ratio > TARGET[fam] else ""  # CPU times mean nothing
                print(f"{name:<16}{fam:<12}{path:<8}{ms:>9.3f}{ratio:>10.2f}{TARGET[fam]:>7.2f}"
                      f"{mem / 2**20:>10.2f}{mem / base_mem:>10.2f}{flag}")

    small, large = (4096, 16384) if {4096, 16384} <= set(args.seqs) else (args.seqs[-2], args.seqs[-1])
    if len(args.seqs) >= 2:
        print(f"\nmemory ratio T={large} / T={small} ({large // small}x longer: ~{large // small} for O(T), "
              f"~{(large // small) ** 2} for O(T^2))")
        print(f"{'variant':<16}" + "".join(f"{'d=' + str(d):>10}" for d in args.dims))
        for name in names:
            print(f"{name:<16}" + "".join(f"{results[name, large, d][2] / results[name, small, d][2]:>10.2f}"
                                          for d in args.dims))

    t_report = 4096 if 4096 in args.seqs else max(args.seqs)
    ratios = [results[name, t_report, d][1] / results["softmax", t_report, d][1]
              for name in names if name != "softmax" for d in args.dims]
    worst = max(float("inf") if ratio != ratio else ratio for ratio in ratios)  # out of memory (nan) is worst
    label = f"{t_report // 1024}k" if t_report % 1024 == 0 else str(t_report)
    print(f"worst_fused_over_softmax_T{label}={worst:.3f}")


if __name__ == "__main__":
    main()
