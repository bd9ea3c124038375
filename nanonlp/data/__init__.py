"""Data: named data sets, file readers, tokenizers, and batching."""
