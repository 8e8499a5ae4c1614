"""Models: the GPT, its attention variants, and the LightningModule that trains it."""
