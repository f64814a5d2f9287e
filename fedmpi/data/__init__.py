"""Datasets (embedded, local files, hub), partitions, tokenisation, poisoning."""
