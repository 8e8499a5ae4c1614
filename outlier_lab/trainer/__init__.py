"""What the Lightning Trainer is given besides the model (configs/trainer/, configs/logger/,
train.py): ``checkpoint_io`` (checkpoints written whole or not at all), ``csv_logger``
(metrics.csv kept across resumption), ``wandb_logger`` (wandb without a setting it warns
about) and ``step_budget`` (a step that cannot fit the machine refused before training).
Lightning plumbing, not model code: it imports nothing of ours but the errors."""
