"""Parameter-efficient methods: LoRA, FeDeRA, prompt tuning, adapters, BitFit, head.

Each method freezes the backbone and leaves exactly the parameters that
travel with requires_grad, so FedAvg's broadcast/upload carries only them.
LoRA, FeDeRA and prompt tuning are peft's; the bottleneck adapter is a small
module (peft has none; AdapterHub's `adapters` pins its own transformers
range, an extra dependency not worth ~30 lines).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedmpi.errors import ConfigError
from fedmpi.metering.flops import svd_flops
from fedmpi.models.llm import LLAMA_NAMES, is_causal_lm
from fedmpi.models.methods import Method, MethodOptions
from fedmpi.models.prompting import insert_text_prompt, mark_vision_prompt, text_encoder
from fedmpi.models.sync import mark_client_work, mark_synced
from fedmpi.options import in_range, option, positive

HEAD_NAMES = ("classifier", "score")  # sequence-classification heads of BERT/ViT/CLIP-with-head
# BERT names -> the q/k/v/o names of ViT (transformers 5) and CLIP; first found wins
PROJ_TARGETS = {"query": ["q_proj"], "key": ["k_proj"], "value": ["v_proj"],
                "attention.output.dense": ["o_proj", "out_proj"]}


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def head_modules(model: nn.Module) -> list[nn.Module]:
    heads = [m for n, m in model.named_children() if n in HEAD_NAMES]
    if not heads:
        raise ConfigError(f"model {type(model).__name__} has no classifier head ({'/'.join(HEAD_NAMES)})")
    return heads


def train_head(model: nn.Module) -> None:
    for head in head_modules(model):
        for p in head.parameters():
            p.requires_grad_(True)


def _targets(model: nn.Module, cfg: Any) -> list[str]:
    """LoRA targets as module-name suffixes, as peft matches them ("query",
    "attention.output.dense"); BERT names map to q/k/v/o_proj on ViT and CLIP."""
    modules = [n for n, _ in model.named_modules()]

    def found(t: str) -> bool:
        return any(n == t or n.endswith("." + t) for n in modules)

    targets = list(cfg.target_modules)
    if not any(found(t) for t in targets) and found("q_proj"):
        targets = [next((c for c in PROJ_TARGETS.get(t, []) if found(c)), t) for t in targets]
    missing = [t for t in targets if not found(t)]
    if missing:
        raise ConfigError(f"method.target_modules {missing} not found in {type(model).__name__}")
    return targets


def _lora(model: nn.Module, cfg: Any, init: bool | str) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    # A causal LM gets peft's CAUSAL_LM wrapper (generate() for the generations plug-in);
    # its tied LM head is never a head to save: it is the vocabulary embedding.
    lcfg = LoraConfig(r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=_targets(model, cfg), init_lora_weights=init,
                      task_type=TaskType.CAUSAL_LM if is_causal_lm(model) else None,
                      modules_to_save=[n for n, _ in model.named_children() if n in HEAD_NAMES] or None)
    peft_model = get_peft_model(model, lcfg)
    if not cfg.train_head:
        _freeze_saved_heads(peft_model)
    return peft_model


def _freeze_saved_heads(peft_model: nn.Module) -> None:
    for name, p in peft_model.named_parameters():
        if "modules_to_save" in name:
            p.requires_grad_(False)


@dataclass
class TrainsHead(MethodOptions):
    train_head: bool = option(True, help="the new classifier head trains and travels too")


@dataclass
class LoraOptions(TrainsHead):
    name: str = option("lora")
    r: int = option(8, check=positive)
    lora_alpha: float = option(16.0, check=positive)
    lora_dropout: float = option(0.0, check=in_range(0, 1, high_open=True))
    target_modules: list[str] = option(default_factory=lambda: ["query", "value"])


class LoRA(Method):
    """peft LoRA on `target_modules` (default query/value) + the head."""
    name = "lora"
    Options = LoraOptions

    @classmethod
    def apply(cls, model: nn.Module, opts: Any) -> nn.Module:
        return _lora(model, opts, True)


@dataclass
class FederaOptions(LoraOptions):
    name: str = option("federa")
    pissa_niter: int | None = option(None, check=positive, help="fast randomised SVD iterations")
    federa_init: str = option(
        "client_svd", choices=("client_svd", "server_residual"),
        help="client_svd: every client derives the frozen residual from the pre-trained weight it "
             "holds (its SVD FLOPs charged once, kind init); server_residual: the server ships it "
             "(one 4-byte value per target weight element per client, kind init)")


class FeDeRA(Method):
    """FeDeRA: LoRA initialised from the SVD of the pre-trained weights (peft's
    PiSSA), base weights replaced by the residual so round-0 outputs are unchanged.

    Every client already holds the pre-trained weight, so by default
    (`federa_init: client_svd`) each one computes the residual W - U_r S_r V_r^T
    itself, paying its SVD once (kind `init`, on its own device). Only that
    residual is used locally: it does not depend on the signs of the singular
    vectors (u_i s_i v_i^T is the same for -u_i, -v_i), which can differ between
    machines and libraries; A and B, which do, come from the server with the
    rest of the trainable state in the round-0 download (no extra bytes). The
    randomised variant (`pissa_niter`) draws its sketch from the seeded RNG, so
    every client computes the same one. `server_residual` ships the server's
    residual instead (the one-off sync, kind `init`, 4 bytes per element)."""
    name = "federa"
    Options = FederaOptions

    @classmethod
    def apply(cls, model: nn.Module, cfg: Any) -> nn.Module:
        init = "pissa" if cfg.pissa_niter is None else f"pissa_niter_{cfg.pissa_niter}"
        peft_model = _lora(model, cfg, init)
        params = dict(peft_model.named_parameters())
        residual = [n for n in params if n.endswith("base_layer.weight")]
        # one SVD per target weight; peft's randomised variant keeps rank r
        flops = sum(svd_flops(*params[n].shape, rank=cfg.r, niter=cfg.pissa_niter) for n in residual)
        if cfg.federa_init == "server_residual":
            return mark_synced(peft_model, residual, flops)
        # the server still derives A, B (and its own residual); each client its residual
        return mark_client_work(mark_synced(peft_model, [], flops), flops)


@dataclass
class PromptOptions(TrainsHead):
    name: str = option("prompt")
    num_virtual_tokens: int = option(20, check=positive)


class PromptTuning(Method):
    name = "prompt"
    Options = PromptOptions

    @classmethod
    def apply(cls, model: nn.Module, opts: Any) -> nn.Module:
        return prompt(model, opts)


def prompt(model: nn.Module, cfg: Any) -> nn.Module:
    """FedPrompt: `num_virtual_tokens` soft prompt embeddings at the input; the head
    travels too unless method.train_head=false. Encoders with a class token (BERT,
    ViT, CLIP) get them after it (models/prompting.py: the classifier reads the
    class token, not a prompt); other models peft's prompt tuning."""
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    if _patch_embeddings(model) is not None:
        return visual_prompt(model, cfg)
    if text_encoder(model) is not None:
        freeze(model)
        insert_text_prompt(model, cfg.num_virtual_tokens).tokens.requires_grad_(True)
        if cfg.train_head:
            train_head(model)
        return model
    # Prompts start as embeddings of random vocabulary tokens: peft's default
    # N(0, 1) init is ~20x the scale of BERT word embeddings and stalls training.
    # A causal LM's prompt is prepended to its input (and -100 to its labels) by CAUSAL_LM.
    task_type = TaskType.CAUSAL_LM if is_causal_lm(model) else TaskType.SEQ_CLS
    pcfg = PromptTuningConfig(task_type=task_type, num_virtual_tokens=cfg.num_virtual_tokens,
                              prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
    peft_model = get_peft_model(model, pcfg)
    if not cfg.train_head:
        _freeze_saved_heads(peft_model)
    return peft_model


class VisualPrompt(nn.Module):
    """Visual prompt tuning (VPT-shallow): learned tokens inserted after the class
    token of a ViT/CLIP embedding output; peft's prompt tuning needs token ids."""

    def __init__(self, n: int, hidden: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(n, hidden) * 0.02)

    def insert(self, module: nn.Module, inputs, out: torch.Tensor) -> torch.Tensor:
        prompts = self.tokens.to(out.dtype).expand(out.shape[0], -1, -1)
        return torch.cat([out[:, :1], prompts, out[:, 1:]], dim=1)


def _patch_embeddings(model: nn.Module) -> nn.Module | None:
    """The embedding block of a ViT (model.vit) or CLIP vision model, else None."""
    for body in ("vit", "vision_model"):
        if hasattr(model, body):
            return getattr(model, body).embeddings
    return None


def visual_prompt(model: nn.Module, cfg: Any) -> nn.Module:
    freeze(model)
    embeddings = _patch_embeddings(model)
    hidden = model.config.vision_config.hidden_size if hasattr(model.config, "vision_config") \
        else model.config.hidden_size
    model.visual_prompt = VisualPrompt(cfg.num_virtual_tokens, hidden)
    embeddings.register_forward_hook(model.visual_prompt.insert)
    mark_vision_prompt(model, cfg.num_virtual_tokens)  # no pooling reads the prompt rows (CLIP's mean did)
    if cfg.train_head:
        train_head(model)
    return model


class Bottleneck(nn.Module):
    """y = f(x) + up(gelu(down(f(x)))): a Houlsby adapter after a projection.
    `up` starts at zero, so the adapted model equals the backbone at round 0."""

    def __init__(self, base: nn.Linear, size: int) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.out_features, size)
        self.up = nn.Linear(size, base.out_features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self.up(nn.functional.gelu(self.down(y)))


def _adapter_sites(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of the attention-output and FFN-output projections."""
    sites = []
    for name, module in model.named_modules():
        if name.endswith(("attention.output", ".output")) and isinstance(getattr(module, "dense", None), nn.Linear):
            sites.append((module, "dense"))  # BERT / ViT
        elif name.endswith((".self_attn", ".attention")) and isinstance(getattr(module, "out_proj", None), nn.Linear):
            sites.append((module, "out_proj"))  # CLIP attention
        elif name.endswith(".attention") and isinstance(getattr(module, "o_proj", None), nn.Linear):
            sites.append((module, "o_proj"))  # ViT attention (transformers 5)
        elif name.endswith(".mlp") and isinstance(getattr(module, "fc2", None), nn.Linear):
            sites.append((module, "fc2"))  # ViT / CLIP FFN
    return sites


@dataclass
class AdapterOptions(TrainsHead):
    name: str = option("adapter")
    adapter_size: int = option(64, check=positive)


class Adapter(Method):
    name = "adapter"
    Options = AdapterOptions

    @classmethod
    def apply(cls, model: nn.Module, opts: Any) -> nn.Module:
        return adapter(model, opts)


def adapter(model: nn.Module, cfg: Any) -> nn.Module:
    """Bottleneck adapters (size `adapter_size`) after attention and FFN + the head."""
    sites = _adapter_sites(model)
    if not sites:
        raise ConfigError(f"no attention/FFN output projections found in {type(model).__name__} for adapters")
    freeze(model)
    for parent, attr in sites:
        setattr(parent, attr, Bottleneck(getattr(parent, attr), cfg.adapter_size))
    for parent, attr in sites:
        block = getattr(parent, attr)
        for p in list(block.down.parameters()) + list(block.up.parameters()):
            p.requires_grad_(True)
    if cfg.train_head:
        train_head(model)
    return model


@dataclass
class BitFitOptions(TrainsHead):
    name: str = option("bitfit")


class BitFit(Method):
    """BitFit: every bias term, plus the (new) head."""
    name = "bitfit"
    Options = BitFitOptions

    @classmethod
    def check(cls, cfg: Any) -> None:
        if cfg.task == "causal_lm" and cfg.model.name in LLAMA_NAMES:
            raise ConfigError(f"method bitfit trains bias terms; {cfg.model.name} is a Llama, which has none "
                              "(BitFit would train nothing): use lora, federa, prompt or full")

    @classmethod
    def apply(cls, model: nn.Module, cfg: Any) -> nn.Module:
        freeze(model)
        biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
        if not biases:
            raise ConfigError(f"method bitfit: {type(model).__name__} has no bias terms, BitFit would train nothing")
        for p in biases:
            p.requires_grad_(True)
        if cfg.train_head and not is_causal_lm(model):  # a causal LM's head is its tied vocabulary embedding
            train_head(model)
        return model


@dataclass
class HeadOptions(MethodOptions):
    name: str = option("head")


class Head(Method):
    """Linear probing: the classifier head only."""
    name = "head"
    Options = HeadOptions

    @classmethod
    def check(cls, cfg: Any) -> None:
        if cfg.task == "causal_lm":
            raise ConfigError("method head trains a small classifier head; a causal LM's head is its tied vocabulary "
                              "embedding (SmolLM2: 49152 x 576 = 28.3M parameters, a fifth of the model), not a "
                              "small head: use lora, federa or prompt")

    @classmethod
    def apply(cls, model: nn.Module, cfg: Any) -> nn.Module:
        freeze(model)
        train_head(model)
        return model
