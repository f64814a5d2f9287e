"""SFPrompt (arXiv 2407.17533): split federated prompt tuning with local-loss updates and dataset pruning.

The paper's layout is the default: the client holds the head (the embedding
or patch-embedding layer, and the soft prompt) and the tail (pooler or final
LayerNorm, and the classifier); the server holds every transformer layer (the
body). Head and body are frozen: the server runs the body forward and backward
only to hand the gradient back to the prompt, and holds no trainable state.
A client's round, in the paper's phase order:

1. local-loss updates: `local_loss_steps` (default train.local_steps) steps on
   its data through the head->tail shortcut, no traffic at all;
2. EL2N pruning with the model those steps left: score every local sample by
   ||softmax(f(x)) - onehot(y)||_2 through the shortcut (no traffic) and keep
   the hardest ceil(gamma*n);
3. split training on the kept samples: ceil(gamma * train.local_steps) steps
   (the same passes over the kept data that SplitFed makes over all of it), so
   fewer samples cross the link; with no tail layer only the [CLS] row comes
   down and its gradient goes up, and the prompt rows of the head's gradient come back.

With no transformer layer on the client the [CLS] row of the head's output is
the same for every input, so the shortcut reads the mean of the head's rows
(`shortcut_pool: auto`); with client layers it reads [CLS], as the tail does.
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
    split_head_layers: int = option(0, check=at_least(0),
                                    help="encoder layers in the client head (paper: 0, embeddings + prompt)")
    split_tail_layers: int = option(0, check=at_least(0),
                                    help="encoder layers in the client tail (paper: 0, pooler/norm + classifier)")
    prompt_tokens: int = option(10, check=positive, help="soft-prompt vectors (sfprompt tunes a prompt: >= 1)")
    prune_ratio: float = option(0.5, check=in_range(0, 1, low_open=True),
                                help="gamma: keep the hardest ceil(gamma * n) samples (EL2N)")
    prune_stratified: bool = option(False, help="share the kept count among classes by their counts")
    local_loss_steps: int | None = option(None, check=at_least(0),
                                          help="phase 1: head->tail shortcut steps per round, no traffic "
                                               "(default train.local_steps)")
    shortcut_pool: str = option("auto", choices=("auto", "cls", "mean"),
                                help="what the shortcut's tail reads: auto = mean of the head's rows when no "
                                     "encoder layer is on the client, else [CLS]")

    @property
    def pool(self) -> str:
        if self.shortcut_pool != "auto":
            return self.shortcut_pool
        return "mean" if self.split_head_layers + self.split_tail_layers == 0 else "cls"


class SFPrompt(SplitFed):
    name = "sfprompt"
    Options = SFPromptOptions

    def make_split(self) -> SplitModel:
        ctx = self.ctx
        return SplitModel(ctx.model, self.opts.points, seed=ctx.cfg.seed, shortcut_pool=self.opts.pool)

    def local_steps(self) -> int:
        n = self.opts.local_loss_steps
        return self.ctx.cfg.train.local_steps if n is None else n

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
        opt = ctx.optimizer(self.params)
        # 1. local-loss updates on all local data, through the shortcut (no traffic)
        for batch in ctx.client_batches(client, rnd, self.local_steps()):
            stats.flops += self.local_loss_step(batch, opt)
        # 2. EL2N pruning, scored by the model phase 1 left
        scores, flops = el2n_scores(self.split, ctx.data.client_all(client, cfg.train.eval_batch_size),
                                    ctx.device, ctx.meter)
        stats.flops += flops
        labels = ctx.data.client(client).labels.numpy() if self.opts.prune_stratified else None
        kept = hardest(scores, self.opts.prune_ratio, labels)
        # 3. split training with the server on the kept samples
        batches = kept_batches(ctx.data.client(client), kept, np.random.default_rng([cfg.seed, rnd, client, 0x5F9]),
                               cfg.train.batch_size)
        for _ in range(self.split_steps(client)):
            self.client_step(client, next(batches), opt, stats)
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
                   local_loss_steps=self.local_steps(), shortcut_pool=self.opts.pool,
                   phases=["local-loss", "el2n-pruning", "split-training"])
        return out
