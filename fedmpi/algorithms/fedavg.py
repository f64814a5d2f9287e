"""FedAvg over the method's trainable state (full fine-tuning, LoRA, prompts...).

Each round: the server broadcasts the trainable state (kind `model`), each
sampled client trains `local_steps` from it, and uploads its state (kind
`update`); the server keeps the sample-weighted average.
"""
from __future__ import annotations

import torch

from fedmpi.algorithms.aggregate import Aggregator, ClientResult, drops_out
from fedmpi.algorithms.base import Algorithm
from fedmpi.algorithms.local import make_optimizer, train_steps
from fedmpi.metering.ledger import DOWN, UP
from fedmpi.models.backbone import count_parameters
from fedmpi.models.methods import trainable
from fedmpi.net.flat import flatten, unflatten_into
from fedmpi.seeding import seed_torch


class FedAvg(Algorithm):
    name = "fedavg"
    model_kind = "model"
    update_kind = "update"

    def setup(self) -> None:
        self.model = self.exp.model
        self.params = [p for _, p in trainable(self.model)]
        self.numel = sum(p.numel() for p in self.params)
        self.state_bytes = sum(p.numel() * p.element_size() for p in self.params)

    # -- the round --------------------------------------------------------
    def run_round(self, rnd: int, sampled: list[int]) -> dict[int, dict[str, float]]:
        exp = self.exp
        flat = flatten(self.params) if exp.rt.is_server else torch.empty(
            self.numel, dtype=self.params[0].dtype, device=exp.rt.device)
        exp.link.broadcast(flat, kind=self.model_kind, clients=sampled)
        agg = Aggregator(exp, sampled, self.numel, self.state_bytes, kind=self.update_kind)
        for c in exp.rt.clients_here(sampled):
            if drops_out(exp.cfg.seed, rnd, c, exp.cfg.federation.dropout):
                agg.add(ClientResult(c, None))
                continue
            unflatten_into(flat, self.params)
            agg.add(self.train_client(c, rnd))
        if exp.rt.is_server:
            self.serve(rnd, sampled)
        avg, stats = agg.finish()
        if exp.rt.is_server and avg is not None:
            unflatten_into(avg, self.params)
        return stats

    def serve(self, rnd: int, sampled: list[int]) -> None:
        """Hook: the server's own work while clients train (split learning serves them here)."""

    def train_client(self, client: int, rnd: int) -> ClientResult:
        """Hook: local training of one client from the global state now loaded."""
        exp, cfg = self.exp, self.exp.cfg
        seed_torch(cfg.seed, rnd, client)  # dropout masks: per client, not per rank
        opt = make_optimizer(self.params, cfg.train)
        batches = exp.data.client_batches(client, rnd, cfg.train.local_steps, cfg.train.batch_size)
        st = train_steps(self.model, batches, opt, exp.meter, exp.rt.device)
        return self.result(client, st.num_samples, st.loss_sum, st.flops)

    def result(self, client: int, processed: int, loss_sum: float, flops: int) -> ClientResult:
        """A client's result weighted by its dataset size, with its emulated time."""
        exp = self.exp
        weight = exp.data.client_size(client)
        seconds = (exp.link.seconds(client, DOWN, self.state_bytes) + flops / exp.speeds[client]
                   + exp.link.seconds(client, UP, self.state_bytes))
        return ClientResult(client, flatten(self.params), num_samples=weight,
                            loss_sum=loss_sum / max(1, processed) * weight, flops=flops, seconds=seconds)

    # -- checkpoint and report --------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"trainable": flatten(self.params).cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        unflatten_into(state["trainable"].to(self.exp.rt.device), self.params)

    def report(self) -> dict[str, object]:
        n_train, n_total = count_parameters(self.model)
        return {"trainable_params": n_train, "total_params": n_total,
                "trainable_share": n_train / max(1, n_total),
                "bytes_up_per_client_round": self.state_bytes,
                "bytes_down_per_client_round": self.state_bytes}
