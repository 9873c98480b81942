"""Measuring: the bench (methods side by side), the transformers peers, datasets, results, reports, tune,
verify-cost."""
