"""Aligning the compressed sub-model with the full model, on the server, on public text.

Layer-level: each compressed block gets the *teacher's* input (the attention
output of the full model, which the sub-model's identical attention would
produce) and learns to reproduce the teacher's block output:

    loss_l = ‖h_t − h_s‖² / ‖h_t‖²  +  α · ‖W_out·W_in (t) − W_out·W_in (s)‖² / ‖W_out·W_in (t)‖²

Only the compressed FFNs train (W_in, its bias, W_out), so blocks are
independent and one teacher forward serves every layer. Neuron-level
alignment is the same loss with gradients restricted to chosen neurons.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from fedmpi.metering.flops import FlopMeter, shape_key
from fedmpi.models.submodel import SubModelPlan, compressed_ffn_params, encoder_layers, ffn

Batch = dict[str, torch.Tensor]


@dataclass
class DistillStats:
    steps: int = 0
    loss_first: float = float("nan")  # loss of the first step (before any update)
    loss_last: float = float("nan")
    flops: int = 0


def capture(model: nn.Module, layers: list[int], batch: Batch) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Forward `model` on `batch`; per layer (FFN input = attention output, block output)."""
    blocks = encoder_layers(model)
    seen: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    hooks = []
    for i in layers:
        hooks.append(blocks[i].intermediate.register_forward_pre_hook(
            lambda m, args, i=i: seen[i].append(args[0])))
        hooks.append(blocks[i].output.register_forward_hook(
            lambda m, args, out, i=i: seen[i].append(out)))
    try:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return {i: (v[0], v[1]) for i, v in seen.items()}


def normalised_error(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return (target - pred).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)


def ffn_product(layer: nn.Module) -> torch.Tensor:
    """W_out · W_in (hidden × hidden): what the FFN does to first order."""
    w_in, w_out = ffn(layer)
    return w_out.weight @ w_in.weight


def layer_losses(teacher: nn.Module, student: nn.Module, plan: SubModelPlan, batch: Batch,
                 alpha: float) -> torch.Tensor:
    """Per compressed layer: output error on real tokens + α · weight-product error."""
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        seen = capture(teacher, plan.compressed, batch)
    t_blocks, s_blocks = encoder_layers(teacher), encoder_layers(student)
    losses = []
    for i in plan.compressed:
        a_t, h_t = seen[i]
        s = s_blocks[i]
        h_s = s.output(s.intermediate(a_t), a_t)
        loss = normalised_error(h_t[mask], h_s[mask])
        if alpha > 0:
            with torch.no_grad():
                p_t = ffn_product(t_blocks[i])
            loss = loss + alpha * normalised_error(p_t, ffn_product(s))
        losses.append(loss)
    return torch.stack(losses)


@torch.no_grad()
def evaluate_layers(teacher: nn.Module, student: nn.Module, plan: SubModelPlan, batches: Iterable[Batch],
                    alpha: float = 0.0) -> float:
    """Mean over batches of the mean per-layer loss (alpha=0: output error alone)."""
    vals = [float(layer_losses(teacher, student, plan, b, alpha).mean()) for b in batches]
    return float(np.mean(vals)) if vals else float("nan")


def neuron_masks(plan: SubModelPlan, selected: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Boolean masks over each compressed layer's kept neurons (sub-model positions)."""
    out = {}
    for i in plan.compressed:
        m = torch.zeros(len(plan.kept[i]), dtype=torch.bool)
        m[selected.get(i, torch.empty(0, dtype=torch.long))] = True
        out[i] = m
    return out


def _mask_grads(student: nn.Module, plan: SubModelPlan, masks: dict[int, torch.Tensor]) -> None:
    """Zero the gradients of neurons that must not move (rows of W_in/b_in, columns of W_out)."""
    blocks = encoder_layers(student)
    for i, m in masks.items():
        w_in, w_out = ffn(blocks[i])
        m = m.to(w_in.weight.device)
        if w_in.weight.grad is not None:
            w_in.weight.grad[~m] = 0
        if w_in.bias is not None and w_in.bias.grad is not None:
            w_in.bias.grad[~m] = 0
        if w_out.weight.grad is not None:
            w_out.weight.grad[:, ~m] = 0


def distill(teacher: nn.Module, student: nn.Module, plan: SubModelPlan, batches: Iterator[Batch], steps: int,
            alpha: float, lr: float, meter: FlopMeter, device: torch.device,
            masks: dict[int, torch.Tensor] | None = None) -> DistillStats:
    """`steps` Adam steps on the compressed FFNs of `student` (only `masks`' neurons if given).

    Teacher and student run in eval mode (no dropout): this is regression, not training."""
    stats = DistillStats()
    if steps <= 0 or not plan.compressed:
        return stats
    params = compressed_ffn_params(student, plan)
    flags = {p: p.requires_grad for p in student.parameters()}
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    t_mode, s_mode = teacher.training, student.training
    teacher.eval()
    student.eval()
    try:
        for _ in range(steps):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            opt.zero_grad(set_to_none=True)

            def step() -> torch.Tensor:
                loss = layer_losses(teacher, student, plan, batch, alpha).sum()
                loss.backward()
                return loss

            loss, flops = meter.run(("distill", id(student), alpha > 0, shape_key(batch)), step)
            if masks is not None:
                _mask_grads(student, plan, masks)
            opt.step()
            n = len(plan.compressed)
            if stats.steps == 0:
                stats.loss_first = float(loss.detach()) / n
            stats.loss_last = float(loss.detach()) / n
            stats.steps += 1
            stats.flops += flops
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
        teacher.train(t_mode)
        student.train(s_mode)
    return stats


def least_active(share_near_zero: torch.Tensor, plan: SubModelPlan, counts: dict[int, int]) -> dict[int, torch.Tensor]:
    """Per compressed layer i, the counts[i] neurons most often near zero (flat stats in plan order),
    as sub-model positions in increasing order."""
    out, offset = {}, 0
    for i in plan.compressed:
        n = len(plan.kept[i])
        share = share_near_zero[offset:offset + n]
        k = min(counts[i], n)
        out[i] = torch.sort(torch.topk(share.float().cpu(), k).indices).values
        offset += n
    return out
