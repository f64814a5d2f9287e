"""Prompts go in after the class token, and the classifier reads the class token
(or a mean that leaves prompt and pad rows out), for text and images."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from fedmpi.config import ModelConfig
from fedmpi.models.backbone import build_model, load_tokenizer
from fedmpi.models.methods import apply_method, trainable
from fedmpi.options import build
from fedmpi.registry import METHODS

P = 5


def method(name: str, **kw):
    cls = METHODS.get(name).Options
    known = {f.name for f in dataclasses.fields(cls)}
    return build(cls, {"name": name, **{k: v for k, v in kw.items() if k in known}}, "method.")


def tiny(pooling: str = "auto", name: str = "tiny-bert", labels: int = 2):
    return build_model(dataclasses.replace(ModelConfig(name=name), pooling=pooling), labels, seed=0).eval()


@pytest.fixture(scope="module")
def batch():
    tok = load_tokenizer(ModelConfig(name="tiny-bert"))
    enc = tok(["the film was great .", "dull ."], padding=True, return_tensors="pt", return_token_type_ids=True)
    assert enc["attention_mask"][1].sum() < enc["attention_mask"].shape[1]  # the second one is padded
    return dict(enc)


def capture(module: torch.nn.Module, store: dict, key: str, inputs: bool = False):
    def hook(mod, args, out):
        if inputs:
            store[key] = args[0].detach()
        else:
            store[key] = (out if isinstance(out, torch.Tensor) else out[0]).detach()
    return module.register_forward_hook(hook)


def test_prompt_enters_after_the_class_token(batch):
    plain = tiny()
    m = apply_method(tiny(), method("prompt", num_virtual_tokens=P))
    seen: dict = {}
    capture(m.bert.encoder.layer[0], seen, "layer0_in", inputs=True)
    with torch.no_grad():
        m(**batch)
        emb = plain.bert.embeddings(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
    x = seen["layer0_in"]
    S = batch["input_ids"].shape[1]
    assert x.shape[1] == S + P
    torch.testing.assert_close(x[:, 0], emb[:, 0])  # [CLS] at position 0, with position 0's embedding
    prompt = m.bert.embeddings.prompt.tokens
    torch.testing.assert_close(x[:, 1:1 + P], prompt.expand(2, -1, -1))
    torch.testing.assert_close(x[:, 1 + P:], emb[:, 1:])  # the words keep their pre-training positions
    assert [n for n, _ in trainable(m)] == ["bert.embeddings.prompt.tokens", "classifier.weight",
                                            "classifier.bias"]


def test_cls_pooling_reads_the_class_token_row(batch):
    m = apply_method(tiny(), method("prompt", num_virtual_tokens=P))
    seen: dict = {}
    capture(m.bert.encoder, seen, "last")
    with torch.no_grad():
        logits = m(**batch).logits
        h = seen["last"]
        pooler = m.bert.pooler
        expect = m.classifier(torch.tanh(pooler.dense(h[:, 0])))
    torch.testing.assert_close(logits, expect)


def test_prompt_rows_are_attended_and_padding_changes_nothing(batch):
    """The widened mask lets every token attend to the prompt, and keeps pads out:
    the padded sentence scores as it does alone."""
    m = apply_method(tiny(), method("prompt", num_virtual_tokens=P))
    n = int(batch["attention_mask"][1].sum())
    alone = {k: v[1:, :n] for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(m(**batch).logits[1], m(**alone).logits[0])
        # prompts matter (they are attended): moving them moves the logits
        base = m(**batch).logits
        m.bert.embeddings.prompt.tokens.add_(1.0)
        assert not torch.allclose(base, m(**batch).logits)


@pytest.mark.parametrize("prompted", [False, True])
def test_mean_pooling_excludes_prompt_and_pad_rows(batch, prompted):
    m = tiny("mean")
    if prompted:
        m = apply_method(m, method("prompt", num_virtual_tokens=P))
    assert not any("pooler" in n for n, _ in m.named_parameters())  # BERT's pooler takes no part
    seen: dict = {}
    capture(m.bert.encoder, seen, "last")
    with torch.no_grad():
        logits = m(**batch).logits
    h, mask = seen["last"], batch["attention_mask"].float()
    p = P if prompted else 0
    tokens = torch.cat([h[:, :1], h[:, 1 + p:]], dim=1)  # the prompt rows dropped
    mean = (tokens * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(logits, m.classifier(mean))


def test_mean_pooling_needs_the_mask():
    """Split learning calls the pooler without the model's forward: refused, not guessed."""
    from fedmpi.errors import ConfigError

    m = tiny("mean")
    with pytest.raises(ConfigError, match="pooling=mean"):
        m.bert.pooler(torch.zeros(1, 4, 32))


# -- images -------------------------------------------------------------------
def _vision_rows(m, kind):
    """The body's final token rows, as the head sees them before pooling."""
    seen: dict = {}
    if kind == "vit":
        capture(m.vit.layernorm, seen, "last")
    else:
        capture(m.vision_model.encoder, seen, "last")
    with torch.no_grad():
        logits = m(pixel_values=torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))).logits
    return seen["last"], logits


@pytest.mark.parametrize("pooling", ["auto", "cls", "mean"])
@pytest.mark.parametrize("backbone", ["tiny-vit", "tiny-clip"])
def test_vision_pooling_reads_the_class_token_or_the_patch_mean(backbone, pooling):
    kind = "vit" if backbone == "tiny-vit" else "clip"
    m = apply_method(tiny(pooling, backbone, 10), method("prompt", num_virtual_tokens=3))
    h, logits = _vision_rows(m, kind)
    assert h.shape[1] == 1 + 3 + 16  # class token, 3 prompts, 4 x 4 patches
    reads = pooling if pooling != "auto" else ("cls" if kind == "vit" else "mean")
    pooled = h[:, 0] if reads == "cls" else h[:, 4:].mean(1)  # CLIP's mean used to include the prompts
    torch.testing.assert_close(logits, m.classifier(pooled))
