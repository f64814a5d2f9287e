"""Tasks: what is learned and how it is scored (model head, batches, loss, metrics)."""
