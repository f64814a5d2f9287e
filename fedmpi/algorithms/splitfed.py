"""SplitFed: split learning across the emulated links, client parts FedAvg'd.

Each batch makes four crossings through the Link, every one charged to that
client's uplink or downlink: head activations up, body activations down,
the gradient of the tail's input up, the gradient of the head's output down
(plus the attention mask up, kind `mask`, so the server can run the body).
Labels never leave the client.

The server serves the round's clients one after another, in sampled order;
each client rank serves its own clients in that same order, so the FIFO
point-to-point channel between a rank and the server never interleaves two
clients. V2 (default) trains one shared body through all clients in turn;
V1 trains a copy of the round's body per client and averages the copies,
weighted by dataset size, at the round's end. The client parts (head, tail,
and any prompt) travel and average exactly as in FedAvg, through its round.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedmpi.algorithms.aggregate import ClientResult, drops_out
from fedmpi.algorithms.fedavg import FedAvg
from fedmpi.algorithms.local import Batch, make_optimizer, to_device
from fedmpi.algorithms.split_options import SplitFedOptions, SplitOptions, read_options
from fedmpi.config import ConfigError
from fedmpi.metering.flops import shape_key
from fedmpi.metering.ledger import DOWN, SERVER, UP
from fedmpi.models.split import SplitModel, SplitPoints, check_points
from fedmpi.net.flat import flatten, payload_bytes, unflatten_into
from fedmpi.seeding import seed_torch

ACT, GRAD, MASK = "activations", "gradients", "mask"


@dataclass
class Tally:
    """A client's round so far: samples, loss, FLOPs, emulated message seconds."""
    num_samples: int = 0
    loss_sum: float = 0.0
    flops: int = 0
    seconds: float = 0.0


class SplitFed(FedAvg):
    name = "splitfed"
    Options = SplitFedOptions

    def __init__(self, exp) -> None:
        super().__init__(exp)
        cfg = exp.cfg
        self.opts = self.check(cfg)
        points = SplitPoints(self.opts.split_head_layers, self.opts.split_tail_layers, self.opts.prompt_tokens)
        check_points(exp.model, points, cfg.model.name)
        self.split = SplitModel(exp.model, points, seed=cfg.seed).to(exp.rt.device)
        self.choose_trainable()

    @classmethod
    def check(cls, cfg) -> SplitOptions:
        opts = read_options(cls.Options, cfg.options, cls.name)
        cls.check_options(opts)
        if cfg.method.name != "full":
            raise ConfigError(f"algorithm '{cls.name}' splits the backbone itself and picks what trains; "
                              f"leave method.name at 'full' (got '{cfg.method.name}')")
        return opts

    @staticmethod
    def check_options(opts) -> None:
        if opts.splitfed_version not in ("v1", "v2"):
            raise ConfigError(f"options.splitfed_version must be 'v1' or 'v2', got '{opts.splitfed_version}'")

    def choose_trainable(self) -> None:
        """SplitFed fine-tunes everything: client parts on clients, body on the server."""

    def setup(self) -> None:
        self.model = self.split
        self.params = [p for p in self.split.client_params() if p.requires_grad]
        self.body = [p for p in self.split.body_params() if p.requires_grad]
        self.numel = sum(p.numel() for p in self.params)
        self.state_bytes = payload_bytes(self.params)

    def eval_model(self) -> torch.nn.Module:
        return self.split

    def split_steps(self, client: int) -> int:
        """Split-learning steps a client makes per round (both sides compute it)."""
        return self.exp.cfg.train.local_steps

    # -- client side --------------------------------------------------------
    def train_client(self, client: int, rnd: int) -> ClientResult:
        cfg = self.exp.cfg
        seed_torch(cfg.seed, rnd, client)
        opt = make_optimizer(self.params, cfg.train)
        tally = Tally()
        for batch in self.exp.data.client_batches(client, rnd, self.split_steps(client), cfg.train.batch_size):
            self.client_step(client, batch, opt, tally)
        return self.client_result(client, tally)

    def client_result(self, client: int, tally: Tally) -> ClientResult:
        """FedAvg's result (weight, model down/up time) plus the split messages' time."""
        r = self.result(client, tally.num_samples, tally.loss_sum, tally.flops)
        r.seconds += tally.seconds
        return r

    def _send(self, client: int, tensor: torch.Tensor, kind: str, tally: Tally) -> None:
        self.exp.link.to_server(tensor, client=client, kind=kind)
        tally.seconds += self.exp.link.seconds(client, UP, payload_bytes(tensor))

    def _recv(self, client: int, kind: str, tally: Tally) -> torch.Tensor:
        out = self.exp.link.from_server(client=client, kind=kind)
        tally.seconds += self.exp.link.seconds(client, DOWN, payload_bytes(out))
        return out

    def client_step(self, client: int, batch: Batch, opt: torch.optim.Optimizer, tally: Tally) -> None:
        """Head forward, the four crossings, tail loss, head backward, one step."""
        exp, split = self.exp, self.split
        batch = to_device(batch, exp.rt.device)
        split.train()
        opt.zero_grad(set_to_none=True)
        key = shape_key(batch)
        (h1, mask), f_head = exp.meter.run(("split-head-fwd", key), lambda: split.head(batch))
        self._send(client, mask.to(torch.uint8), MASK, tally)
        self._send(client, h1, ACT, tally)
        h2 = self._recv(client, ACT, tally).requires_grad_(True)

        def tail_step() -> torch.Tensor:
            loss = split.loss(split.tail(h2, mask), batch["labels"])
            loss.backward()
            return loss

        loss, f_tail = exp.meter.run(("split-tail", key), tail_step)
        self._send(client, h2.grad, GRAD, tally)
        g1 = self._recv(client, GRAD, tally)
        _, f_back = exp.meter.run(("split-head-bwd", key), lambda: h1.backward(g1))
        opt.step()
        n = int(batch["labels"].shape[0])
        tally.num_samples += n
        tally.loss_sum += float(loss.detach()) * n
        tally.flops += f_head + f_tail + f_back

    # -- server side --------------------------------------------------------
    def serve(self, rnd: int, sampled: list[int]) -> None:
        """Run the body for each live client in sampled order; record its FLOPs."""
        exp, cfg = self.exp, self.exp.cfg
        live = [c for c in sampled if not drops_out(cfg.seed, rnd, c, cfg.federation.dropout)]
        v1 = getattr(self.opts, "splitfed_version", "v2") == "v1" and bool(self.body)
        start = flatten(self.body) if v1 else None
        acc = torch.zeros_like(start, dtype=torch.float64) if v1 else None
        weight = 0
        opt = make_optimizer(self.body, cfg.train) if self.body else None
        self.split.train()
        for c in live:
            if v1:
                unflatten_into(start, self.body)
                opt = make_optimizer(self.body, cfg.train)
            seed_torch(cfg.seed, rnd, c, 0x5E7)  # server dropout: per client, not per packing
            flops = sum(self.server_step(c, opt) for _ in range(self.split_steps(c)))
            exp.ledger.add(rnd, -1, SERVER, "compute", flops=flops, seconds=flops / exp.server_speed)
            if v1:
                w = exp.data.client_size(c)
                acc.add_(flatten(self.body).to(torch.float64), alpha=w)
                weight += w
        if v1 and weight:
            unflatten_into(acc / weight, self.body)
            agg = 2 * acc.numel() * len(live)
            exp.ledger.add(rnd, -1, SERVER, "aggregate", flops=agg, seconds=agg / exp.server_speed)

    def server_step(self, client: int, opt: torch.optim.Optimizer | None) -> int:
        """The body's forward and backward for one client batch; returns FLOPs."""
        exp, link, split = self.exp, self.exp.link, self.split
        mask = link.from_client(client=client, kind=MASK).long()
        h1 = link.from_client(client=client, kind=ACT).requires_grad_(True)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        key = shape_key(h1)
        h2, f_fwd = exp.meter.run(("split-body-fwd", key), lambda: split.body(h1, mask))
        link.to_client(h2, client=client, kind=ACT)
        g2 = link.from_client(client=client, kind=GRAD)
        _, f_bwd = exp.meter.run(("split-body-bwd", key), lambda: h2.backward(g2))
        link.to_client(h1.grad, client=client, kind=GRAD)
        if opt is not None:
            opt.step()
        return f_fwd + f_bwd

    # -- checkpoint and report ----------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"trainable": flatten(self.params).cpu(), "body": flatten(self.split.body_params()).cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        device = self.exp.rt.device
        unflatten_into(state["trainable"].to(device), self.params)
        unflatten_into(state["body"].to(device), self.split.body_params())

    def report(self) -> dict[str, object]:
        split = self.split
        count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
        client = split.client_params()
        width = self.exp.model.config.hidden_size * split.embeddings.word_embeddings.weight.element_size()
        return {
            "split": {"head_layers": split.points.head_layers, "body_layers": len(split.body_layers),
                      "tail_layers": split.points.tail_layers, "prompt_tokens": split.points.prompt_tokens},
            "client_params": count(client), "client_trainable_params": self.numel,
            "server_params": count(split.body_params()), "server_trainable_params": count(self.body),
            "trainable_params": self.numel + count(self.body), "total_params": count(split.parameters()),
            "trainable_share": (self.numel + count(self.body)) / max(1, count(split.parameters())),
            "bytes_up_per_client_round": self.state_bytes, "bytes_down_per_client_round": self.state_bytes,
            "activation_bytes_per_token": width,  # per crossing, prompt tokens included
        }
