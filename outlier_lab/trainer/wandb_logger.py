"""Lightning's WandbLogger without wandb's deprecated ``anonymous`` setting.

Lightning passes ``anonymous`` to ``wandb.init`` on every run (None unless
``anonymous=True``), and wandb, which no longer has an anonymous mode, answers any value,
None included, with "The anonymous setting has no effect" on every run's console.
"""

from __future__ import annotations

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger, the same arguments, minus the ``anonymous`` key of the
    ``wandb.init`` arguments (``anonymous=True`` is accepted and, as in wandb, does nothing)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)
