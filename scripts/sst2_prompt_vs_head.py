"""Issue 11 item 1: does the soft prompt learn? Prompt + head against head only on
SST-2 with the packaged MiniLM, over several seeds (the head trains and travels in
both, so only beating head-only shows the prompt learned).

Each run is one `fedmpi launch -n 3` of configs/sst2-prompt.yaml or
configs/sst2-head.yaml (5 rounds x 5 local steps x batch 16, 4 of 10 clients),
taken one at a time under the machine's shared lock; then a table of final
accuracy per seed, the mean and the spread (max - min) per method.

    python scripts/sst2_prompt_vs_head.py --seeds 0 1 2 [--set model.pooling=mean] [--tag mean]
    flock /tmp/fedmpi-heavy.lock python scripts/sst2_prompt_vs_head.py --no-lock ...   # one lock for all
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = "/tmp/fedmpi-heavy.lock"


def run(method: str, seed: int, sets: list[str], tag: str, out: Path, lock: bool = True) -> dict:
    name = f"sst2-{method}-{tag}-seed{seed}"
    summary = out / name / "summary.json"
    if not summary.exists():
        cmd = (["flock", LOCK] if lock else []) + [sys.executable, "-m", "fedmpi", "launch", "-n", "3", f"configs/sst2-{method}.yaml",
               "--set", f"seed={seed}", "--set", f"name={name}", "--set", f"output.dir={out}",
               "--set", "output.progress=false", "--set", "output.checkpoint=false"]
        for s in sets:
            cmd += ["--set", s]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return json.loads(summary.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["prompt", "head"])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--tag", default="cls")
    ap.add_argument("--out", default="runs")
    ap.add_argument("--no-lock", action="store_true",
                    help="the caller holds the shared lock for the whole set (flock LOCK python ...)")
    args = ap.parse_args()
    out = (ROOT / args.out).resolve()
    acc = {m: [] for m in args.methods}
    for seed in args.seeds:
        for m in args.methods:
            s = run(m, seed, args.sets, args.tag, out, lock=not args.no_lock)
            acc[m].append(s["final_accuracy"])
            print(f"{m} seed {seed}: accuracy {s['final_accuracy']:.4f} wall {s['wall_seconds']:.0f} s", flush=True)
    print(f"\n| method | {' | '.join(f'seed {s}' for s in args.seeds)} | mean | spread (max-min) |")
    print(f"|---|{'---|' * len(args.seeds)}---|---|")
    for m, a in acc.items():
        print(f"| {m} ({args.tag}) | {' | '.join(f'{x:.4f}' for x in a)} | {sum(a) / len(a):.4f} | "
              f"{max(a) - min(a):.4f} |")


if __name__ == "__main__":
    main()
