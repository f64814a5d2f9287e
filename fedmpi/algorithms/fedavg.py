"""FedAvg over the method's trainable state (full fine-tuning, LoRA, prompts, ...).

The engine sends the trainable state down (kind `model`) to each sampled
client, which trains `train.local_steps` from it; the engine sends the
client's state up (kind `update`) and the server keeps the sample-weighted
average. What is left for the algorithm is the local training itself.
"""
from __future__ import annotations

from fedmpi.engine.algorithm import Algorithm
from fedmpi.engine.training import LocalStats
from fedmpi.models.backbone import count_parameters
from fedmpi.net.flat import payload_bytes


class FedAvg(Algorithm):
    name = "fedavg"
    overlaps_evaluation = True  # the server hosts no clients and serves none

    def train_client(self, client: int, rnd: int) -> LocalStats:
        ctx = self.ctx
        return ctx.train(self.model, ctx.client_batches(client, rnd), ctx.optimizer(self.params))

    def report(self) -> dict[str, object]:
        n_train, n_total = count_parameters(self.model)
        state_bytes = payload_bytes(self.params)
        return {"trainable_params": n_train, "total_params": n_total,
                "trainable_share": n_train / max(1, n_total),
                "bytes_up_per_client_round": state_bytes, "bytes_down_per_client_round": state_bytes}
