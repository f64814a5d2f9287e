"""Compressed transport codecs on the seam of fedmpi/net/codec.py, one file per family.

  half.py     fp16, bf16       half-precision casts
  integer.py  int8, int4       blockwise absmax integers (optional stochastic rounding)
  nf4.py      nf4              QLoRA NormalFloat4, blockwise absmax
  sparse.py   topk, randk      sparsification (indices or a seed, plus values)

Shared: wire.py (the self-describing header), base.py (error feedback, keyed
randomness), blocks.py (the blockwise machinery). Every lossy codec takes
`error_feedback: true`. Names are registered in fedmpi/registry.py CODECS.
"""
