"""The per-layer fast-path check of tests/test_gpu.py (tests/layer_outputs.py), run here on CPU:
every variant's backend=auto GPT under CPU bf16 autocast against its fp32 eager reference,
and planted faults that the check must flag in the right layer while the loss barely moves."""

from __future__ import annotations

import pytest
import torch

from outlier_lab.models.attention import registered_names
from tests.layer_outputs import BF16_REL_MAX, BF16_REL_NORM, compare_fast_path, mismatched_layers

SIZES = dict(n_head=4, head_size=16, block_size=64)  # CPU-sized; tests/test_gpu.py runs 4 x 64 x 256


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scaled_output(layer: int, factor: float):
    """A fault: the attention output of one block multiplied by ``factor``, as a kernel that
    mis-normalises its rows by that much would give."""
    def plant(model):
        model.transformer.h[layer].attn.register_forward_hook(lambda module, args, out: out * factor)
    return plant


@pytest.mark.parametrize("name", registered_names())
def test_every_variant_under_cpu_bf16_autocast_matches_fp32_in_every_layer(name):
    """Catches a CPU path that is wrong under autocast in any layer (a dtype lost, a mask or
    scale dropped), and a comparison that ran no bf16 at all (errors of exactly 0)."""
    mismatched, errors, floor, _, _ = compare_fast_path(name, "cpu", **SIZES)
    assert mismatched == {}, f"{name}: layers over their bf16 bound (rel norm, rel max): {mismatched}"
    assert all(norm > 1e-4 for norm, _ in errors), f"{name}: no bf16 rounding seen, was autocast on? {errors}"
    assert len(errors) == len(floor) == 2


@pytest.mark.parametrize("name", ["softmax", "attn_bias", "explicit_scale"])
def test_a_five_percent_fault_in_the_last_layer_is_flagged_there_while_the_loss_moves_under_2_percent(name):
    """The old GPU test (loss within 2%) passes this fault; the per-layer check names the layer,
    and only it (the first layer is untouched)."""
    mismatched, errors, _, ref_loss, fast_loss = compare_fast_path(name, "cpu", fault=scaled_output(1, 1.05),
                                                                   **SIZES)
    assert abs(fast_loss - ref_loss) < 0.02 * ref_loss  # what the loss-only test accepted
    assert list(mismatched) == [1], errors
    assert errors[1][0] == pytest.approx(0.05, abs=0.01)  # the planted 5%, on top of bf16 rounding


def test_a_fault_in_the_first_layer_is_flagged_from_that_layer_on():
    """A fault upstream shows in its own layer first (and may carry on into the next)."""
    mismatched, errors, _, _, _ = compare_fast_path("softmax", "cpu", fault=scaled_output(0, 0.9), **SIZES)
    assert min(mismatched) == 0, errors


def test_the_bounds_are_the_fixed_ones_or_twice_the_eager_bf16_error_and_nan_fails():
    """Catches a bound that ignores the floor (softpick would fail on bf16 rounding alone), one
    that takes the floor without the factor, or a NaN output that slips through a comparison."""
    ref = [torch.ones(4, 4)]
    off = lambda rel: [torch.ones(4, 4) * (1 + rel)]  # noqa: E731  (relative norm and max error = rel)
    assert mismatched_layers(off(0.02), ref) == {}  # within the fixed bounds
    assert list(mismatched_layers(off(0.05), ref)) == [0]  # over them
    assert mismatched_layers(off(0.05), ref, floor=[(0.03, 0.03)]) == {}  # under 2 x a 3% floor
    assert list(mismatched_layers(off(0.07), ref, floor=[(0.03, 0.03)])) == [0]  # over 2 x 3%
    assert list(mismatched_layers([torch.full((4, 4), float("nan"))], ref)) == [0]
    assert BF16_REL_NORM < 0.05 and BF16_REL_MAX < 0.05  # a 5% error in one layer is always over
