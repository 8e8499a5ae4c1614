"""Corpora, tokenizers and the LightningDataModule that serves token windows."""
