"""U-shaped split of a BERT-like encoder classifier, for split learning.

The client keeps the head (embeddings, an optional soft prompt, the first
k layers) and the tail (the last t layers, pooler and classifier), so labels
never leave it; the server keeps the body (the layers in between). The three
parts are views on the one Hugging Face model (they share its parameters),
and chaining them computes exactly what the unsplit model computes: the same
embeddings, the same attention mask for every layer, the same pooling.

The soft prompt is P vectors prepended to the embedding output (with their
own all-ones attention mask); the tail drops those positions again before
pooling, so the pooler still reads the [CLS] token. Every tensor between the
parts is (batch, P + seq_len, hidden), which is what crosses the link.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from fedmpi.errors import ConfigError

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SplitPoints:
    head_layers: int  # encoder layers on the client before the server's body
    tail_layers: int  # encoder layers on the client after it
    prompt_tokens: int = 0  # soft-prompt vectors prepended in the client head


def encoder_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """(embeddings, encoder layers) of a BERT-like model, or a ConfigError."""
    base = getattr(model, "base_model", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if base is None or not hasattr(base, "embeddings") or not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"model {type(model).__name__} cannot be split: split learning needs a BERT-like "
                          "encoder (base_model.embeddings + base_model.encoder.layer), e.g. minilm or tiny-bert")
    if getattr(model.config, "is_decoder", False):
        raise ConfigError("split learning supports bidirectional encoders only (config.is_decoder is set)")
    return base.embeddings, layers


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


def _run_layers(layers: list[nn.Module], config, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Encoder layers with the mask the Hugging Face model itself would build."""
    from transformers.masking_utils import create_bidirectional_mask

    if not layers:
        return hidden
    attn = create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask)
    for layer in layers:
        out = layer(hidden, attn)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


class SplitModel(nn.Module):
    """Head, body and tail of one classifier; `forward` chains all three
    (the model evaluated), `shortcut` skips the body (SFPrompt's local path)."""

    def __init__(self, model: nn.Module, points: SplitPoints, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.points = points
        self.config = model.config
        self.embeddings, layers = encoder_parts(model)
        n, k, t = len(layers), points.head_layers, points.tail_layers
        self.head_layers = list(layers[:k])
        self.body_layers = list(layers[k:n - t])
        self.tail_layers = list(layers[n - t:])
        self.prompt = nn.Parameter(self._init_prompt(points.prompt_tokens, seed)) if points.prompt_tokens else None
        self._classify = self._classifier(model)

    # -- construction -------------------------------------------------------
    def _init_prompt(self, p: int, seed: int) -> torch.Tensor:
        """Embeddings of p random vocabulary tokens: a prompt on the scale the
        first layer expects, identical on every rank for a given seed."""
        gen = torch.Generator().manual_seed(seed + 0x50F7)
        ids = torch.randint(1000, self.config.vocab_size, (1, p), generator=gen)
        was = self.embeddings.training
        self.embeddings.eval()
        with torch.no_grad():
            out = self.embeddings(input_ids=ids.to(self.embeddings.word_embeddings.weight.device))[0]
        self.embeddings.train(was)
        return out.detach().clone()

    @staticmethod
    def _classifier(model: nn.Module):
        base, cls = model.base_model, getattr(model, "classifier", None)
        pooler = getattr(base, "pooler", None)
        if isinstance(cls, nn.Linear) and pooler is not None:  # BERT: pooler -> dropout -> linear
            drop = getattr(model, "dropout", nn.Identity())
            return lambda seq: cls(drop(pooler(seq)))
        if cls is not None and pooler is None:  # RoBERTa-style head reads the sequence
            return cls
        raise ConfigError(f"model {type(model).__name__} has no classifier head this split understands")

    # -- parameter groups ---------------------------------------------------
    def head_modules(self) -> list[nn.Module]:
        return [self.embeddings, *self.head_layers]

    def tail_modules(self) -> list[nn.Module]:
        base = self.model.base_model
        extra = [m for m in (getattr(base, "pooler", None), getattr(self.model, "classifier", None)) if m is not None]
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

    # -- the three parts ----------------------------------------------------
    def head(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Client: embeddings (+ prompt) and the first layers -> (hidden, mask)."""
        hidden = self.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        if self.prompt is not None:
            b = hidden.shape[0]
            hidden = torch.cat([self.prompt.unsqueeze(0).expand(b, -1, -1), hidden], dim=1)
            mask = torch.cat([mask.new_ones(b, self.prompt.shape[0]), mask], dim=1)
        return _run_layers(self.head_layers, self.config, hidden, mask), mask

    def body(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Server: the middle layers."""
        return _run_layers(self.body_layers, self.config, hidden, mask)

    def tail(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Client: the last layers, then pooling of [CLS] (prompt dropped) -> logits."""
        hidden = _run_layers(self.tail_layers, self.config, hidden, mask)
        return self._classify(hidden[:, self.points.prompt_tokens:])

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    def shortcut(self, batch: Batch) -> torch.Tensor:
        """Head straight into tail, skipping the server (EL2N, local-loss steps)."""
        return self.tail(*self.head(batch))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **_: object) -> SequenceClassifierOutput:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        hidden, mask = self.head(batch)
        logits = self.tail(self.body(hidden, mask), mask)
        return SequenceClassifierOutput(loss=None if labels is None else self.loss(logits, labels), logits=logits)


def split_step(split: SplitModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """One split-learning step in a single process, exactly as the wire does it:
    detached tensors at each cut, gradients handed back by hand. Returns
    (loss, logits); gradients land in every part's parameters. Used by tests
    to prove the split equals the unsplit model."""
    h1, mask = split.head(batch)
    h1_srv = h1.detach().requires_grad_(True)
    h2 = split.body(h1_srv, mask)
    h2_cli = h2.detach().requires_grad_(True)
    logits = split.tail(h2_cli, mask)
    loss = split.loss(logits, batch["labels"])
    loss.backward()
    h2.backward(h2_cli.grad)
    h1.backward(h1_srv.grad)
    return loss.detach(), logits.detach()
