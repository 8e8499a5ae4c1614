"""What the Lightning Trainer is given besides the model (configs/trainer/, train.py):
``checkpoint_io`` (checkpoints written whole or not at all) and ``csv_logger`` (metrics.csv
kept across resumption). Lightning plumbing, not model code: it imports nothing of ours."""
