"""Golden outputs: record a fixed set of tiny runs, or compare against a recording.

A refactor is proven by these: the metrics and ledger of every run (minus
wall-clock fields), the summary, and a digest of every tensor of the final
checkpoint must be identical before and after.

    python scripts/golden.py record tests/golden/engine.json   # before the change
    python scripts/golden.py compare tests/golden/engine.json  # after it: exit 1 on a difference
    python scripts/golden.py compare tests/golden/engine.json --only fedavg-lora

Runs use the public command line only (`fedmpi launch`), so the same script
drives old and new code. One run at a time (a few seconds each on 2 cores).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDMPI_SHARED_DATA", ROOT.parent / "shared" / "data"))
CONFIGS = ROOT / "configs"

# Fields that depend on the machine, the wall clock or the rank count, never compared.
VOLATILE_METRICS = {"wall_seconds"}
VOLATILE_SUMMARY = {"wall_seconds", "peak_memory_bytes"}

BASE = ("federation.rounds=3", "federation.num_clients=7", "federation.clients_per_round=5",
        "network.heterogeneity=0.5", "compute.heterogeneity=0.3", "data.partition=dirichlet",
        "output.checkpoint=true")
FEDPFT = ("model.num_layers=4", "algorithm=fedpft", "federation.rounds=4", "train.lr=0.003",
          "train.local_steps=6", "method.name=lora", "method.r=4", "options.distill_steps=8", "options.align_every=2",
          "options.align_steps=3", "options.align_neurons=3", "output.checkpoint=true")
SPLIT = ("federation.rounds=2", "train.local_steps=3", "output.checkpoint=true")

# name -> (config, ranks, overrides, env, resume-after-kill)
CASES: dict[str, tuple[str, int, tuple[str, ...], dict[str, str], bool]] = {
    "fedavg-full": ("tiny.yaml", 3, BASE, {}, False),
    "fedavg-full-5ranks": ("tiny.yaml", 5, BASE, {}, False),
    **{f"fedavg-{m}": ("tiny.yaml", 3, BASE[:1] + (f"method.name={m}", "train.lr=0.01", "output.checkpoint=true"),
                       {}, False)
       for m in ("lora", "federa", "prompt", "adapter", "bitfit", "head")},
    "fedavg-federa-niter": ("tiny.yaml", 3, ("federation.rounds=2", "method.name=federa", "method.pissa_niter=2",
                                             "output.checkpoint=true"), {}, False),
    "fedavg-float32": ("tiny.yaml", 3, BASE + ("federation.aggregation_dtype=float32",), {}, False),
    "fedavg-dropout-deadline": ("tiny.yaml", 3, BASE + ("federation.dropout=0.3", "federation.deadline_s=6.0"),
                                {}, False),
    "fedavg-overselection": ("tiny.yaml", 3, BASE + ("federation.over_selection=1.4",), {}, False),
    "fedavg-backdoor": ("tiny.yaml", 3, BASE + ("attack.malicious_fraction=0.5", "attack.poison_rate=0.5",
                                                "attack.target_label=1"), {}, False),
    "fedavg-resume": ("tiny.yaml", 3, ("federation.rounds=4", "federation.dropout=0.3", "output.checkpoint=true"),
                      {"FEDMPI_KILL_AT_ROUND": "2", "FEDMPI_KILL_RANK": "2"}, True),
    "splitfed-v2": ("tiny_splitfed.yaml", 3, SPLIT, {}, False),
    "splitfed-v1": ("tiny_splitfed.yaml", 3, SPLIT + ("options.splitfed_version=v1",), {}, False),
    "sfprompt": ("tiny_sfprompt.yaml", 3, SPLIT, {}, False),
    "sfprompt-stratified": ("tiny_sfprompt.yaml", 3, SPLIT + ("options.prune_stratified=true",), {}, False),
    "fedpft": ("tiny.yaml", 3, FEDPFT, {}, False),
    "fedpft-no-align": ("tiny.yaml", 3, FEDPFT + ("options.mode=no_align",), {}, False),
    "fedpft-resume": ("tiny.yaml", 3, FEDPFT, {"FEDMPI_KILL_AT_ROUND": "3"}, True),
    # The delta path (lossy codecs, error feedback through the state store, DP, server optimisers).
    "codec-int8-ef": ("tiny.yaml", 3, BASE + ("transport.up.name=int8", "transport.up.error_feedback=true"), {}, False),
    "codec-nf4-both": ("tiny.yaml", 3, BASE + ("transport.up.name=nf4", "transport.down.name=nf4"), {}, False),
    "codec-int4-sr-ef": ("tiny.yaml", 3, BASE + ("transport.up.name=int4", "transport.up.stochastic_rounding=true",
                                                 "transport.up.error_feedback=true"), {}, False),
    "codec-topk-ef-lora": ("tiny.yaml", 3, BASE[:1] + ("method.name=lora", "train.lr=0.01", "output.checkpoint=true",
                                                       "transport.up.name=topk", "transport.up.fraction=0.05",
                                                       "transport.up.error_feedback=true"), {}, False),
    "strategy-dp-fedadam": ("tiny.yaml", 3, BASE + ("strategy.privacy.name=dp", "strategy.privacy.clip=0.1",
                                                    "strategy.privacy.noise_multiplier=0.3",
                                                    "strategy.server.name=fedadam", "strategy.server.lr=0.01"),
                            {}, False),
    "strategy-median": ("tiny.yaml", 3, BASE + ("strategy.aggregator.name=median",), {}, False),
}
if SHARED_DATA.is_dir():
    CASES["vision-prompt"] = ("tiny.yaml", 3, ("model.name=tiny-vit", "data.name=mnist", f"data.path={SHARED_DATA}",
                                               "data.max_train_samples=300", "data.max_test_samples=100",
                                               "method.name=prompt", "method.num_virtual_tokens=2",
                                               "federation.rounds=2", "output.checkpoint=true"), {}, False)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _digests(checkpoint: Path) -> dict[str, str]:
    import torch

    if not checkpoint.exists():
        return {}
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]
    out = {}
    for key, t in sorted(state.items()):
        out[key] = hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
    return out


def _launch(out: Path, name: str, config: str, ranks: int, sets: tuple[str, ...], env: dict[str, str],
            resume: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fedmpi", "launch", "-n", str(ranks), str(CONFIGS / config)]
    for s in (f"output.dir={out}", f"name={name}", "output.progress=false", *sets):
        cmd += ["--set", s]
    if resume:
        cmd.append("--resume")
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **env)
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=900)


def run_case(name: str, out: Path) -> dict:
    config, ranks, sets, env, resume = CASES[name]
    proc = _launch(out, name, config, ranks, sets, env)
    if resume:  # the first launch was killed on purpose; continue it
        proc = _launch(out, name, config, ranks, sets, {}, resume=True)
    if proc.returncode != 0:
        raise RuntimeError(f"golden case {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    d = out / name
    summary = json.loads((d / "summary.json").read_text())
    return {
        "metrics": [{k: v for k, v in m.items() if k not in VOLATILE_METRICS} for m in _jsonl(d / "metrics.jsonl")],
        "ledger": _jsonl(d / "ledger.jsonl"),
        "summary": {k: v for k, v in summary.items() if k not in VOLATILE_SUMMARY},
        "checkpoint": _digests(d / "checkpoint.pt"),
    }


def diff(name: str, old: dict, new: dict) -> list[str]:
    """Human-readable differences between two recordings of one case."""
    out = []
    for part in ("metrics", "ledger"):
        a, b = old.get(part, []), new.get(part, [])
        if len(a) != len(b):
            out.append(f"{name}: {part}: {len(a)} rows before, {len(b)} after")
        for i, (x, y) in enumerate(zip(a, b)):
            for k in sorted(set(x) | set(y)):
                if x.get(k) != y.get(k):
                    out.append(f"{name}: {part}[{i}].{k}: {x.get(k)!r} -> {y.get(k)!r}")
    for part in ("summary", "checkpoint"):
        a, b = old.get(part, {}), new.get(part, {})
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out.append(f"{name}: {part}.{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("record", "compare"))
    p.add_argument("file", type=Path)
    p.add_argument("--only", nargs="*", default=None, help="case names (default: all)")
    p.add_argument("--ignore", nargs="*", default=[], metavar="FIELD",
                   help="fields to leave out of the comparison (e.g. transport_bytes), stated in the note")
    args = p.parse_args(argv)
    names = args.only or list(CASES)
    results = {}
    with tempfile.TemporaryDirectory(prefix="fedmpi-golden-") as tmp:
        for name in names:
            print(f"golden: {name} ...", file=sys.stderr, flush=True)
            results[name] = run_case(name, Path(tmp))
    if args.mode == "record":
        old = json.loads(args.file.read_text()) if args.file.exists() else {}
        old.update(results)
        args.file.parent.mkdir(parents=True, exist_ok=True)
        args.file.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")
        print(f"golden: recorded {len(results)} cases in {args.file}")
        return 0
    recorded = json.loads(args.file.read_text())
    problems = []
    for name in names:
        if name not in recorded:
            problems.append(f"{name}: not in the recording")
            continue
        lines = diff(name, recorded[name], results[name])
        problems += [line for line in lines if not any(f".{f}:" in line for f in args.ignore)]
    for line in problems:
        print(line)
    print(f"golden: {len(names)} cases, {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
