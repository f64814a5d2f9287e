"""FedPFT's proxy: a copy of the backbone whose middle FFNs keep only their top-k neurons.

Only FFN neurons are dropped, so attention, LayerNorms, embeddings, the FFN
output bias and the classifier keep the full model's names and shapes: an
attention LoRA (plus classifier) trained on the sub-model loads straight back
into the full model. Neurons are ranked by the L2 norm of their input weights
(a row of `intermediate.dense`) concatenated with their output weights (a
column of `output.dense`), and the kept ones stay in their original order.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from fedmpi.errors import ConfigError
from fedmpi.metering.flops import FlopMeter, shape_key


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a BERT-like classifier (bare or peft-wrapped)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix, base)
    layers = getattr(getattr(body, "encoder", None), "layer", None)
    if layers is None:
        raise ConfigError(f"FedPFT needs a BERT-like encoder (…encoder.layer[i].intermediate/output); "
                          f"got {type(base).__name__}")
    return layers


def ffn(layer: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """(W_in: hidden -> intermediate, W_out: intermediate -> hidden) of one block."""
    return layer.intermediate.dense, layer.output.dense


def neuron_scores(layer: nn.Module) -> torch.Tensor:
    """Per neuron j: ‖[W_in[j, :], W_out[:, j]]‖₂."""
    w_in, w_out = ffn(layer)
    return torch.sqrt(w_in.weight.detach().pow(2).sum(1) + w_out.weight.detach().pow(2).sum(0))


def top_neurons(layer: nn.Module, k: int) -> torch.Tensor:
    """Indices of the k highest-scoring neurons, in their original order."""
    scores = neuron_scores(layer)
    return torch.sort(torch.topk(scores, k).indices).values


@torch.no_grad()
def shrink_ffn(layer: nn.Module, keep: torch.Tensor) -> None:
    """Replace the block's FFN linears by their rows/columns `keep` (output bias unchanged)."""
    w_in, w_out = ffn(layer)
    new_in = nn.Linear(w_in.in_features, len(keep), bias=w_in.bias is not None,
                       device=w_in.weight.device, dtype=w_in.weight.dtype)
    new_in.weight.copy_(w_in.weight[keep])
    if w_in.bias is not None:
        new_in.bias.copy_(w_in.bias[keep])
    new_out = nn.Linear(len(keep), w_out.out_features, bias=w_out.bias is not None,
                        device=w_out.weight.device, dtype=w_out.weight.dtype)
    new_out.weight.copy_(w_out.weight[:, keep])
    if w_out.bias is not None:
        new_out.bias.copy_(w_out.bias)
    layer.intermediate.dense = new_in
    layer.output.dense = new_out


@dataclass
class SubModelPlan:
    """Which layers stay whole and which neurons every other layer keeps."""
    num_layers: int
    intermediate_size: int
    whole: list[int]
    kept: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> kept neuron indices

    @property
    def compressed(self) -> list[int]:
        return sorted(self.kept)

    def numel_ffn_dropped(self, hidden: int) -> int:
        """Parameters removed: per dropped neuron one W_in row (+bias) and one W_out column."""
        return sum((self.intermediate_size - len(k)) * (2 * hidden + 1) for k in self.kept.values())


def resolve_layers(keep_layers: list[int] | None, num_layers: int) -> list[int]:
    """Layer indices kept whole (negative counts from the end); default none (the
    paper and its official code compress every layer)."""
    if not keep_layers:
        return []
    out = set()
    for i in keep_layers:
        if not isinstance(i, int) or not -num_layers <= i < num_layers:
            raise ConfigError(f"options.keep_layers: {i!r} is not a layer index of a {num_layers}-layer model")
        out.add(i % num_layers)
    return sorted(out)


def plan_submodel(model: nn.Module, keep_layers: list[int] | None, keep_ratio: float) -> SubModelPlan:
    if not 0 < keep_ratio <= 1:
        raise ConfigError(f"options.ffn_keep_ratio must be in (0, 1], got {keep_ratio}")
    layers = encoder_layers(model)
    whole = resolve_layers(keep_layers, len(layers))
    size = ffn(layers[0])[0].out_features
    plan = SubModelPlan(len(layers), size, whole)
    k = max(1, round(size * keep_ratio))
    for i, layer in enumerate(layers):
        if i not in whole:
            plan.kept[i] = top_neurons(layer, k)
    return plan


def build_submodel(model: nn.Module, plan: SubModelPlan) -> nn.Module:
    """A deep copy of `model` with the plan's FFNs shrunk; `model` is untouched."""
    sub = copy.deepcopy(model)
    layers = encoder_layers(sub)
    for i, keep in plan.kept.items():
        shrink_ffn(layers[i], keep.to(ffn(layers[i])[0].weight.device))
    return sub


def compressed_ffn_params(model: nn.Module, plan: SubModelPlan) -> list[nn.Parameter]:
    """W_in weight+bias and W_out weight of each compressed layer (what distillation trains
    and what an alignment update carries); the output bias stays as in the full model."""
    layers = encoder_layers(model)
    out: list[nn.Parameter] = []
    for i in plan.compressed:
        w_in, w_out = ffn(layers[i])
        out += [w_in.weight] + ([w_in.bias] if w_in.bias is not None else []) + [w_out.weight]
    return out


def output_norm_params(layer: nn.Module) -> list[nn.Parameter]:
    """The FFN output bias and the block's output LayerNorm: what cascade distillation
    also trains (they absorb the compressed FFN's error in the block's output)."""
    norm = layer.output.LayerNorm
    return [t for t in (ffn(layer)[1].bias, norm.weight, norm.bias) if t is not None]


def compressed_block_params(model: nn.Module, plan: SubModelPlan) -> list[nn.Parameter]:
    """Per compressed layer: W_in weight+bias, W_out weight, then the FFN output bias and
    output LayerNorm (the official code trains every non-attention weight of a compressed layer)."""
    layers = encoder_layers(model)
    out: list[nn.Parameter] = []
    for i in plan.compressed:
        w_in, w_out = ffn(layers[i])
        out += [w_in.weight] + ([w_in.bias] if w_in.bias is not None else []) + [w_out.weight]
        out += output_norm_params(layers[i])
    return out


@torch.no_grad()
def sample_flops(model: nn.Module, batch: dict[str, torch.Tensor], meter: FlopMeter | None = None) -> float:
    """Forward FLOPs per sample of `model` on `batch` (FlopMeter, eval mode)."""
    meter = meter or FlopMeter()
    was = model.training
    model.eval()
    _, flops = meter.run(("fwd", id(model), shape_key(batch)), lambda: model(**batch))
    model.train(was)
    return flops / int(batch["input_ids"].shape[0])


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def training_memory_bytes(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """What a client holds to train `model` on `batch` with Adam: every weight, plus a
    gradient and two moments per trainable value, plus the activations autograd saves
    for backward (measured with saved-tensor hooks, distinct storages counted once).

    The emulator's own RSS cannot show this: every rank also builds the full model."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    was = model.training
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**batch)
    out.loss.backward()
    model.zero_grad(set_to_none=True)
    model.train(was)
    activations = sum(seen.values())
    return {"weights": weights, "optimizer": 3 * trainable, "activations": activations,
            "total": weights + 3 * trainable + activations}
