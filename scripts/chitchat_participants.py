"""Issue 13: per-participant perplexity on Chit Chat, seen vs unseen, before and after
federated LoRA (the plot beside configs/llm-chitchat-long.yaml's held-out loss).

For each finished run folder (trained with `output.checkpoint=true`), the model is
rebuilt from the run's own config.yaml, the checkpoint's trainable tensors loaded
into it, and each reply scored on its own. Two groups of participants:

- **seen**: the clients the run actually sampled in some round (recomputed from the
  seed with the engine's own sampler), scored on up to `--per-seen` of the training
  replies they trained on;
- **unseen**: the held-out participants (the same for every seed, chosen by id hash),
  scored on the first `--unseen` test replies (more than the run's own 64, for a
  distribution; the test split is the same for every seed).

A participant's perplexity is exp(mean NLL over its reply tokens). The untrained
model (round -1) is scored on the same replies. Writes participants.csv (one row per
seed x model x participant), participants.png (the distributions) and prints a
markdown table of medians per seed.

    python scripts/chitchat_participants.py runs/llm-chitchat-long-s0 runs/llm-chitchat-long-s1 \\
        runs/llm-chitchat-long-s2 --out docs/results/llm
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROWS = 16


def reply_losses(model: torch.nn.Module, encoded, idx: np.ndarray) -> list[tuple[float, int]]:
    """(sum of reply-token NLL, token count) of each row of `encoded` in `idx`."""
    from fedmpi.tasks.causal_lm import reply_nll

    out: list[tuple[float, int]] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(idx), ROWS):
            batch = encoded.batch(idx[start:start + ROWS])
            width = batch["input_ids"].shape[1]
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, -width:]
            for r in range(logits.shape[0]):
                out.append(reply_nll(logits[r:r + 1], batch["labels"][r:r + 1]))
    return out


def seen_clients(cfg) -> list[int]:
    from fedmpi.engine.sampling import sample_clients

    fed = cfg.federation
    seen: set[int] = set()
    for rnd in range(fed.rounds):
        seen.update(sample_clients(fed.num_clients, fed.clients_per_round, cfg.seed, rnd, fed.over_selection))
    return sorted(seen)


def perplexity(pairs: list[tuple[float, int]]) -> float:
    nll, n = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return math.exp(nll / max(1, n))


def score_run(run: Path, per_seen: int, unseen: int, base_cache: dict) -> list[dict]:
    """Rows (seed, model, group, participant, perplexity, replies, tokens, nll_sum) of one run."""
    from fedmpi.config import load_config
    from fedmpi.experiment import prepare
    from fedmpi.models.methods import trainable
    from fedmpi.net.flat import unflatten_into

    cfg = load_config(run / "config.yaml", [f"data.max_test_samples={unseen}"])
    prep = prepare(cfg)
    data = prep.federated_data(cfg.seed)
    train, test = prep.dataset.train, prep.dataset.test
    # group -> (participant, encoded split, its rows there, a key naming the replies across seeds)
    groups: dict[str, list[tuple[int, object, np.ndarray, tuple]]] = {"unseen": [], "seen": []}
    for owner in np.unique(test.owners):
        groups["unseen"].append((int(owner), data.test(), np.flatnonzero(test.owners == owner), ("unseen", int(owner))))
    for client in seen_clients(cfg):
        rows = data.parts[client][:per_seen]
        owners = np.unique(train.owners[rows])
        assert len(owners) == 1, "a natural client is one participant"
        groups["seen"].append((int(owners[0]), data.client(client), np.arange(len(rows)),
                               ("seen", tuple(int(r) for r in rows))))
    ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    rows_out = []
    for model_name in ("untrained", "federated"):  # as built (LoRA's B = 0: the base model), then trained
        if model_name == "federated":
            with torch.no_grad():
                unflatten_into(ck["state"]["trainable"], [p for _, p in trainable(prep.model)])
        for group, members in groups.items():
            for owner, encoded, idx, key in members:
                if model_name == "untrained" and key in base_cache:
                    pairs = base_cache[key]
                else:
                    pairs = reply_losses(prep.model, encoded, idx)
                    if model_name == "untrained":
                        base_cache[key] = pairs
                rows_out.append({"seed": cfg.seed, "model": model_name, "group": group, "participant": owner,
                                 "perplexity": perplexity(pairs), "replies": len(pairs),
                                 "tokens": sum(p[1] for p in pairs),
                                 "nll_sum": sum(p[0] for p in pairs)})
    return rows_out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, group in zip(axes, ("seen", "unseen")):
        for model_name, style in (("untrained", "--"), ("federated", "-")):
            for seed in sorted({r["seed"] for r in rows}):
                vals = np.sort([r["perplexity"] for r in rows
                                if r["group"] == group and r["model"] == model_name and r["seed"] == seed])
                if len(vals) == 0:
                    continue
                ax.plot(vals, np.arange(1, len(vals) + 1) / len(vals), style,
                        color="C0" if model_name == "federated" else "C1", alpha=0.8,
                        label=f"{model_name}" if seed == min(r["seed"] for r in rows) else None)
        ax.set_xscale("log")
        ax.set_title(f"{group} participants")
        ax.set_xlabel("per-participant perplexity (log)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of participants (CDF), one line per seed")
    axes[0].legend()
    fig.suptitle("SmolLM2-135M + federated LoRA on Chit Chat: seen vs unseen participants")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(rows: list[dict]) -> str:
    """Median per-participant perplexity and pooled perplexity per seed, group and model."""
    lines = ["| seed | group | participants | median ppl untrained | median ppl federated | pooled ppl untrained "
             "| pooled ppl federated | participants improved |", "|---|---|---|---|---|---|---|---|"]
    by = defaultdict(list)
    for r in rows:
        by[(r["seed"], r["group"], r["model"])].append(r)
    for seed in sorted({r["seed"] for r in rows}):
        for group in ("seen", "unseen"):
            u, f = by[(seed, group, "untrained")], by[(seed, group, "federated")]
            pooled = [math.exp(sum(x["nll_sum"] for x in g) / sum(x["tokens"] for x in g)) for g in (u, f)]
            fu = {x["participant"]: x["perplexity"] for x in u}
            better = sum(1 for x in f if x["perplexity"] < fu[x["participant"]])
            lines.append(f"| {seed} | {group} | {len(f)} | {statistics.median(x['perplexity'] for x in u):.1f} | "
                         f"{statistics.median(x['perplexity'] for x in f):.1f} | {pooled[0]:.1f} | {pooled[1]:.1f} | "
                         f"{better}/{len(f)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/results/llm"))
    ap.add_argument("--per-seen", type=int, default=4, help="training replies scored per seen participant")
    ap.add_argument("--unseen", type=int, default=128, help="test replies scored (held-out participants)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    a.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    cache: dict = {}
    for run in a.runs:
        rows += score_run(run, a.per_seen, a.unseen, cache)
    with open(a.out / "participants.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, a.out / "participants.png")
    print(table(rows))


if __name__ == "__main__":
    main()
