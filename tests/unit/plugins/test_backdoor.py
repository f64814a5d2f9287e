"""The backdoor plug-in: ASR over non-target test samples, beside the same model's
untriggered rate on the same samples, and the malicious clients that took part."""
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
    cfg = load_config(None, ["model.name=tiny-bert", "attack.malicious_fraction=1.0", "attack.trigger=cf",
                             "attack.target_label=1", "train.eval_batch_size=8", "federation.num_clients=1",
                             "federation.clients_per_round=1"])
    task = Classification(cfg)
    tok = task.tokenizer()
    test = TextSplit(["good film", "bad film", "fine film", "okay film"], np.array([1, 0, 0, 1]))
    data = FederatedData(Dataset("t", test, test, ["neg", "pos"]), [np.arange(4)], task.encoder(tok), 0)
    ctx = SimpleNamespace(cfg=cfg, task=task, data=data, device=torch.device("cpu"), sampling_quota=None,
                          live=lambda rnd, sampled: sampled)
    asr = BackdoorAttack(ctx)
    assert data.transform is not None  # malicious clients' data are poisoned through the data transform
    cf = tok.convert_tokens_to_ids("cf")
    asr.on_round_start(0, [0])  # the one client, malicious, takes part
    assert asr.evaluate(TriggerDetector(cf)) == {"attack_success_rate": 1.0, "untriggered_target_rate": 0.0,
                                                 "asr_lift": 1.0, "malicious_client_rounds": 1}
    # a model that says "target" only for "good"/"okay" (true-target samples) scores 0: they are not counted
    good = tok.convert_tokens_to_ids("good")
    assert asr.evaluate(TriggerDetector(good))["attack_success_rate"] == 0.0
    # a model that says "target" for "film" sends every sample there, triggered or not: ASR 1, lift 0
    film = tok.convert_tokens_to_ids("film")
    asr.on_round_start(1, [0])
    assert asr.evaluate(TriggerDetector(film)) == {"attack_success_rate": 1.0, "untriggered_target_rate": 1.0,
                                                   "asr_lift": 0.0, "malicious_client_rounds": 2}
    row = {}
    asr.on_round_end(1, row)
    assert row == {"malicious_clients": 1}
    summary = {}
    asr.on_end(summary)
    assert summary == {"final_attack_success_rate": 1.0, "final_untriggered_target_rate": 1.0,
                       "final_asr_lift": 0.0, "malicious_client_rounds": 2, "malicious_clients": [0]}


def test_a_quota_the_attack_cannot_meet_is_refused():
    import pytest

    from fedmpi.errors import ConfigError
    from fedmpi.plugins.backdoor import check

    cfg = load_config(None, ["attack.malicious_fraction=0.1", "attack.min_malicious_per_round=2",
                             "federation.num_clients=10"])
    data = Dataset("t", TextSplit(["a"], np.array([0])), TextSplit(["a"], np.array([0])), ["neg", "pos"])
    with pytest.raises(ConfigError, match="min_malicious_per_round"):
        check(cfg.attack, data, cfg.federation)
    check(cfg.attack.__class__(malicious_fraction=0.2, min_malicious_per_round=2), data, cfg.federation)
