"""The round engine: it owns the loop; algorithms, tasks, codecs and strategies plug into it."""
