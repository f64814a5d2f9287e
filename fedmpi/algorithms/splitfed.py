"""SplitFed: split learning across the emulated links, client parts FedAvg'd.

Each batch makes four crossings through the Link, every one charged to that
client's uplink or downlink: head activations up, body activations down,
the gradient of the tail's input up, the gradient of the head's output down
(plus, for text, the attention mask up, kind `mask`, so the server can run the
body). Only what the receiver needs crosses (`SplitModel.cut`, `head_rows`):
a tail without layers gets the [CLS] row alone and sends back its gradient
alone; a head without layers whose only trainable part is a prompt gets the
prompt rows of its gradient. Labels never leave the client.

The server serves the round's clients one after another, in sampled order;
each client rank serves its own clients in that same order, so the FIFO
point-to-point channel between a rank and the server never interleaves two
clients. V2 (default) trains one shared body through all clients in turn;
V1 trains a copy of the round's body per client and averages the copies,
weighted by dataset size, at the round's end. The client parts (head, tail,
and any prompt) travel and average through the engine, as in FedAvg.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedmpi.engine.aggregate import WeightedSum
from fedmpi.engine.algorithm import Algorithm
from fedmpi.engine.training import Batch, LocalStats, to_device
from fedmpi.errors import ConfigError
from fedmpi.metering.flops import shape_key
from fedmpi.metering.formulas import optimizer_step_flops
from fedmpi.models.split import SplitModel, SplitPoints, check_points
from fedmpi.net.flat import flatten, payload_bytes, unflatten_into
from fedmpi.options import at_least, option
from fedmpi.seeding import seed_torch

ACT, GRAD, MASK = "activations", "gradients", "mask"


@dataclass
class SplitOptions:
    split_head_layers: int = option(1, check=at_least(0), help="encoder layers in the client head")
    split_tail_layers: int = option(0, check=at_least(0), help="encoder layers in the client tail")
    prompt_tokens: int = option(0, check=at_least(0), help="soft-prompt vectors prepended in the client head")

    @property
    def points(self) -> SplitPoints:
        return SplitPoints(self.split_head_layers, self.split_tail_layers, self.prompt_tokens)


@dataclass
class SplitFedOptions(SplitOptions):
    splitfed_version: str = option("v2", choices=("v1", "v2"),
                                   help="v2: one shared server body; v1: a body copy per client, averaged")


class SplitFed(Algorithm):
    name = "splitfed"
    Options = SplitFedOptions
    trains_with_hooks = False  # its split steps bypass ctx.train: no client strategy, no DP

    @classmethod
    def check(cls, cfg: Any) -> None:
        if cfg.method.name != "full":
            raise ConfigError(f"algorithm '{cls.name}' splits the backbone itself and picks what trains; "
                              f"leave method.name at 'full' (got '{cfg.method.name}')")

    @classmethod
    def check_model(cls, cfg: Any, model: torch.nn.Module) -> None:
        check_points(model, cfg.options.points, cfg.model.name)

    def choose_trainable(self) -> None:
        """SplitFed fine-tunes everything: client parts on clients, body on the server."""

    def make_split(self) -> SplitModel:
        ctx = self.ctx
        return SplitModel(ctx.model, self.opts.points, seed=ctx.cfg.seed)

    def setup(self) -> None:
        ctx = self.ctx
        self.split = self.make_split().to(ctx.device)
        self.choose_trainable()
        self.model = self.split
        self.params = [p for p in self.split.client_params() if p.requires_grad]
        self.body = [p for p in self.split.body_params() if p.requires_grad]

    def split_steps(self, client: int) -> int:
        """Split-learning steps a client makes per round (both sides compute it)."""
        return self.ctx.cfg.train.local_steps

    # -- client side --------------------------------------------------------
    def train_client(self, client: int, rnd: int) -> LocalStats:
        ctx, stats = self.ctx, LocalStats()
        opt = ctx.optimizer(self.params)
        for batch in ctx.client_batches(client, rnd, self.split_steps(client)):
            self.client_step(client, batch, opt, stats)
        return stats

    def client_step(self, client: int, batch: Batch, opt: torch.optim.Optimizer, stats: LocalStats) -> None:
        """Head forward, the four crossings, tail loss, head backward, one step (its memory measured)."""
        ctx, split = self.ctx, self.split
        batch = to_device(batch, ctx.device)
        split.train()
        opt.zero_grad(set_to_none=True)
        key = shape_key(batch)
        with ctx.memory.measure(("split-client", key), split, opt):
            self._client_step(client, batch, opt, stats, key)

    def _client_step(self, client: int, batch: Batch, opt: torch.optim.Optimizer, stats: LocalStats,
                     key: tuple) -> None:
        ctx, link, split = self.ctx, self.ctx.link, self.split
        (h1, mask), f_head = ctx.meter.run(("split-head-fwd", key), lambda: split.head(batch))
        if split.needs_mask:
            link.to_server(mask.to(torch.uint8), client=client, kind=MASK)
        link.to_server(h1, client=client, kind=ACT)
        h2 = link.from_server(client=client, kind=ACT).requires_grad_(True)

        def tail_step() -> torch.Tensor:
            loss = split.loss(split.tail(h2, mask), batch["labels"])
            loss.backward()
            return loss

        loss, f_tail = ctx.meter.run(("split-tail", key), tail_step)
        link.to_server(h2.grad, client=client, kind=GRAD)
        f_back, rows = 0, split.head_rows()
        if h1[:, rows].numel():
            g1 = link.from_server(client=client, kind=GRAD)
            _, f_back = ctx.meter.run(("split-head-bwd", key), lambda: h1[:, rows].backward(g1))
        f_step = optimizer_step_flops(opt)
        opt.step()
        stats.add(int(batch["labels"].shape[0]), float(loss.detach()), f_head + f_tail + f_back + f_step)

    # -- server side --------------------------------------------------------
    def serve(self, rnd: int, live: list[int]) -> None:
        """Run the body for each live client in sampled order; charge its FLOPs."""
        ctx = self.ctx
        v1 = getattr(self.opts, "splitfed_version", "v2") == "v1" and bool(self.body)
        start = flatten(self.body) if v1 else None
        mean = WeightedSum(torch.empty_like(start, dtype=torch.float64)) if v1 else None
        opt = ctx.optimizer(self.body) if self.body else None
        self.split.train()
        for c in live:
            if v1:
                unflatten_into(start, self.body)
                opt = ctx.optimizer(self.body)
            seed_torch(ctx.cfg.seed, rnd, c, 0x5E7)  # server dropout: per client, not per packing
            ctx.link.charge_server("compute", sum(self.server_step(c, opt) for _ in range(self.split_steps(c))))
            if v1:
                mean.add(flatten(self.body), ctx.data.client_size(c))
        if v1 and mean.weight:
            unflatten_into(mean.total() / mean.weight, self.body)
            ctx.link.charge_server("aggregate", 2 * start.numel() * len(live))

    def server_step(self, client: int, opt: torch.optim.Optimizer | None) -> int:
        """The body's forward and backward for one client batch; returns FLOPs."""
        ctx, link, split = self.ctx, self.ctx.link, self.split
        mask = link.from_client(client=client, kind=MASK).long() if split.needs_mask else None
        h1 = link.from_client(client=client, kind=ACT).requires_grad_(True)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        key = shape_key(h1)
        h2, f_fwd = ctx.meter.run(("split-body-fwd", key), lambda: split.cut(split.body(h1, mask)))
        link.to_client(h2, client=client, kind=ACT)
        g2 = link.from_client(client=client, kind=GRAD)
        _, f_bwd = ctx.meter.run(("split-body-bwd", key), lambda: h2.backward(g2))
        rows = split.head_rows()
        if h1[:, rows].numel():
            link.to_client(h1.grad[:, rows], client=client, kind=GRAD)
        f_step = 0
        if opt is not None:
            f_step = optimizer_step_flops(opt)
            opt.step()
        return f_fwd + f_bwd + f_step

    # -- checkpoint and report ----------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"body": flatten(self.split.body_params()).cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        unflatten_into(state["body"].to(self.ctx.device), self.split.body_params())

    def report(self) -> dict[str, object]:
        split = self.split
        count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
        client = split.client_params()
        numel = count(self.params)
        width = self.ctx.model.config.hidden_size * next(split.embeddings.parameters()).element_size()
        return {
            "split": {"head_layers": split.points.head_layers, "body_layers": len(split.body_layers),
                      "tail_layers": split.points.tail_layers, "prompt_tokens": split.points.prompt_tokens},
            "client_params": count(client), "client_trainable_params": numel,
            "server_params": count(split.body_params()), "server_trainable_params": count(self.body),
            "trainable_params": numel + count(self.body), "total_params": count(split.parameters()),
            "trainable_share": (numel + count(self.body)) / max(1, count(split.parameters())),
            "bytes_up_per_client_round": payload_bytes(self.params),
            "bytes_down_per_client_round": payload_bytes(self.params),
            "activation_bytes_per_token": width,  # per row that crosses, prompt rows included
            "tail_receives": "all rows" if split.tail_layers else "[CLS] row",
            "head_gradient_rows": _rows(split.head_rows(), split.points.prompt_tokens),
        }


def _rows(rows: slice, prompt_tokens: int) -> str:
    if rows.stop is None:
        return "all rows"
    return f"prompt rows ({prompt_tokens})" if rows.stop else "none"
