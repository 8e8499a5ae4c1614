"""Post-training compression protocols, scored by validation perplexity and by the divergence
of the compressed model's next-token distribution from the full-precision one.

Every protocol works on a deep copy of the model and never touches the trained weights: the
original's parameters and buffers are the same objects with the same bits afterwards, it has
no hooks left on it, and its train/eval flags are restored. Quantization is *fake*
quantization: quantize, then dequantize back to float, so the compressed model runs in the
original dtype and the only change is the rounding error. Activations are quantized or
clipped by forward hooks on the copy: on the inputs of its ``nn.Linear`` modules
(``w8a8_linear``, clipping), or on the outputs of every module that computes an activation,
the ``nn.Identity`` points that the model exposes included (``w8a8``).

Modules: ``quantizers`` (fake quantization of tensors), ``ranges`` (Bondarenko's range
estimators: MSE weight ranges, running min-max and percentiles), ``observers`` (calibration
of Linear-input ranges and percentiles), ``weights`` (weight quantization, pruning),
``activations`` (Linear-input quantizers and clipping), ``activation_points`` (Bondarenko's
quantization of every activation), ``smoothing`` (OS+ / SmoothQuant shift and scale),
``protocols`` (the protocols, registered by name), ``evaluation`` (perplexity, KL, top-1
agreement, the evaluation entry points), ``passes`` (working copies and hooked forward
passes). docs/compression.md defines every protocol and metric.

Sources:
- seed:        An et al. 2025, "Systematic Outliers in Large Language Models": 8-bit abs-max
               weight quantization and 50% magnitude pruning as outlier-sensitive probes.
- Bondarenko:  Bondarenko et al. 2023, "Quantizable Transformers" (NeurIPS; their code,
               qualcomm-ai-research/outlier-free-transformers): W8A8 of every activation
               with static running min-max (or percentile) ranges and MSE weight ranges,
               output head kept in full precision.
- SmoothQuant: Xiao et al. 2023, "SmoothQuant": per-channel scale s migrated from the
               activations into the next Linear's weights, s = max|X|^a / max|W|^(1-a).
- OS+:         Wei et al. 2023, "Outlier Suppression+": a per-channel shift z (the midpoint
               of the channel's range) before the scale, folded into the next Linear's bias.

Batches: calibration and validation batches are lists of (x, y) LongTensor pairs (B, T);
calibration uses only x. Functions that take "token batches" accept either bare id
tensors or such pairs.
"""

from outlier_lab.compression.activation_points import activation_points, quantize_activations
from outlier_lab.compression.activations import attach_input_quantizers, clip_activations
from outlier_lab.compression.evaluation import score_on_datamodule, evaluate_protocols, perplexity, print_results
from outlier_lab.compression.observers import calibrate_abs_percentiles, calibrate_input_ranges
from outlier_lab.compression.passes import HEAD
from outlier_lab.compression.protocols import PROTOCOLS, check_protocols, protocol
from outlier_lab.compression.quantizers import quantize_asymmetric, quantize_symmetric, quantize_to_range
from outlier_lab.compression.ranges import RunningRange, mse_weight_range, tail_percentiles
from outlier_lab.compression.smoothing import smooth_shift_scale
from outlier_lab.compression.weights import prune_magnitude, quantize_weights, quantize_weights_mse

__all__ = [
    "HEAD", "PROTOCOLS", "RunningRange", "activation_points", "attach_input_quantizers", "calibrate_abs_percentiles",
    "calibrate_input_ranges", "check_protocols", "clip_activations", "score_on_datamodule", "evaluate_protocols",
    "mse_weight_range", "perplexity", "print_results", "protocol", "prune_magnitude", "quantize_activations",
    "quantize_asymmetric", "quantize_symmetric", "quantize_to_range", "quantize_weights", "quantize_weights_mse",
    "smooth_shift_scale", "tail_percentiles",
]
