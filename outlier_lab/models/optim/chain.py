"""One optimizer object that owns several: Lightning's automatic optimization, the LR
schedule (a LambdaLR over ``param_groups``), gradient clipping and checkpointing all expect
a single ``torch.optim.Optimizer``; Muon + AdamW (``muon.py``) are two."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class ChainedOptimizer(torch.optim.Optimizer):
    """Steps each inner optimizer in turn. ``param_groups`` is the inner optimizers' groups,
    the same dict objects, in order, so a scheduler that writes ``group["lr"]`` reaches them;
    ``state`` maps every parameter to its inner optimizer's state. ``state_dict`` is torch's
    usual format (``state`` by parameter index, ``param_groups`` with indices), the inner
    dicts concatenated with their indices offset, and ``load_state_dict`` splits it back, so
    a checkpoint restores every inner optimizer exactly."""

    def __init__(self, optimizers: Iterable[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)
        # Optimizer.__init__ adds the inner groups themselves (the same dicts) and checks that
        # no parameter appears twice across them.
        super().__init__([g for opt in self.optimizers for g in opt.param_groups], {})

    @property
    def state(self) -> dict:
        """Parameter -> its state (the inner optimizers' own dicts, so in-place edits reach them,
        as Lightning's move of the state to the device does)."""
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    @state.setter
    def state(self, value) -> None:  # Optimizer.__init__ sets an empty one; the inner optimizers hold it
        pass

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def _sync_groups(self) -> None:
        # in place: a LambdaLR and Lightning's optimizer wrapper hold this very list
        self.param_groups[:] = [g for opt in self.optimizers for g in opt.param_groups]

    def add_param_group(self, param_group: dict) -> None:
        if not hasattr(self, "optimizers") or any(param_group is g for o in self.optimizers for g in o.param_groups):
            super().add_param_group(param_group)  # Optimizer.__init__ adding an inner group
        else:
            raise NotImplementedError("add the group to one of ChainedOptimizer.optimizers")

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for opt in self.optimizers:
            inner = opt.state_dict()
            state.update({index + offset: s for index, s in inner["state"].items()})
            groups += [{**g, "params": [index + offset for index in g["params"]]} for g in inner["param_groups"]]
            offset += sum(len(g["params"]) for g in inner["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = list(state_dict["param_groups"])
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the state dict has {len(groups)} parameter groups, this optimizer "
                             f"{len(self.param_groups)}: it was saved by another optimizer or model")
        offset = 0
        for opt in self.optimizers:
            mine, groups = groups[:len(opt.param_groups)], groups[len(opt.param_groups):]
            size = sum(len(g["params"]) for g in mine)
            opt.load_state_dict({
                "state": {i - offset: s for i, s in state_dict["state"].items() if offset <= i < offset + size},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in mine],
            })
            offset += size
        self._sync_groups()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(type(o).__name__ for o in self.optimizers)})"
