"""The weight interventions of ``interventions`` (registered there with ``@intervention``,
imported by it, so ``INTERVENTIONS`` always holds them); each edits weights in place and
puts back exactly what it overwrote.

- ``super_weight``: Yu et al. 2024, "The Super Weight in Large Language Models" (arXiv
  2411.07191; mengxiayu/LLMSuperWeight, analyze.py ``plot_down_proj_input_output`` and
  ``check_module_hidden_states``). In every layer they take the largest-|value| entry of the
  FFN down projection's input and of its output over the whole forward and report the layer
  when that value exceeds 50 in magnitude (``SPIKE``); where both the input and the output
  spike, the super weight is the one scalar W[row, column] of that down projection, row the
  output spike's channel (the super activation) and column the input spike's channel (their
  ``SUPER_WEIGHTS_MAP`` coordinates, (layer, row, column) of ``mlp.down_proj.weight``). It is
  set to 0, one per layer found. The output is not probed: it is computed exactly from the
  probed input, x @ W.T + bias, in float32.
- ``super_column``: in every FFN down projection whose top input channel is its top weight
  column (``weights.channel_alignment``), that whole column (one FFN unit's output) is set to
  0: the seed paper's weight outlier; the row of its largest entry is reported too.
"""

from __future__ import annotations

import torch

from outlier_lab.metrics.activations import f32
from outlier_lab.metrics.weights import channel_alignment, column_ratios
from outlier_lab.probe.families import projection_weight
from outlier_lab.pretrained.interventions import Edit, Plan, intervention

# Yu et al.'s spike threshold: plot_down_proj_input_output reports the layers whose down_proj
# input (output) has a largest |value| above 50 (`abs(value) > 50`). Not one of the Thresholds:
# the project's massive_abs is Sun et al.'s, a different criterion on the residual stream.
SPIKE = 50.0


def top_entry(t: torch.Tensor) -> tuple[float, list[int]]:
    """The signed value of ``t``'s largest-|value| entry and its index."""
    flat = t.reshape(-1)
    i = int(flat.abs().argmax())
    return flat[i].item(), [int(j) for j in torch.unravel_index(torch.tensor(i), t.shape)]


@torch.no_grad()
def find_super_weights(downs, down_inputs) -> list[dict]:
    """One dict per layer whose down projection's input and output both spike (largest |value|
    > SPIKE): layer, row (output spike channel), column (input spike channel), value
    (W[row, column]), input, output (the spikes) and input_at, output_at ([sequence, token])."""
    found = []
    for layer, (down, x) in enumerate(zip(downs, down_inputs)):
        x = f32(x)
        x_value, x_at = top_entry(x)
        if not abs(x_value) > SPIKE:  # no input spike: the output need not be computed
            continue
        W = projection_weight(down)
        y = x @ f32(W).to(x.device).T
        if (bias := getattr(down, "bias", None)) is not None:
            y += f32(bias).to(x.device)
        y_value, y_at = top_entry(y)
        if abs(y_value) > SPIKE:
            row, col = y_at[-1], x_at[-1]
            found.append({"layer": layer, "row": row, "column": col, "value": W[row, col].item(),
                          "input": x_value, "output": y_value, "input_at": x_at[:-1], "output_at": y_at[:-1]})
    return found


@intervention("super_weight")
def super_weight(plan: Plan) -> Edit:
    downs = plan.family.down_projections(plan.model)
    found = find_super_weights(downs, plan.result.down_input)

    @torch.no_grad()
    def apply(undo):
        for w in found:
            W = projection_weight(downs[w["layer"]])  # a view: GPT-2's Conv1D is edited through its transpose
            row, col = w["row"], w["column"]
            undo.append(lambda W=W, row=row, col=col, old=W[row, col].clone(): W.data[row, col].copy_(old))
            W[row, col] = 0

    def summary():
        details = {"weights": [dict(w) for w in found]}
        if not found:
            return f"nothing: no down projection has both an input and an output spike (|x| > {SPIKE:g})", details
        return "zeroed super weights " + ", ".join(
            f"layer {w['layer']} W[{w['row']}, {w['column']}] = {w['value']:.4g} (input spike {w['input']:.4g} "
            f"on channel {w['column']}, output spike {w['output']:.4g} on channel {w['row']})" for w in found), details

    return Edit("super_weight", apply, summary)


@intervention("super_column")
def super_column(plan: Plan) -> Edit:
    downs = plan.family.down_projections(plan.model)
    columns = []  # (layer, column, row of its largest |W|, column ratio)
    for layer, (down, x) in enumerate(zip(downs, plan.result.down_input)):
        W = projection_weight(down)
        align = channel_alignment(x, W)
        if align["aligned"]:
            col = align["weight_column"]
            columns.append((layer, col, int(W[:, col].abs().argmax()), column_ratios(W)[col].item()))

    @torch.no_grad()
    def apply(undo):
        for layer, col, _, _ in columns:
            W = projection_weight(downs[layer])  # a view: GPT-2's Conv1D is edited through its transpose
            undo.append(lambda W=W, col=col, old=W[:, col].clone(): W.data[:, col].copy_(old))
            W[:, col] = 0

    def summary():
        details = {"columns": [{"layer": l, "column": c, "row": r, "ratio": round(q, 3)} for l, c, r, q in columns]}
        if not columns:
            return "nothing: no down projection's top input channel is its top weight column", details
        return "zeroed down-projection columns " + ", ".join(
            f"layer {l} column {c} (ratio {q:.3g}, largest at row {r})" for l, c, r, q in columns), details

    return Edit("super_column", apply, summary)
