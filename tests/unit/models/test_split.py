"""The U-shaped split of a BERT-like classifier is the unsplit model: same outputs and
gradients at every cut, soft prompts widen the activations, bad split points are ConfigErrors."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import ROOT
from fedmpi.config import load_config
from fedmpi.data.federated import FederatedData
from fedmpi.errors import ConfigError
from fedmpi.experiment import prepare
from fedmpi.models.split import SplitModel, SplitPoints, check_points, split_step

SPLITFED = ROOT / "configs" / "tiny_splitfed.yaml"
SFPROMPT = ROOT / "configs" / "tiny_sfprompt.yaml"


@pytest.fixture(scope="module")
def tiny():
    """(cfg, prepared model/data, FederatedData) of the tiny split config."""
    cfg = load_config(SPLITFED)
    prep = prepare(cfg)
    data = FederatedData(prep.dataset, prep.parts, prep.task.encoder(prep.tokenizer), cfg.seed)
    return cfg, prep, data


@pytest.mark.parametrize("head,tail", [(1, 1), (0, 2), (2, 0), (0, 0)])
def test_split_equals_unsplit_forward_and_gradients(tiny, head, tail):
    cfg, prep, data = tiny
    batch = next(data.client_batches(0, 0, 1, 8))
    assert batch["attention_mask"].min() == 0  # padding present: the mask must reach every part
    ref = copy.deepcopy(prep.model)
    out = ref(**batch)
    out.loss.backward()
    model = copy.deepcopy(prep.model)
    split = SplitModel(model, SplitPoints(head, tail, 0))
    assert len(split.head_layers) == head and len(split.tail_layers) == tail
    assert len(split.body_layers) == 3 - head - tail
    loss, logits = split_step(split, batch)  # detached cuts, gradients handed back by hand
    torch.testing.assert_close(logits, out.logits.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, out.loss.detach(), rtol=0, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
    # and the chained forward (what the server evaluates) is the unsplit forward
    torch.testing.assert_close(split(**batch).logits, out.logits.detach(), rtol=0, atol=1e-6)


def test_soft_prompt_widens_activations_and_trains(tiny):
    cfg, prep, data = tiny
    batch = next(data.client_batches(0, 0, 1, 8))
    split = SplitModel(copy.deepcopy(prep.model), SplitPoints(1, 1, 3), seed=0)
    hidden, mask = split.head(batch)
    b, width = batch["input_ids"].shape
    assert hidden.shape == (b, width + 3, cfg.model.hidden_size)
    assert mask.shape == (b, width + 3) and bool(mask[:, :3].all())
    loss, logits = split_step(split, batch)
    torch.testing.assert_close(logits, split(**batch).logits.detach(), rtol=0, atol=1e-6)
    assert split.prompt.grad is not None and split.prompt.grad.abs().sum() > 0
    assert split.client_params()[0] is split.prompt
    # every rank builds the same prompt from the seed
    again = SplitModel(copy.deepcopy(prep.model), SplitPoints(1, 1, 3), seed=0)
    assert torch.equal(again.prompt, SplitModel(copy.deepcopy(prep.model), SplitPoints(1, 1, 3), seed=0).prompt)


def test_invalid_split_points_and_options_are_config_errors(tiny):
    _, prep, _ = tiny
    with pytest.raises(ConfigError, match="at least one layer for the server's body.*3 layers"):
        check_points(prep.model, SplitPoints(2, 1), "tiny-bert")
    with pytest.raises(ConfigError, match=">= 0"):
        check_points(prep.model, SplitPoints(-1, 1), "tiny-bert")
    with pytest.raises(ConfigError, match="did you mean 'options.prune_ratio'"):
        load_config(SFPROMPT, ["options.prune_ration=0.5"])
    with pytest.raises(ConfigError, match="'options.prune_ratio' does not apply to algorithm 'splitfed'"):
        load_config(SPLITFED, ["options.prune_ratio=0.5"])
    with pytest.raises(ConfigError, match="config key 'options.split_head_layers' expects an integer"):
        load_config(SPLITFED, ["options.split_head_layers=two"])
    assert load_config(SFPROMPT, ["options.prune_ratio=1"]).options.prune_ratio == 1.0
