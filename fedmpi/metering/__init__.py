"""Instrumentation: the Ledger of bytes and FLOPs, the FLOP meter, memory."""
