"""Federated algorithms: each the few hooks that make it different, on the engine (fedmpi.engine)."""
