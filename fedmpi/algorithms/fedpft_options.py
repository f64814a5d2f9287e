"""FedPFT's knobs (`options.*` with `algorithm: fedpft`), declared once with their checks."""
from __future__ import annotations

from dataclasses import dataclass

from fedmpi.errors import ConfigError
from fedmpi.options import at_least, in_range, option, positive

MODES = ("fedpft", "no_align", "full")
LORA_TARGETS = ["query", "key", "value", "attention.output.dense"]


@dataclass
class FedPFTOptions:
    # fedpft: distil before FL + neuron alignment; no_align: the same sub-model
    # with no alignment at all (FedOT-like); full: every neuron kept (LoRA on the full model).
    mode: str = option("fedpft", choices=MODES)
    keep_layers: list[int] | None = option(None, help="layers kept whole; default first and last")
    ffn_keep_ratio: float = option(0.25, check=in_range(0, 1, low_open=True),
                                   help="share of FFN neurons kept in the other layers")
    lora_targets: list[str] = option(default_factory=lambda: list(LORA_TARGETS))
    distill_steps: int = option(100, check=at_least(0), help="layer-level distillation steps before FL")
    distill_alpha: float = option(0.5, check=at_least(0), help="weight of the W_out·W_in product error")
    distill_lr: float = option(1e-3, check=positive)
    distill_batch_size: int = option(16, check=positive)
    # A ../shared/data name (read via data.path), a folder, or "embedded": text
    # from the embedded synthetic generator with another seed (synthetic!).
    public_data: str = option("embedded")
    public_samples: int = option(1000, check=positive)
    align_every: int = option(2, check=at_least(0), help="neuron-level alignment every t rounds (0: never)")
    align_eps: float = option(0.05, check=positive, help="|a| < eps counts as an inactive activation")
    align_neurons: float = option(0.1, check=positive,
                                  help="per layer: a share (< 1) of the kept neurons, or a count (>= 1)")
    align_steps: int = option(20, check=at_least(0))

    def validate(self) -> None:
        if not self.lora_targets:
            raise ConfigError("options.lora_targets must be a non-empty list of module names")
        if self.mode == "full":
            self.ffn_keep_ratio = 1.0

    @property
    def distills(self) -> bool:
        return self.mode == "fedpft" and self.distill_steps > 0

    @property
    def aligns(self) -> bool:
        return self.mode == "fedpft" and self.align_every > 0 and self.align_steps > 0

    def align_count(self, kept: int) -> int:
        n = round(self.align_neurons * kept) if self.align_neurons < 1 else int(self.align_neurons)
        return max(1, min(kept, n))
