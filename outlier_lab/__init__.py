"""Outlier metrics, probes, callbacks, compression evaluation and the comparison report."""
