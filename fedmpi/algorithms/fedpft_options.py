"""FedPFT's knobs, read from `cfg.options` and checked with clear messages."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fedmpi.config import ConfigError

MODES = ("fedpft", "no_align", "full")
LORA_TARGETS = ["query", "key", "value", "attention.output.dense"]


@dataclass
class FedPFTOptions:
    # fedpft: distil before FL + neuron alignment; no_align: the same sub-model
    # with no alignment at all (FedOT-like); full: every neuron kept (LoRA on the full model).
    mode: str = "fedpft"
    keep_layers: list[int] | None = None  # kept whole; default first and last
    ffn_keep_ratio: float = 0.25  # share of FFN neurons kept in the other layers
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    distill_steps: int = 100  # layer-level distillation steps before FL
    distill_alpha: float = 0.5  # weight of the W_out·W_in product error
    distill_lr: float = 1e-3
    distill_batch_size: int = 16
    # A ../shared/data name (read via data.path), a folder, or "embedded": text
    # from the embedded synthetic generator with another seed (synthetic!).
    public_data: str = "embedded"
    public_samples: int = 1000
    align_every: int = 2  # neuron-level alignment every t rounds (0: never)
    align_eps: float = 0.05  # |a| < eps counts as an inactive activation
    align_neurons: float = 0.1  # per layer: a share (< 1) of the kept neurons, or a count (>= 1)
    align_steps: int = 20

    @property
    def distills(self) -> bool:
        return self.mode == "fedpft" and self.distill_steps > 0

    @property
    def aligns(self) -> bool:
        return self.mode == "fedpft" and self.align_every > 0 and self.align_steps > 0

    def align_count(self, kept: int) -> int:
        n = round(self.align_neurons * kept) if self.align_neurons < 1 else int(self.align_neurons)
        return max(1, min(kept, n))


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_options(raw: dict[str, Any]) -> FedPFTOptions:
    names = {f.name for f in dataclasses.fields(FedPFTOptions)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown fedpft option(s) {', '.join('options.' + u for u in unknown)}; "
                          f"known: {', '.join(sorted(names))}")
    raw = dict(raw)
    for key in ("ffn_keep_ratio", "distill_alpha", "distill_lr", "align_eps", "align_neurons"):
        if isinstance(raw.get(key), str):  # YAML reads 1e-3 as a string
            try:
                raw[key] = float(raw[key])
            except ValueError:
                raise ConfigError(f"options.{key} expects a number, got {raw[key]!r}") from None
    o = FedPFTOptions(**raw)
    if o.mode not in MODES:
        raise ConfigError(f"options.mode '{o.mode}' unknown; choose one of: {', '.join(MODES)}")
    if o.keep_layers is not None and (not isinstance(o.keep_layers, list)
                                      or not all(isinstance(i, int) and not isinstance(i, bool)
                                                 for i in o.keep_layers)):
        raise ConfigError(f"options.keep_layers must be a list of layer indices, got {o.keep_layers!r}")
    if not _is_num(o.ffn_keep_ratio) or not 0 < o.ffn_keep_ratio <= 1:
        raise ConfigError(f"options.ffn_keep_ratio must be in (0, 1], got {o.ffn_keep_ratio!r}")
    if not isinstance(o.lora_targets, list) or not o.lora_targets:
        raise ConfigError(f"options.lora_targets must be a non-empty list of module names, got {o.lora_targets!r}")
    for key in ("distill_steps", "align_every", "align_steps"):
        v = getattr(o, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"options.{key} must be an integer >= 0, got {v!r}")
    for key in ("distill_batch_size", "public_samples"):
        v = getattr(o, key)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"options.{key} must be an integer > 0, got {v!r}")
    if not _is_num(o.distill_alpha) or o.distill_alpha < 0:
        raise ConfigError(f"options.distill_alpha must be >= 0, got {o.distill_alpha!r}")
    for key in ("distill_lr", "align_eps", "align_neurons"):
        v = getattr(o, key)
        if not _is_num(v) or v <= 0:
            raise ConfigError(f"options.{key} must be > 0, got {v!r}")
    if not isinstance(o.public_data, str) or not o.public_data:
        raise ConfigError(f"options.public_data must be a dataset name or folder, got {o.public_data!r}")
    if o.mode == "full":
        o.ffn_keep_ratio = 1.0
    return o
