"""The codec path's cost on a real round: MiniLM with LoRA and with full fine-tuning,
fp32 vs lossy codecs (int8 + error feedback, top-k 1% + error feedback, nf4), the
same rounds alternating inside one job order. Timed is the engine's round loop
(sum of metrics.jsonl wall_seconds after round 0, which pays the FLOP counts),
so start-up does not dilute the ratio. Target: codec / fp32 <= 1.1x.

  python -m bench.codec_round [--reps N] [--rounds R]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import Section, fedmpi_cmd, median, read_run, run_measured, shown, table

BASE = ("model.name=minilm", "model.max_length=32", "data.name=embedded", "data.max_train_samples=400",
        "data.max_test_samples=64", "federation.num_clients=4", "federation.clients_per_round=2",
        "train.local_steps=2", "train.batch_size=8", "federation.eval_every=1000", "output.checkpoint=false")
METHODS = {"lora": ("method.name=lora", "train.lr=0.005"), "full": ("method.name=full", "train.lr=0.0001"),
           # the round of configs/sst2-full.yaml (the compression campaign's): 10 clients, 4 a round,
           # 5 local steps of 16; its 10 error-feedback residuals (908 MB) spill past state.memory_mb
           "full-campaign": ("method.name=full", "train.lr=0.0001", "federation.num_clients=10",
                                    "federation.clients_per_round=4", "train.local_steps=5", "train.batch_size=16")}
CODECS = {
    "fp32": (),
    "int8+ef": ("transport.up.name=int8", "transport.up.error_feedback=true"),
    "topk1%+ef": ("transport.up.name=topk", "transport.up.fraction=0.01", "transport.up.error_feedback=true"),
    "nf4 both ways": ("transport.up.name=nf4", "transport.down.name=nf4"),
}


def loop_seconds(run: dict) -> float:
    return sum(m["wall_seconds"] for m in run["metrics"][1:])


def bench(reps: int = 2, rounds: int = 4, ranks: int = 3) -> Section:
    tmp = Path(tempfile.mkdtemp(prefix="bench_codec_"))
    times: dict[tuple[str, str], list[float]] = {}
    ratios: dict[tuple[str, str], float] = {}
    cmds = []
    for method, msets in METHODS.items():
        for rep in range(reps):
            order = list(CODECS) if rep % 2 == 0 else list(reversed(CODECS))
            for codec in order:
                name = f"{method}-{codec}-{rep}".replace('%', 'pct').replace(',', '').replace(' ', '_').replace('+', '_')
                cmd = fedmpi_cmd(ranks, tmp, name, *BASE, *msets, *CODECS[codec], f"federation.rounds={rounds}")
                run_measured(cmd, timeout=1800).check()
                times.setdefault((method, codec), []).append(loop_seconds(read_run(tmp / name)))
                if rep == 0 and method == "lora":
                    cmds.append(shown(cmd))
        base = median(times[(method, "fp32")])
        for codec in CODECS:
            ratios[(method, codec)] = median(times[(method, codec)]) / base
    rows = [[m, c, median(times[(m, c)]), ratios[(m, c)]] for m in METHODS for c in CODECS]
    worst = max(v for (m, c), v in ratios.items() if c != "fp32")
    body = (f"MiniLM (22.7M parameters; LoRA r=8 trains 0.6M), 4 clients, 2 per round, 2 local steps of 8 "
            "(the full-campaign row: configs/sst2-full.yaml's 10 clients, 4 per round, 5 local steps of 16), "
            f"{rounds} rounds, {ranks} ranks, {reps} repetitions alternating the codec order; timed: the round loop "
            "after round 0 (metrics wall_seconds), median over repetitions.\n\n"
            + table(["method", "codec", "loop s (median)", "÷ fp32"], rows)
            + f"\n\n**Worst codec / fp32 = {worst:.3f}×** (target ≤ 1.1×).")
    return Section("Codec path cost on a MiniLM round", body,
                   {"codec_round_ratio": worst, **{f"codec_{m}_{c}": v for (m, c), v in ratios.items()}}, cmds)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args()
    print(bench(a.reps, a.rounds).markdown())
