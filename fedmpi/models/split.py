"""U-shaped split of a transformer classifier (BERT-like text encoder or ViT), for split learning.

The client keeps the head (embeddings or patch embedding, an optional soft
prompt, the first k layers) and the tail (the last t layers, then pooler and
classifier, or ViT's final LayerNorm and classifier), so labels never leave
it; the server keeps the body (the layers in between). The three parts are
views on the one Hugging Face model (they share its parameters), and chaining
them computes exactly what the unsplit model computes: the same embeddings,
the same attention mask for every layer (text; images have no padding), the
same [CLS] pooling.

The soft prompt is P vectors prepended to the embedding output (with their
own all-ones attention mask; VPT-shallow, whose prompts sit between [CLS] and
the patches, is the same model, as attention ignores order once position
embeddings are added). The tail drops those positions again, so it still reads
the [CLS] token.

Only what the receiving side needs crosses a cut: the body's output goes to
a layer-less tail as the [CLS] row alone (`cut`), and a head with no layers
whose only trainable part is the prompt gets back only the prompt rows of its
gradient (`head_rows`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from fedmpi.errors import ConfigError

Batch = dict[str, torch.Tensor]
POOLINGS = ("cls", "mean")


@dataclass(frozen=True)
class SplitPoints:
    head_layers: int  # encoder layers on the client before the server's body
    tail_layers: int  # encoder layers on the client after it
    prompt_tokens: int = 0  # soft-prompt vectors prepended in the client head


def encoder_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """(embeddings, encoder layers) of a BERT-like model or a ViT, or a ConfigError."""
    base = getattr(model, "base_model", None)
    layers = getattr(base, "layers", None)  # ViT (transformers 5)
    if not isinstance(layers, nn.ModuleList):
        layers = getattr(getattr(base, "encoder", None), "layer", None)  # BERT, older ViT
    if base is None or not hasattr(base, "embeddings") or not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"model {type(model).__name__} cannot be split: split learning needs a BERT-like "
                          "encoder (base_model.embeddings + base_model.encoder.layer) or a ViT, e.g. minilm, "
                          "tiny-bert or tiny-vit")
    if getattr(model.config, "is_decoder", False):
        raise ConfigError("split learning supports bidirectional encoders only (config.is_decoder is set)")
    return base.embeddings, layers


def is_vision(model: nn.Module) -> bool:
    return hasattr(encoder_parts(model)[0], "patch_embeddings")


def check_points(model: nn.Module, points: SplitPoints, model_name: str) -> None:
    """Refuse split points the model cannot honour, naming the options."""
    _, layers = encoder_parts(model)
    n = len(layers)
    if points.head_layers < 0 or points.tail_layers < 0:
        raise ConfigError("options.split_head_layers and options.split_tail_layers must be >= 0, got "
                          f"{points.head_layers} and {points.tail_layers}")
    if points.head_layers + points.tail_layers >= n:
        raise ConfigError(
            f"options.split_head_layers ({points.head_layers}) + options.split_tail_layers ({points.tail_layers}) "
            f"must leave at least one layer for the server's body: model '{model_name}' has {n} layers, so "
            f"their sum must be at most {n - 1}")
    if points.prompt_tokens < 0:
        raise ConfigError(f"options.prompt_tokens must be >= 0, got {points.prompt_tokens}")


def _run_layers(layers: list[nn.Module], config, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Encoder layers with the mask the Hugging Face model itself would build (None: no padding)."""
    from transformers.masking_utils import create_bidirectional_mask

    if not layers:
        return hidden
    attn = create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask)
    for layer in layers:
        out = layer(hidden, attn)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, 1, H): the mean of the rows the mask marks (every row without a mask)."""
    if mask is None:
        return hidden.mean(1, keepdim=True)
    w = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)


class SplitModel(nn.Module):
    """Head, body and tail of one classifier; `forward` chains all three
    (the model evaluated), `shortcut` skips the body (SFPrompt's local path)."""

    def __init__(self, model: nn.Module, points: SplitPoints, seed: int = 0, shortcut_pool: str = "cls") -> None:
        super().__init__()
        if shortcut_pool not in POOLINGS:
            raise ConfigError(f"shortcut pooling must be one of {POOLINGS}, got '{shortcut_pool}'")
        self.model = model
        self.points = points
        self.config = model.config
        self.embeddings, layers = encoder_parts(model)
        self.vision = hasattr(self.embeddings, "patch_embeddings")
        n, k, t = len(layers), points.head_layers, points.tail_layers
        self.head_layers = list(layers[:k])
        self.body_layers = list(layers[k:n - t])
        self.tail_layers = list(layers[n - t:])
        self.shortcut_pool = shortcut_pool
        self.prompt = nn.Parameter(self._init_prompt(points.prompt_tokens, seed)) if points.prompt_tokens else None
        self._classify = self._classifier(model)

    # -- construction -------------------------------------------------------
    def _init_prompt(self, p: int, seed: int) -> torch.Tensor:
        """Identical on every rank for a given seed. Text: embeddings of p random
        vocabulary tokens (on the scale the first layer expects). Images: VPT's
        uniform(-v, v), v = sqrt(6 / (channels x patch area + hidden))."""
        gen = torch.Generator().manual_seed(seed + 0x50F7)
        device = next(self.embeddings.parameters()).device
        if self.vision:
            c = self.config
            patch = c.patch_size if isinstance(c.patch_size, int) else math.prod(c.patch_size) ** 0.5
            v = math.sqrt(6.0 / (c.num_channels * patch * patch + c.hidden_size))
            return ((torch.rand(p, c.hidden_size, generator=gen) * 2 - 1) * v).to(device)
        ids = torch.randint(1000, self.config.vocab_size, (1, p), generator=gen)
        was = self.embeddings.training
        self.embeddings.eval()
        with torch.no_grad():
            out = self.embeddings(input_ids=ids.to(device))[0]
        self.embeddings.train(was)
        return out.detach().clone()

    @staticmethod
    def _classifier(model: nn.Module):
        """seq (B, L, H), [CLS] first and no prompt rows -> logits."""
        base, cls = model.base_model, getattr(model, "classifier", None)
        pooler = getattr(base, "pooler", None)
        if isinstance(cls, nn.Linear) and pooler is not None:  # BERT: pooler -> dropout -> linear
            drop = getattr(model, "dropout", nn.Identity())
            return lambda seq: cls(drop(pooler(seq)))
        if isinstance(cls, nn.Linear) and isinstance(getattr(base, "layernorm", None), nn.LayerNorm):
            norm = base.layernorm  # ViT: final LayerNorm (per token: the [CLS] row alone is exact) -> linear
            return lambda seq: cls(norm(seq[:, 0]))
        if cls is not None and pooler is None:  # RoBERTa-style head reads the sequence
            return cls
        raise ConfigError(f"model {type(model).__name__} has no classifier head this split understands")

    # -- parameter groups ---------------------------------------------------
    def head_modules(self) -> list[nn.Module]:
        return [self.embeddings, *self.head_layers]

    def tail_modules(self) -> list[nn.Module]:
        base = self.model.base_model
        norm = getattr(base, "layernorm", None) if self.vision else None
        extra = [m for m in (getattr(base, "pooler", None), norm, getattr(self.model, "classifier", None))
                 if m is not None]
        return [*self.tail_layers, *extra]

    def head_params(self) -> list[nn.Parameter]:
        params = [p for m in self.head_modules() for p in m.parameters()]
        return ([self.prompt] if self.prompt is not None else []) + params

    def body_params(self) -> list[nn.Parameter]:
        return [p for m in self.body_layers for p in m.parameters()]

    def tail_params(self) -> list[nn.Parameter]:
        return [p for m in self.tail_modules() for p in m.parameters()]

    def client_params(self) -> list[nn.Parameter]:
        """Everything the client holds, in a fixed order (head, then tail)."""
        return self.head_params() + self.tail_params()

    # -- what crosses the cuts ------------------------------------------------
    @property
    def needs_mask(self) -> bool:
        """Text has padding: the server needs the attention mask to run the body. Images do not."""
        return not self.vision

    def cut(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the tail needs of the body's output: every row if it has layers, else only
        the [CLS] row (B, 1, H): pooler/LayerNorm and classifier read nothing else."""
        if self.tail_layers:
            return hidden
        p = self.points.prompt_tokens
        return hidden[:, p:p + 1]

    def head_rows(self) -> slice:
        """The rows of the head's output whose gradient the client needs: all of them if a
        head layer or embedding weight trains (or layers lie between the prompt and the cut),
        else only the prompt's (none without a prompt)."""
        if self.head_layers or any(p.requires_grad for m in self.head_modules() for p in m.parameters()):
            return slice(None)
        trains = self.prompt is not None and self.prompt.requires_grad
        return slice(0, self.points.prompt_tokens if trains else 0)

    # -- the three parts ----------------------------------------------------
    def head(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Client: embeddings (+ prompt) and the first layers -> (hidden, mask or None for images)."""
        if self.vision:
            pixels = batch["pixel_values"].to(next(self.embeddings.parameters()).dtype)
            hidden, mask = self.embeddings(pixels), None
        else:
            hidden = self.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
            mask = batch.get("attention_mask")
            if mask is None:
                mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        if self.prompt is not None:
            b = hidden.shape[0]
            hidden = torch.cat([self.prompt.unsqueeze(0).expand(b, -1, -1), hidden], dim=1)
            if mask is not None:
                mask = torch.cat([mask.new_ones(b, self.prompt.shape[0]), mask], dim=1)
        return _run_layers(self.head_layers, self.config, hidden, mask), mask

    def body(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Server: the middle layers."""
        return _run_layers(self.body_layers, self.config, hidden, mask)

    def tail(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Client: `cut(body output)` -> the last layers (prompt rows dropped after them) -> logits."""
        if self.tail_layers:
            hidden = _run_layers(self.tail_layers, self.config, hidden, mask)[:, self.points.prompt_tokens:]
        return self._classify(hidden)

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    def shortcut(self, batch: Batch) -> torch.Tensor:
        """Head straight into tail, skipping the server (EL2N, local-loss steps). With `mean`
        pooling the tail reads the mean of the head's rows instead of [CLS] (which, with no
        layer on the client, does not depend on the input at all)."""
        hidden, mask = self.head(batch)
        if self.shortcut_pool == "mean":
            return self._classify(masked_mean(hidden, mask))
        return self.tail(self.cut(hidden), mask)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **_: object) -> SequenceClassifierOutput:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                 "pixel_values": pixel_values}
        hidden, mask = self.head(batch)
        logits = self.tail(self.cut(self.body(hidden, mask)), mask)
        return SequenceClassifierOutput(loss=None if labels is None else self.loss(logits, labels), logits=logits)


def split_step(split: SplitModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """One split-learning step in a single process, exactly as the wire does it:
    detached tensors at each cut (only what the other side needs), gradients
    handed back by hand. Returns (loss, logits); gradients land in every part's
    parameters. Used by tests to prove the split equals the unsplit model."""
    h1, mask = split.head(batch)
    h1_srv = h1.detach().requires_grad_(True)
    h2 = split.cut(split.body(h1_srv, mask))
    h2_cli = h2.detach().requires_grad_(True)
    logits = split.tail(h2_cli, mask)
    loss = split.loss(logits, batch["labels"])
    loss.backward()
    h2.backward(h2_cli.grad)
    rows = split.head_rows()
    if h1.requires_grad and h1[:, rows].numel():
        h1[:, rows].backward(h1_srv.grad[:, rows])
    return loss.detach(), logits.detach()
