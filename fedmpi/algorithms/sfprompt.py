"""SFPrompt: split federated prompt tuning with dataset pruning and local-loss steps.

The client trains a soft prompt (in its head) and its tail; the head's
pre-trained layers and the server's body are frozen: the server runs the body
forward and backward only to hand the gradient back to the prompt, and holds
no trainable state. A client's round:

1. EL2N pruning: score every local sample by ||softmax(f(x)) - onehot(y)||_2
   with f the head->tail shortcut (no traffic), keep the hardest ceil(gamma*n);
2. split training on the kept samples: ceil(gamma * train.local_steps) steps
   (the same passes over the kept data that SplitFed makes over all of it), so
   fewer samples cross the link;
3. `local_loss_steps` steps through the shortcut (no traffic at all).

With `prune_stratified`, the kept count is shared among classes (see `hardest`).

Prompt + tail are FedAvg'd each round.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from fedmpi.algorithms.splitfed import SplitFed, SplitOptions
from fedmpi.data.federated import Encoded
from fedmpi.engine.training import Batch, LocalStats, to_device
from fedmpi.metering.flops import FlopMeter, shape_key
from fedmpi.metering.formulas import optimizer_step_flops
from fedmpi.models.split import SplitModel
from fedmpi.options import at_least, in_range, option, positive


def keep_count(n: int, ratio: float) -> int:
    """ceil(ratio * n), immune to float noise (0.3 * 10 is 3.0000000000000004)."""
    return min(n, max(1, math.ceil(round(ratio * n, 9))))


@torch.no_grad()
def el2n_scores(split: SplitModel, batches: Iterator[tuple[np.ndarray, Batch]], device: torch.device,
                meter: FlopMeter | None = None) -> tuple[np.ndarray, int]:
    """EL2N score of every sample through the head->tail shortcut, and the FLOPs spent."""
    split.eval()
    scores, flops = [], 0
    for _, batch in batches:
        batch = to_device(batch, device)
        if meter is None:
            logits = split.shortcut(batch)
        else:
            logits, f = meter.run(("el2n", shape_key(batch)), lambda: split.shortcut(batch))
            flops += f
        onehot = torch.nn.functional.one_hot(batch["labels"], logits.shape[-1]).to(logits.dtype)
        scores.append(torch.linalg.vector_norm(logits.softmax(-1) - onehot, dim=-1).cpu())
    return torch.cat(scores).numpy(), flops


def hardest(scores: np.ndarray, ratio: float, labels: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ceil(ratio * n) highest scores (ties: lower index first), sorted.

    With `labels`, the same number is kept but shared among classes in
    proportion to their counts (largest remainder), hardest first within each
    class: a near-chance model finds a whole class "hard", and plain EL2N would
    then train a round on that class alone."""
    k = keep_count(len(scores), ratio)
    if labels is None:
        return np.sort(np.argsort(-scores, kind="stable")[:k])
    classes, counts = np.unique(labels, return_counts=True)
    exact = k * counts / len(scores)
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[:k - quota.sum()]:
        quota[i] += 1
    kept = []
    for y, q in zip(classes, quota):
        idx = np.flatnonzero(labels == y)
        kept.append(idx[np.argsort(-scores[idx], kind="stable")[:q]])
    return np.sort(np.concatenate(kept))


def kept_batches(data: Encoded, kept: np.ndarray, rng: np.random.Generator, batch_size: int) -> Iterator[Batch]:
    """Endless epoch-wise shuffled batches of the kept samples."""
    bs = min(batch_size, len(kept))
    while True:
        order = kept[rng.permutation(len(kept))]
        for pos in range(0, len(order) - bs + 1, bs):
            yield data.batch(order[pos:pos + bs])


@dataclass
class SFPromptOptions(SplitOptions):
    split_tail_layers: int = option(1, check=at_least(0), help="encoder layers in the client tail")
    prompt_tokens: int = option(10, check=positive, help="soft-prompt vectors (sfprompt tunes a prompt: >= 1)")
    prune_ratio: float = option(0.5, check=in_range(0, 1, low_open=True),
                                help="gamma: keep the hardest ceil(gamma * n) samples (EL2N)")
    prune_stratified: bool = option(False, help="share the kept count among classes by their counts")
    local_loss_steps: int = option(1, check=at_least(0), help="head->tail shortcut steps per round, no traffic")


class SFPrompt(SplitFed):
    name = "sfprompt"
    Options = SFPromptOptions

    def choose_trainable(self) -> None:
        """Prompt + tail train; the head's layers and the server's body are frozen."""
        for p in self.split.parameters():
            p.requires_grad_(False)
        for p in [self.split.prompt, *self.split.tail_params()]:
            p.requires_grad_(True)

    def split_steps(self, client: int) -> int:
        return math.ceil(round(self.opts.prune_ratio * self.ctx.cfg.train.local_steps, 9))

    def train_client(self, client: int, rnd: int) -> LocalStats:
        ctx, cfg = self.ctx, self.ctx.cfg
        stats = LocalStats()
        scores, stats.flops = el2n_scores(self.split, ctx.data.client_all(client, cfg.train.eval_batch_size),
                                          ctx.device, ctx.meter)
        labels = ctx.data.client(client).labels.numpy() if self.opts.prune_stratified else None
        kept = hardest(scores, self.opts.prune_ratio, labels)
        batches = kept_batches(ctx.data.client(client), kept, np.random.default_rng([cfg.seed, rnd, client, 0x5F9]),
                               cfg.train.batch_size)
        opt = ctx.optimizer(self.params)
        for _ in range(self.split_steps(client)):
            self.client_step(client, next(batches), opt, stats)
        for _ in range(self.opts.local_loss_steps):
            stats.flops += self.local_loss_step(next(batches), opt)
        return stats

    def local_loss_step(self, batch: Batch, opt: torch.optim.Optimizer) -> int:
        """Prompt + tail through the head->tail shortcut: client compute only, no traffic."""
        split = self.split
        batch = to_device(batch, self.ctx.device)
        split.train()
        opt.zero_grad(set_to_none=True)

        def step() -> torch.Tensor:
            loss = split.loss(split.shortcut(batch), batch["labels"])
            loss.backward()
            return loss

        key = ("local-loss", shape_key(batch))
        with self.ctx.memory.measure(key, split, opt):
            _, flops = self.ctx.meter.run(key, step)
            flops += optimizer_step_flops(opt)
            opt.step()
        return flops

    def report(self) -> dict[str, object]:
        out = super().report()
        out.update(prune_ratio=self.opts.prune_ratio, prune_stratified=self.opts.prune_stratified,
                   local_loss_steps=self.opts.local_loss_steps)
        return out
