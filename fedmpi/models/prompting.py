"""Soft prompts inserted after the class token, and the pooling the classifier reads.

peft's prompt tuning prepends its virtual tokens *before* [CLS], and BERT's
pooler reads position 0: the classifier then read the first prompt token,
not the class token. Here the prompt goes in *after* the class token, at the
embedding block's output (VPT-shallow, which the ViT/CLIP visual prompt
already does), and the attention mask gains P ones after position 0:

- the class token keeps position 0 and the role its pooler/classifier was
  pre-trained for; the words keep their pre-training positions (a prepend
  shifts them all by P);
- one insertion serves text and images, so FedPrompt/FedTune/VPT rows
  compare the same thing;
- it stays a *shallow* prompt: P x hidden values travel, FedPrompt's ~0.01%
  claim is about exactly that (a deep/prefix prompt sends P x hidden per layer).

`model.pooling` chooses what the classifier reads: `cls` (the class token,
through the model's own pooler where it has one), `mean` (the mean of the
token rows: for text every attended token, [CLS]/[SEP] included, as
sentence-transformers pools all-MiniLM-L6-v2, which was trained that way
and whose BERT pooler took no part; for images the patch tokens, as CLIP's
own head does) or `auto` (each architecture's own head: BERT and ViT read
the class token, CLIP the patch mean). Prompt rows and padding never enter
a mean.

Every hook reads its state from the module it is attached to (no closures),
so a deep copy of a prompted model (FedPFT's proxy) is self-contained.
"""
from __future__ import annotations

import torch
from torch import nn

from fedmpi.errors import ConfigError

POOLINGS = ("auto", "cls", "mean")
_HOOKED = "_fedmpi_input_hooks"
_POOLING = "_fedmpi_pooling"
PROMPT_ROWS = "_fedmpi_prompt_rows"  # on a vision body: prompt rows after its class token


# -- text ---------------------------------------------------------------------
def text_encoder(model: nn.Module) -> nn.Module | None:
    """The BERT-like encoder (embeddings + encoder + optional pooler) of a text
    classifier with a class token at position 0, else None (decoders, vision)."""
    base = getattr(model, "base_model", None)
    if base is None or getattr(model.config, "is_decoder", False):
        return None
    if hasattr(base, "embeddings") and hasattr(base, "encoder") and not hasattr(model, "vit") \
            and not hasattr(model, "vision_model"):
        return base
    return None


class TextPrompt(nn.Module):
    """P learned vectors that enter the sequence right after the class token."""

    def __init__(self, tokens: torch.Tensor) -> None:
        super().__init__()
        self.tokens = nn.Parameter(tokens)


class MaskedMeanPool(nn.Module):
    """Stands in for BERT's pooler: the mean of the attended token rows, prompt rows
    excluded. The encoder's pre-hook hands it this forward's token mask."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            raise ConfigError("model.pooling=mean needs the model's own forward (it pools with the "
                              "attention mask); split learning reads the pooler directly: use model.pooling=cls")
        return masked_mean(hidden, row_weights(self.mask, hidden.shape[1]))


def row_weights(mask: torch.Tensor, rows: int) -> torch.Tensor:
    """(B, rows) weights from a (B, S) token mask when rows - S prompt rows follow
    position 0: the prompt rows weigh 0."""
    p = rows - mask.shape[1]
    if p == 0:
        return mask
    return torch.cat([mask[:, :1], mask.new_zeros(mask.shape[0], p), mask[:, 1:]], dim=1)


def masked_mean(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    w = weights.to(hidden.dtype).unsqueeze(-1)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)


def _prompt(encoder: nn.Module) -> TextPrompt | None:
    return getattr(encoder.embeddings, "prompt", None)


def _before_encoder(encoder: nn.Module, args: tuple, kwargs: dict):
    """Record the token mask (for mean pooling) and widen it by the prompt rows."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    if mask is None:
        ref = ids if ids is not None else kwargs["inputs_embeds"]
        mask = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
    if isinstance(encoder.pooler, MaskedMeanPool):
        encoder.pooler.mask = mask
    prompt = _prompt(encoder)
    if prompt is None:
        return None
    p = prompt.tokens.shape[0]
    wide = torch.cat([mask[:, :1], mask.new_ones(mask.shape[0], p), mask[:, 1:]], dim=1)
    if "attention_mask" in kwargs or len(args) <= 1:
        kwargs = {**kwargs, "attention_mask": wide}
    else:
        args = (*args[:1], wide, *args[2:])
    return args, kwargs


def _after_encoder(encoder: nn.Module, args: tuple, kwargs: dict, out):
    if isinstance(encoder.pooler, MaskedMeanPool):
        encoder.pooler.mask = None  # never pool a later call with a stale mask
    return out


def _insert_after_class_token(embeddings: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    prompt = embeddings.prompt.tokens.to(out.dtype).expand(out.shape[0], -1, -1)
    return torch.cat([out[:, :1], prompt, out[:, 1:]], dim=1)


def _hook_encoder(encoder: nn.Module) -> None:
    if getattr(encoder, _HOOKED, False):
        return
    encoder.register_forward_pre_hook(_before_encoder, with_kwargs=True)
    encoder.register_forward_hook(_after_encoder, with_kwargs=True)
    setattr(encoder, _HOOKED, True)


def insert_text_prompt(model: nn.Module, num_tokens: int) -> TextPrompt:
    """Give a BERT-like classifier P prompt vectors after [CLS] (returns the prompt,
    registered as `<encoder>.embeddings.prompt`). They start as the embedding block's
    outputs for P random vocabulary tokens (peft's SAMPLE_VOCAB idea, on the scale
    the first layer expects), drawn from torch's seeded RNG: the same on every rank."""
    encoder = text_encoder(model)
    if encoder is None:
        raise ConfigError(f"{type(model).__name__} has no BERT-like encoder with a class token for the prompt")
    emb = encoder.embeddings
    vocab = emb.word_embeddings.num_embeddings
    ids = torch.randint(min(1000, vocab - 1), vocab, (1, num_tokens))
    was = emb.training
    emb.eval()
    with torch.no_grad():
        tokens = emb(input_ids=ids.to(emb.word_embeddings.weight.device))[0].detach().clone()
    emb.train(was)
    emb.prompt = TextPrompt(tokens)
    emb.register_forward_hook(_insert_after_class_token)
    _hook_encoder(encoder)
    return emb.prompt


# -- vision -------------------------------------------------------------------
def _vision_body(model: nn.Module) -> tuple[nn.Module, str] | None:
    for name, kind in (("vit", "vit"), ("vision_model", "clip")):
        if hasattr(model, name):
            return getattr(model, name), kind
    return None


def _pool_vision(body: nn.Module, args: tuple, out):
    """Rewrite the body's last hidden state so the model's own head reads the chosen
    pooling: ViT's head reads row 0, CLIP's the mean of rows 1: ."""
    h = out.last_hidden_state
    p = getattr(body, PROMPT_ROWS, 0)
    pooling, kind = getattr(body, _POOLING)
    if pooling == "auto":
        pooling = "cls" if kind == "vit" else "mean"
    patches = h[:, 1 + p:]
    if kind == "vit":
        if pooling == "cls":
            return out
        h = torch.cat([patches.mean(1, keepdim=True), h[:, 1:]], dim=1)
    else:
        h = torch.cat([h[:, :1], h[:, :1] if pooling == "cls" else patches], dim=1)
    out.last_hidden_state = h
    return out


def hook_vision_pooling(model: nn.Module, pooling: str | None = None) -> None:
    """Install (once) the vision pooling hook; `pooling` None keeps the one set."""
    found = _vision_body(model)
    if found is None:
        return
    body, kind = found
    if pooling is not None or not hasattr(body, _POOLING):
        setattr(body, _POOLING, (pooling or "auto", kind))
    if not getattr(body, _HOOKED, False):
        body.register_forward_hook(_pool_vision)
        setattr(body, _HOOKED, True)


def mark_vision_prompt(model: nn.Module, rows: int) -> None:
    """A visual prompt of `rows` tokens follows the class token: keep it out of every pool."""
    found = _vision_body(model)
    if found is not None:
        setattr(found[0], PROMPT_ROWS, rows)
        hook_vision_pooling(model)


# -- choosing the pooling at build time ------------------------------------------
def apply_pooling(model: nn.Module, pooling: str) -> nn.Module:
    """`model.pooling` on a freshly built classifier; `auto` changes nothing."""
    if pooling not in POOLINGS:
        raise ConfigError(f"model.pooling must be one of {', '.join(POOLINGS)}, got '{pooling}'")
    if pooling == "auto":
        return model
    if _vision_body(model) is not None:
        hook_vision_pooling(model, pooling)
        return model
    encoder = text_encoder(model)
    if encoder is None:
        raise ConfigError(f"model.pooling={pooling} is for encoder classifiers (BERT-like, ViT, CLIP); "
                          f"{type(model).__name__} reads its own head: leave it at auto")
    if pooling == "mean":
        if not hasattr(encoder, "pooler"):
            raise ConfigError(f"model.pooling=mean replaces a BERT-like pooler; {type(model).__name__} has none")
        encoder.pooler = MaskedMeanPool()  # BERT's pooler dense + tanh are not used: they leave the model
        _hook_encoder(encoder)
    return model  # cls: the class token at position 0 is what the model's head reads already
