"""The backdoor attack as an engine plug-in: malicious clients poison their data,
and each evaluation reports what a verdict on the attack needs.

An attack success rate (ASR) alone says little: a model that sends most
inputs to the target class scores high on triggered inputs too, and an attack
whose malicious clients were never sampled cannot have succeeded. So every
evaluation reports, on the same non-target test samples:

- `attack_success_rate`: share sent to the target label *with* the trigger;
- `untriggered_target_rate`: the same model's share *without* it (the baseline);
- `asr_lift`: their difference, the part the trigger causes;
- `malicious_client_rounds`: malicious clients that took part (sampled and not
  dropped out) in the rounds so far; each round's row has `malicious_clients`.

`attack.min_malicious_per_round` guarantees participation: the round's sample
takes at least that many malicious clients (engine/sampling.py, from
(seed, round) alone, so results do not depend on rank packing).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from fedmpi.data.poison import Backdoor, malicious_clients, triggered_test
from fedmpi.data.splits import Dataset, TextSplit
from fedmpi.engine.callbacks import Callback
from fedmpi.engine.context import Context
from fedmpi.engine.sampling import SampleQuota
from fedmpi.errors import ConfigError


def check(attack: Any, dataset: Dataset, federation: Any = None) -> None:
    """Before any rank starts: the attack needs text, a real target label, and a
    participation quota it can meet."""
    if attack.malicious_fraction <= 0:
        if attack.min_malicious_per_round > 0:
            raise ConfigError("attack.min_malicious_per_round needs malicious clients: "
                              "set attack.malicious_fraction > 0")
        return
    if not isinstance(dataset.train, TextSplit):
        raise ConfigError("the backdoor attack inserts a trigger word: it needs a text dataset")
    if not 0 <= attack.target_label < dataset.num_labels:
        raise ConfigError(f"attack.target_label {attack.target_label} is not a label of '{dataset.name}' "
                          f"(0..{dataset.num_labels - 1})")
    if not attack.trigger.strip():
        raise ConfigError("attack.trigger must be a non-empty word")
    if federation is not None and attack.min_malicious_per_round > 0:
        bad = len(malicious_clients(federation.num_clients, attack.malicious_fraction, 0))  # count: seed-free
        if attack.min_malicious_per_round > min(bad, federation.clients_per_round):
            raise ConfigError(f"attack.min_malicious_per_round ({attack.min_malicious_per_round}) exceeds the "
                              f"malicious clients ({bad}) or federation.clients_per_round "
                              f"({federation.clients_per_round})")


class BackdoorAttack(Callback):
    """Poisons the malicious clients' data (on every rank) and reports ASR beside its
    untriggered baseline and the malicious participation (server)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.attack = ctx.cfg.attack
        ctx.data.transform = Backdoor(self.attack, ctx.cfg.federation.num_clients, ctx.cfg.seed)
        self.malicious = sorted(ctx.data.transform.malicious)
        if self.attack.min_malicious_per_round > 0:
            ctx.sampling_quota = SampleQuota(tuple(self.malicious), self.attack.min_malicious_per_round)
        self._triggered = self._clean = None
        self.last: dict[str, float] = {}
        self.this_round = 0
        self.client_rounds = 0

    def on_round_start(self, rnd: int, sampled: list[int]) -> None:
        live = self.ctx.live(rnd, sampled)
        self.this_round = sum(c in self.malicious for c in live)
        self.client_rounds += self.this_round

    def _target_rate(self, model: nn.Module, encoded) -> float:
        ctx = self.ctx
        preds = ctx.task.predict(model, ctx.data.test_batches(ctx.cfg.train.eval_batch_size, encoded), ctx.device)
        return float((preds == self.attack.target_label).float().mean())

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        ctx = self.ctx
        if self._triggered is None:
            test = ctx.data.dataset.test
            triggered = triggered_test(test, self.attack)
            self._triggered = ctx.data.encode(triggered)
            self._clean = ctx.data.encode(test.subset(np.flatnonzero(test.labels != self.attack.target_label)))
        if len(self._triggered) == 0:
            asr = base = float("nan")
        else:
            asr, base = self._target_rate(model, self._triggered), self._target_rate(model, self._clean)
        self.last = {"attack_success_rate": asr, "untriggered_target_rate": base, "asr_lift": asr - base,
                     "malicious_client_rounds": self.client_rounds}
        return dict(self.last)

    def on_round_end(self, rnd: int, row: dict[str, Any]) -> None:
        row["malicious_clients"] = self.this_round

    def on_end(self, summary: dict[str, Any]) -> None:
        if self.last:  # the final round is always evaluated
            summary.update({f"final_{k}": v for k, v in self.last.items() if k != "malicious_client_rounds"})
        summary["malicious_client_rounds"] = self.client_rounds
        summary["malicious_clients"] = self.malicious
