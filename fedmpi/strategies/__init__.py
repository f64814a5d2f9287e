"""Strategies: how the server turns client updates into the next global state."""
