"""FedPFT's knobs (`options.*` with `algorithm: fedpft`), declared once with their checks.

Defaults follow the paper (arXiv 2404.11536) and its official code
(github.com/pzp-dzd/FedPFT): every layer compressed, layer-level distillation
that runs the student's own forward and matches each compressed layer's output
(errors cascade, as in deployment) on a general public corpus, and every 10
rounds the 50% least active kept neurons (highest APoZ) re-aligned.
"""
from __future__ import annotations

from dataclasses import dataclass

from fedmpi.errors import ConfigError
from fedmpi.options import at_least, in_range, option, positive

MODES = ("fedpft", "no_align", "full")
LORA_TARGETS = ["query", "key", "value", "attention.output.dense"]
# cascade: the student runs its own forward; each compressed layer's output is
#   matched to the teacher's; FFN weights, biases and output LayerNorm train (paper, official code).
# teacher_input: each compressed FFN is fed the teacher's FFN input and regressed on its own
#   (no cascade); only W_in, b_in, W_out train (this emulator's first variant; cheaper).
DISTILL_MODES = ("cascade", "teacher_input")
# apoz: share of real tokens on which a neuron is off (activation <= 0: a ReLU's zero, GELU's negative half).
# near_zero: share with |activation| < align_eps (this emulator's first variant).
ACTIVITY = ("apoz", "near_zero")


@dataclass
class FedPFTOptions:
    # fedpft: distil before FL + neuron alignment; no_align: the same sub-model
    # with no distillation and no alignment (FedOT-like); full: every neuron kept (LoRA on the full model).
    mode: str = option("fedpft", choices=MODES)
    keep_layers: list[int] = option(default_factory=list,
                                    help="layers kept whole (negative counts from the end); default none: "
                                         "every layer compressed, as in the paper")
    ffn_keep_ratio: float = option(0.25, check=in_range(0, 1, low_open=True),
                                   help="share of FFN neurons kept in compressed layers (official: 768 of 3072)")
    lora_targets: list[str] = option(default_factory=lambda: list(LORA_TARGETS))
    distill_mode: str = option("cascade", choices=DISTILL_MODES)
    distill_steps: int = option(200, check=at_least(0), help="layer-level distillation steps before FL")
    distill_alpha: float = option(0.01, check=at_least(0), help="weight of the W_out·W_in product error "
                                                                "(official command line: 0.01)")
    distill_lr: float = option(6e-4, check=positive, help="peak AdamW lr (linear warm-up 4.8%, then decay)")
    distill_batch_size: int = option(16, check=positive)
    # A ../shared/data name (read via data.path), a folder, or "embedded": text
    # from the embedded synthetic sentiment generator with another seed (synthetic,
    # and the embedded task's own distribution: for offline smoke tests only).
    public_data: str = option("20newsgroups", help="general public corpus for distillation, never the task's")
    public_samples: int = option(1000, check=positive, help="windows of model.max_length tokens packed from it")
    align_every: int = option(10, check=at_least(0), help="neuron-level alignment every t rounds (0: never)")
    align_activity: str = option("apoz", choices=ACTIVITY, help="how clients measure a neuron's inactivity")
    align_eps: float = option(0.05, check=positive, help="near_zero: |a| < eps counts as inactive")
    align_neurons: float = option(0.5, check=positive,
                                  help="per layer: a share (< 1) of the kept neurons, or a count (>= 1), "
                                       "the least active re-aligned")
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
