"""The backdoor plug-in's attack success rate counts only non-target test samples."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from fedmpi.config import load_config
from fedmpi.data.federated import FederatedData
from fedmpi.data.splits import Dataset, TextSplit
from fedmpi.plugins.backdoor import BackdoorAttack
from fedmpi.tasks.classification import Classification


class TriggerDetector(torch.nn.Module):
    """Predicts the target (1) iff token `tid` is in the input; else label 0."""

    def __init__(self, tid: int) -> None:
        super().__init__()
        self.tid = tid

    def forward(self, input_ids, labels=None, **_):
        hit = (input_ids == self.tid).any(-1).float()
        return SimpleNamespace(logits=torch.stack([1 - hit, hit], -1))


def test_asr_counts_only_non_target_samples():
    cfg = load_config(None, ["model.name=tiny-bert", "attack.malicious_fraction=0.1", "attack.trigger=cf",
                             "attack.target_label=1", "train.eval_batch_size=8", "federation.num_clients=1",
                             "federation.clients_per_round=1"])
    task = Classification(cfg)
    tok = task.tokenizer()
    test = TextSplit(["good film", "bad film", "fine film", "okay film"], np.array([1, 0, 0, 1]))
    data = FederatedData(Dataset("t", test, test, ["neg", "pos"]), [np.arange(4)], task.encoder(tok), 0)
    ctx = SimpleNamespace(cfg=cfg, task=task, data=data, device=torch.device("cpu"))
    asr = BackdoorAttack(ctx)
    assert data.transform is not None  # malicious clients' data are poisoned through the data transform
    cf = tok.convert_tokens_to_ids("cf")
    assert asr.evaluate(TriggerDetector(cf))["attack_success_rate"] == 1.0
    # a model that says "target" only for "good"/"okay" (true-target samples) scores 0: they are not counted
    good = tok.convert_tokens_to_ids("good")
    assert asr.evaluate(TriggerDetector(good))["attack_success_rate"] == 0.0
    summary = {}
    asr.on_end(summary)
    assert summary == {"final_attack_success_rate": 0.0}
