"""Codecs: encode + decode time, wire bytes, compression vs fp32 and max error of
every transport codec, on a full fine-tuning MiniLM update (22.7M fp32 values)
and a LoRA-sized one (0.6M). The engine encodes every client's update every
round, so a codec must cost well under one local training step (~0.3-1 s here).

  flock /tmp/fedmpi-heavy.lock python -m bench.codecs [--reps N] [--sizes 22713986,600000]

The update is Gaussian with std 1e-3 (fine-tuning deltas are of that order).
Times are the median (and min) over reps of one encode + one decode, the reps
interleaved across codecs; `transmit+ef` rows time Codec.transmit with error
feedback on (adds the residual add and store).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import table
from fedmpi.net.codec import CodecKey, Identity
from fedmpi.registry import CODECS

MINILM_NUMEL = 22_713_986
LORA_NUMEL = 600_000

# (label, registry name, options)
CASES = [
    ("fp32", "fp32", {}),
    ("fp16", "fp16", {}),
    ("bf16", "bf16", {}),
    ("int8", "int8", {}),
    ("int8 sr", "int8", {"stochastic_rounding": True}),
    ("int8 b=256", "int8", {"block_size": 256}),
    ("int4", "int4", {}),
    ("int4 sr", "int4", {"stochastic_rounding": True}),
    ("nf4", "nf4", {}),
    ("topk 1%", "topk", {"fraction": 0.01}),
    ("topk 10% (bitmap)", "topk", {"fraction": 0.1}),
    ("topk 1% fp16", "topk", {"fraction": 0.01, "values": "fp16"}),
    ("randk 1%", "randk", {"fraction": 0.01}),
]
EF_CASES = [("int8 transmit+ef", "int8", {"error_feedback": True}),
            ("topk 1% transmit+ef", "topk", {"fraction": 0.01, "error_feedback": True})]


def make(name: str, opts: dict):
    cls = CODECS.get(name)
    return cls(cls.Options(name=name, **opts))


def once(codec, x: torch.Tensor, key: CodecKey, state: dict | None) -> tuple[float, int, torch.Tensor]:
    """Seconds of one encode + decode (or one transmit with `state`), the bytes, the decoded tensor."""
    t0 = time.perf_counter()
    if state is not None or isinstance(codec, Identity):
        out = codec.transmit(x, key, state=state)
        nbytes, y = out.nbytes, out.received
    else:
        wire = codec.encode(x, key)
        y = codec.decode(wire, x)
        nbytes = wire.numel()
    return time.perf_counter() - t0, nbytes, y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sizes", default=f"{MINILM_NUMEL},{LORA_NUMEL}")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    ef_labels = {c[0] for c in EF_CASES}
    for n in (int(s) for s in args.sizes.split(",")):
        x = torch.randn(n, generator=torch.Generator().manual_seed(0)) * 1e-3
        cases = [(label, make(name, opts), {} if label in ef_labels else None)
                 for label, name, opts in CASES + EF_CASES]
        times: dict[str, list[float]] = {label: [] for label, _, _ in cases}
        result: dict[str, tuple[int, float]] = {}
        # Interleaved: a burst of load on the shared machine hits one rep of every
        # codec, not every rep of one; the first rep warms the allocator and is dropped.
        for rep in range(args.reps + 1):
            for label, codec, state in cases:
                secs, nbytes, y = once(codec, x, CodecKey(0, rep, 3, "update"), state)
                if rep:
                    times[label].append(secs)
                result[label] = (nbytes, float((x - y).abs().max()))
        rows = []
        for label, _, _ in cases:
            nbytes, err = result[label]
            rows.append([label, f"{statistics.median(times[label]) * 1e3:.1f}", f"{min(times[label]) * 1e3:.1f}",
                         f"{nbytes:,}", f"{4 * n / nbytes:.2f}x", f"{err:.2e}"])
        print(f"\n{n:,} values (max |x| = {float(x.abs().max()):.2e})\n")
        print(table(["codec", "median ms", "min ms", "bytes", "vs fp32", "max |err|"], rows))


if __name__ == "__main__":
    main()
