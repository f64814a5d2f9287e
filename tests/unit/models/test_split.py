"""The U-shaped split of a BERT-like classifier is the unsplit model: same outputs and
gradients at every cut, soft prompts widen the activations, bad split points are ConfigErrors."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import ROOT, tiny_split_setup
from fedmpi.config import load_config
from fedmpi.errors import ConfigError
from fedmpi.models.split import SplitModel, SplitPoints, check_points, split_step

SPLITFED = ROOT / "configs" / "tiny_splitfed.yaml"
SFPROMPT = ROOT / "configs" / "tiny_sfprompt.yaml"


@pytest.fixture(scope="module")
def tiny():
    """(cfg, prepared model/data, FederatedData) of the tiny split config."""
    return tiny_split_setup()


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


def test_a_layerless_tail_receives_only_the_cls_row(tiny):
    """With no tail layer the pooler and classifier read the [CLS] row alone: that is all that
    crosses (B x 1 x H, not B x (P + L) x H), and the gradients are exactly the full model's."""
    cfg, prep, data = tiny
    batch = next(data.client_batches(0, 0, 1, 8))
    b, width = batch["input_ids"].shape
    for tail, rows in ((0, 1), (1, width + 2)):
        split = SplitModel(copy.deepcopy(prep.model), SplitPoints(1, tail, 2))
        hidden, mask = split.head(batch)
        assert split.cut(split.body(hidden, mask)).shape == (b, rows, cfg.model.hidden_size)
    split = SplitModel(copy.deepcopy(prep.model), SplitPoints(1, 0, 2))
    cls_row = split.body(*split.head(batch))[:, 2]
    torch.testing.assert_close(split.cut(split.body(*split.head(batch)))[:, 0], cls_row)


def _sfprompt_trainable(split: SplitModel) -> list[torch.nn.Parameter]:
    for p in split.parameters():
        p.requires_grad_(False)
    params = [split.prompt, *split.tail_params()]
    for p in params:
        p.requires_grad_(True)
    return params


@pytest.mark.parametrize("head,tail", [(0, 0), (1, 0), (0, 1)])
def test_only_the_rows_each_side_needs_cross_and_the_gradients_are_exact(tiny, head, tail):
    """SFPrompt's trainable set (prompt + tail): a layer-less head gets back only the prompt
    rows of its gradient; the prompt's and tail's gradients equal plain backprop through
    the chained model."""
    cfg, prep, data = tiny
    batch = next(data.client_batches(0, 0, 1, 8))
    ref = SplitModel(copy.deepcopy(prep.model), SplitPoints(head, tail, 3), seed=0)
    ref_params = _sfprompt_trainable(ref)
    ref(**batch).loss.backward()
    split = SplitModel(copy.deepcopy(prep.model), SplitPoints(head, tail, 3), seed=0)
    params = _sfprompt_trainable(split)
    assert split.head_rows() == (slice(0, 3) if head == 0 else slice(None))
    split_step(split, batch)
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
    full = SplitModel(copy.deepcopy(prep.model), SplitPoints(0, 0, 3))
    assert full.head_rows() == slice(None)  # SplitFed: the embeddings train, every row's gradient is needed


def test_the_layerless_shortcut_pools_the_mean_because_cls_ignores_the_input(tiny):
    cfg, prep, data = tiny
    batch = next(data.client_batches(0, 0, 1, 8))
    cls = SplitModel(copy.deepcopy(prep.model), SplitPoints(0, 0, 3), shortcut_pool="cls").eval()
    mean = SplitModel(copy.deepcopy(prep.model), SplitPoints(0, 0, 3), shortcut_pool="mean").eval()
    with torch.no_grad():
        same = cls.shortcut(batch)
        pooled = mean.shortcut(batch)
        hidden, mask = mean.head(batch)
        w = mask.unsqueeze(-1).float()
        expect = mean._classify((hidden * w).sum(1, keepdim=True) / w.sum(1, keepdim=True))
    assert torch.allclose(same, same[:1].expand_as(same))  # [CLS] of the embeddings: one row for all inputs
    assert not torch.allclose(pooled, pooled[:1].expand_as(pooled))
    torch.testing.assert_close(pooled, expect)
    with pytest.raises(ConfigError, match="shortcut pooling"):
        SplitModel(copy.deepcopy(prep.model), SplitPoints(0, 0, 3), shortcut_pool="max")


def tiny_vit(layers: int = 3):
    cfg = load_config(ROOT / "configs" / "mnist-vit.yaml", [f"model.num_layers={layers}", "data.name=embedded"])
    from fedmpi.models.vision import build_vision

    torch.manual_seed(0)
    return cfg, build_vision(cfg.model, 10)


def vit_batch(cfg, n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    size = cfg.model.image_size
    return {"pixel_values": torch.rand(n, 1, size, size, generator=g), "labels": torch.arange(n) % 10}


@pytest.mark.parametrize("head,tail,prompt", [(0, 0, 0), (1, 1, 0), (0, 2, 0), (1, 0, 4)])
def test_vit_split_equals_unsplit_forward_and_gradients(head, tail, prompt):
    cfg, vit = tiny_vit()
    batch = vit_batch(cfg)
    ref = copy.deepcopy(vit)
    if prompt == 0:
        out = ref(pixel_values=batch["pixel_values"], labels=batch["labels"])
        out.loss.backward()
    split = SplitModel(copy.deepcopy(vit), SplitPoints(head, tail, prompt), seed=0)
    assert split.vision and not split.needs_mask
    assert len(split.body_layers) == 3 - head - tail
    hidden, mask = split.head(batch)
    patches = (cfg.model.image_size // 7) ** 2
    assert mask is None and hidden.shape == (6, prompt + 1 + patches, cfg.model.hidden_size)
    loss, logits = split_step(split, batch)
    torch.testing.assert_close(logits, split(pixel_values=batch["pixel_values"]).logits, rtol=0, atol=1e-6)
    if prompt == 0:
        torch.testing.assert_close(logits, out.logits.detach(), rtol=0, atol=1e-6)
        for (name, p), q in zip(split.model.named_parameters(), ref.parameters()):
            assert p.grad is not None, name
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
    else:
        assert split.prompt.grad is not None and split.prompt.grad.abs().sum() > 0
    # the tail is the final LayerNorm + classifier (ViT has no pooler)
    names = {id(p) for p in split.tail_params()}
    assert id(vit.vit.layernorm.weight) not in names and id(split.model.vit.layernorm.weight) in names
    assert id(split.model.classifier.weight) in names


def test_vit_prompt_init_is_vpt_uniform_and_seeded():
    cfg, vit = tiny_vit()
    a = SplitModel(copy.deepcopy(vit), SplitPoints(0, 0, 50), seed=3)
    b = SplitModel(copy.deepcopy(vit), SplitPoints(0, 0, 50), seed=3)
    bound = (6.0 / (1 * 7 * 7 + cfg.model.hidden_size)) ** 0.5
    assert torch.equal(a.prompt, b.prompt) and a.prompt.shape == (50, cfg.model.hidden_size)
    assert float(a.prompt.abs().max()) <= bound and float(a.prompt.abs().max()) > 0.9 * bound
