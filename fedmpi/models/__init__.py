"""Backbones (Hugging Face) and the fine-tuning methods that pick what trains."""
