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
  set to 0, one per layer found. Both are probed, as Yu et al. hook them: the output is the
  projection's own (the model's dtype), reduced with the input window by window.
- ``super_column``: in every FFN down projection whose top input channel is its top weight
  column (``weights.channel_alignment``), that whole column (one FFN unit's output) is set to
  0: the seed paper's weight outlier; the row of its largest entry is reported too.
"""

from __future__ import annotations

import torch

from outlier_lab.metrics.weights import channel_alignment, column_ratios
from outlier_lab.probe.families import projection_weight
from outlier_lab.pretrained.interventions import Edit, Plan, intervention

# Yu et al.'s spike threshold: plot_down_proj_input_output reports the layers whose down_proj
# input (output) has a largest |value| above 50 (`abs(value) > 50`). Not one of the Thresholds:
# the project's massive_abs is Sun et al.'s, a different criterion on the residual stream.
SPIKE = 50.0


def top_entry(rows: dict[str, torch.Tensor]) -> tuple[float, list[int]]:
    """The signed value of the largest-|value| entry over the windows and its [sequence,
    token, channel], from the per-sequence top entries of ``measures.top_entries``."""
    b = int(rows["value"].abs().argmax())  # the first on a tie, as a flat argmax over (b, t, c)
    return rows["value"][b].item(), [b, *rows["at"][b].tolist()]


def find_super_weights(downs, down_parts: list[dict]) -> list[dict]:
    """One dict per layer whose down projection's input and output both spike (largest |value|
    > SPIKE): layer, row (output spike channel), column (input spike channel), value
    (W[row, column]), input, output (the spikes) and input_at, output_at ([sequence, token]).
    ``down_parts``: per layer, the probe's per-sequence top entries of the down projection's
    input and output (``activation_outliers``' partials)."""
    found = []
    for layer, (down, part) in enumerate(zip(downs, down_parts)):
        x_value, x_at = top_entry(part["top_in"])
        y_value, y_at = top_entry(part["top_out"])
        if abs(x_value) > SPIKE and abs(y_value) > SPIKE:
            row, col = y_at[-1], x_at[-1]
            found.append({"layer": layer, "row": row, "column": col, "value": projection_weight(down)[row, col].item(),
                          "input": x_value, "output": y_value, "input_at": x_at[:-1], "output_at": y_at[:-1]})
    return found


@intervention("super_weight")
def super_weight(plan: Plan) -> Edit:
    downs = plan.family.down_projections(plan.model)
    found = find_super_weights(downs, plan.parts["activation_outliers"]["down"])

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
    for layer, (down, act_max) in enumerate(zip(downs, plan.parts["weight_outliers"]["act_max"])):
        W = projection_weight(down)
        align = channel_alignment(act_max, W)
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
