"""Vision backbones (FedTune's CLIP vs ViT): ViTForImageClassification and a
CLIP vision encoder with a classification head (CLIPForImageClassification).

"tiny-vit" / "tiny-clip" are small random models for tests (sizes from
model.hidden_size etc., grey 28x28 input by default); otherwise a local path
or hub id whose config is a ViT or a CLIP model. No weights ship offline.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from fedmpi.errors import ConfigError
from fedmpi.data.images import PixelEncoder

TINY_VIT, TINY_CLIP = "tiny-vit", "tiny-clip"
TINY_PATCH = 7


def _tiny_sizes(cfg) -> dict:
    return dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                intermediate_size=cfg.intermediate_size, image_size=cfg.image_size, patch_size=TINY_PATCH,
                num_channels=1)


def _pretrained_kind(name: str) -> str | None:
    """'vit' | 'clip' for a loadable pretrained vision model, else None (not a vision model)."""
    from transformers import AutoConfig

    if not (Path(name).exists() or "/" in name):
        return None
    try:
        conf = AutoConfig.from_pretrained(name)
    except (OSError, ValueError):
        return None
    kind = getattr(conf, "model_type", "")
    return "vit" if kind == "vit" else "clip" if kind.startswith("clip") else None


def vision_kind(cfg) -> str | None:
    if cfg.name == TINY_VIT:
        return "vit"
    if cfg.name == TINY_CLIP:
        return "clip"
    return _pretrained_kind(cfg.name)


def pixel_encoder(cfg) -> PixelEncoder:
    """The 'tokenizer' of a vision model: its input size, channels and normalisation."""
    if cfg.name in (TINY_VIT, TINY_CLIP):
        return PixelEncoder(cfg.image_size, 1)
    from transformers import AutoConfig

    conf = AutoConfig.from_pretrained(cfg.name)
    conf = getattr(conf, "vision_config", conf)
    return PixelEncoder(conf.image_size, conf.num_channels)


def build_vision(cfg, num_labels: int) -> nn.Module:
    """Caller seeds torch first, so new heads are identical on every rank."""
    return _drop_unused(_build(cfg, num_labels))


def _drop_unused(model: nn.Module) -> nn.Module:
    """CLIPForImageClassification classifies mean-pooled patch tokens and never
    uses post_layernorm: drop it, so full/bitfit do not ship untrained weights."""
    if hasattr(model, "vision_model"):
        model.vision_model.post_layernorm = nn.Identity()
    return model


def _build(cfg, num_labels: int) -> nn.Module:
    from transformers import CLIPConfig, CLIPForImageClassification, ViTConfig, ViTForImageClassification

    kind = vision_kind(cfg)
    if cfg.name == TINY_VIT:
        return ViTForImageClassification(ViTConfig(**_tiny_sizes(cfg), num_labels=num_labels,
                                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    if cfg.name == TINY_CLIP:
        text = dict(hidden_size=cfg.hidden_size, num_hidden_layers=1, num_attention_heads=cfg.num_heads,
                    intermediate_size=cfg.intermediate_size)
        return CLIPForImageClassification(CLIPConfig(vision_config=_tiny_sizes(cfg), text_config=text,
                                                     num_labels=num_labels))
    cls = {"vit": ViTForImageClassification, "clip": CLIPForImageClassification}.get(kind)
    if cls is None:
        raise ConfigError(f"model '{cfg.name}' is not a ViT or CLIP vision model")
    return cls.from_pretrained(cfg.name, num_labels=num_labels, ignore_mismatched_sizes=True)
