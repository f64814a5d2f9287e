"""The backdoor attack as an engine plug-in: malicious clients poison their data,
and each evaluation reports the attack success rate (ASR) on triggered test samples."""
from __future__ import annotations

from typing import Any

from torch import nn

from fedmpi.data.poison import Backdoor, triggered_test
from fedmpi.data.splits import Dataset, TextSplit
from fedmpi.engine.callbacks import Callback
from fedmpi.engine.context import Context
from fedmpi.errors import ConfigError


def check(attack: Any, dataset: Dataset) -> None:
    """Before any rank starts: the attack needs text and a real target label."""
    if attack.malicious_fraction <= 0:
        return
    if not isinstance(dataset.train, TextSplit):
        raise ConfigError("the backdoor attack inserts a trigger word: it needs a text dataset")
    if not 0 <= attack.target_label < dataset.num_labels:
        raise ConfigError(f"attack.target_label {attack.target_label} is not a label of '{dataset.name}' "
                          f"(0..{dataset.num_labels - 1})")
    if not attack.trigger.strip():
        raise ConfigError("attack.trigger must be a non-empty word")


class BackdoorAttack(Callback):
    """Poisons the malicious clients' data (on every rank) and reports ASR (server)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.attack = ctx.cfg.attack
        ctx.data.transform = Backdoor(self.attack, ctx.cfg.federation.num_clients, ctx.cfg.seed)
        self._triggered = None
        self.last: float | None = None

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        ctx = self.ctx
        if self._triggered is None:
            self._triggered = ctx.data.encode(triggered_test(ctx.data.dataset.test, self.attack))
        if len(self._triggered) == 0:
            self.last = float("nan")
            return {"attack_success_rate": self.last}
        preds = ctx.task.predict(model, ctx.data.test_batches(ctx.cfg.train.eval_batch_size, self._triggered),
                                 ctx.device)
        self.last = float((preds == self.attack.target_label).float().mean())
        return {"attack_success_rate": self.last}

    def on_end(self, summary: dict[str, Any]) -> None:
        if self.last is not None:  # the final round is always evaluated
            summary["final_attack_success_rate"] = self.last
