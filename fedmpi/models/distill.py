"""Aligning the compressed sub-model with the full model, on the server, on public text.

Two layer-level losses (`mode`), both over real tokens and summed over the
compressed layers l, with h the output of block l:

- `cascade` (the paper's, as its official code computes it): teacher and
  student each run their *own* forward, so the student's block l sees what its
  own earlier (compressed) blocks produced; errors cascade, as in deployment.

      loss_l = ‖h_t − h_s‖² / ‖h_t‖²  +  α · ‖W_out·W_in (t) − W_out·W_in (s)‖² / ‖W_out·W_in (t)‖²

  Every non-attention weight of a compressed block trains: W_in, b_in, W_out,
  the FFN output bias and the output LayerNorm. AdamW with a linear warm-up
  (4.8% of the steps) and decay, gradients clipped at norm 1, as the official
  Trainer setup. (The official code takes the product term from `.data`, so it
  adds no gradient there; here it does, as the paper's loss says.)
- `teacher_input` (this emulator's first variant, kept as an option): each
  compressed block gets the *teacher's* FFN input and only its FFN (W_in, b_in,
  W_out) trains, with plain Adam; blocks are independent and one teacher
  forward serves them all, so it is cheaper, but it never sees cascaded error.

Neuron-level alignment is the same loss with the FFN gradients restricted to
chosen neurons (rows of W_in/b_in, columns of W_out); in `cascade` mode the FFN
output bias and LayerNorm train in full, as in the official code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from fedmpi.metering.flops import FlopMeter, shape_key
from fedmpi.models.submodel import (SubModelPlan, compressed_block_params, compressed_ffn_params, encoder_layers,
                                    ffn)

Batch = dict[str, torch.Tensor]
CASCADE, TEACHER_INPUT = "cascade", "teacher_input"
WARMUP = 0.048  # share of the steps spent warming the lr up (official distillation and alignment)
CLIP = 1.0  # gradient-norm clip (official Trainer setting)


@dataclass
class DistillStats:
    steps: int = 0
    loss_first: float = float("nan")  # loss of the first step (before any update)
    loss_last: float = float("nan")
    flops: int = 0


def _inputs(batch: Batch) -> Batch:
    return {k: v for k, v in batch.items() if k != "labels"}


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
        model(**_inputs(batch))
    finally:
        for h in hooks:
            h.remove()
    return {i: (v[0], v[1]) for i, v in seen.items()}


def block_outputs(model: nn.Module, layers: list[int], batch: Batch) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Forward `model` on `batch` (its own forward, start to end): each listed block's output, and the logits."""
    blocks = encoder_layers(model)
    seen: dict[int, torch.Tensor] = {}

    def keep(i: int):
        def fn(module, args, out):
            seen[i] = out[0] if isinstance(out, tuple) else out
        return fn

    hooks = [blocks[i].register_forward_hook(keep(i)) for i in layers]
    try:
        logits = model(**_inputs(batch)).logits
    finally:
        for h in hooks:
            h.remove()
    return seen, logits


def normalised_error(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return (target - pred).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)


def ffn_product(layer: nn.Module) -> torch.Tensor:
    """W_out · W_in (hidden × hidden): what the FFN does to first order."""
    w_in, w_out = ffn(layer)
    return w_out.weight @ w_in.weight


def _product_error(teacher_layer: nn.Module, student_layer: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        p_t = ffn_product(teacher_layer)
    return normalised_error(p_t, ffn_product(student_layer))


def cascade_losses(teacher: nn.Module, student: nn.Module, plan: SubModelPlan, batch: Batch,
                   alpha: float) -> torch.Tensor:
    """Per compressed layer: the block output error of the student's own forward + α · product error."""
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        t_out, _ = block_outputs(teacher, plan.compressed, batch)
    s_out, _ = block_outputs(student, plan.compressed, batch)
    t_blocks, s_blocks = encoder_layers(teacher), encoder_layers(student)
    losses = []
    for i in plan.compressed:
        loss = normalised_error(t_out[i][mask], s_out[i][mask])
        if alpha > 0:
            loss = loss + alpha * _product_error(t_blocks[i], s_blocks[i])
        losses.append(loss)
    return torch.stack(losses)


def teacher_input_losses(teacher: nn.Module, student: nn.Module, plan: SubModelPlan, batch: Batch,
                         alpha: float) -> torch.Tensor:
    """Per compressed layer, fed the teacher's FFN input: output error on real tokens + α · product error."""
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
            loss = loss + alpha * _product_error(t_blocks[i], s)
        losses.append(loss)
    return torch.stack(losses)


LOSSES = {CASCADE: cascade_losses, TEACHER_INPUT: teacher_input_losses}


def layer_losses(teacher: nn.Module, student: nn.Module, plan: SubModelPlan, batch: Batch, alpha: float,
                 mode: str = CASCADE) -> torch.Tensor:
    return LOSSES[mode](teacher, student, plan, batch, alpha)


def trained_params(student: nn.Module, plan: SubModelPlan, mode: str = CASCADE) -> list[nn.Parameter]:
    """What distillation and alignment change (and a checkpoint must keep)."""
    return compressed_block_params(student, plan) if mode == CASCADE else compressed_ffn_params(student, plan)


@torch.no_grad()
def evaluate_layers(teacher: nn.Module, student: nn.Module, plan: SubModelPlan, batches: Iterable[Batch],
                    alpha: float = 0.0, mode: str = CASCADE) -> float:
    """Mean over batches of the mean per-layer loss (alpha=0: output error alone)."""
    vals = [float(layer_losses(teacher, student, plan, b, alpha, mode).mean()) for b in batches]
    return float(np.mean(vals)) if vals else float("nan")


@torch.no_grad()
def closeness(teacher: nn.Module, student: nn.Module, plan: SubModelPlan, batches: Iterable[Batch],
              device: torch.device) -> dict[str, object]:
    """How far the student is from the teacher on `batches`, both running their own forward
    (what a client's proxy really computes): per compressed layer the block output's
    normalised MSE ‖h_t − h_s‖²/‖h_t‖² over real tokens, and the mean KL(teacher ‖ student)
    of the logits' softmax per sample."""
    was = teacher.training, student.training
    teacher.eval()
    student.eval()
    err = {i: [0.0, 0.0] for i in plan.compressed}
    kl, n = 0.0, 0
    try:
        for b in batches:
            b = {k: v.to(device) for k, v in b.items()}
            mask = b["attention_mask"].bool()
            t_out, t_logits = block_outputs(teacher, plan.compressed, b)
            s_out, s_logits = block_outputs(student, plan.compressed, b)
            for i in plan.compressed:
                t, s = t_out[i][mask].double(), s_out[i][mask].double()
                err[i][0] += float((t - s).pow(2).sum())
                err[i][1] += float(t.pow(2).sum())
            lt, ls = t_logits.double().log_softmax(-1), s_logits.double().log_softmax(-1)
            kl += float((lt.exp() * (lt - ls)).sum())
            n += int(t_logits.shape[0])
    finally:
        teacher.train(was[0])
        student.train(was[1])
    per_layer = [e / max(d, 1e-300) for e, d in err.values()]
    return {"layer_mse": per_layer, "layer_mse_mean": float(np.mean(per_layer)) if per_layer else float("nan"),
            "kl": kl / max(1, n)}


def neuron_masks(plan: SubModelPlan, selected: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Boolean masks over each compressed layer's kept neurons (sub-model positions)."""
    out = {}
    for i in plan.compressed:
        m = torch.zeros(len(plan.kept[i]), dtype=torch.bool)
        m[selected.get(i, torch.empty(0, dtype=torch.long)).cpu()] = True
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


def _linear_warmup(steps: int):
    """lr factor at step s: linear from 0 to 1 over the warm-up, then linearly down to 0."""
    warm = max(1, round(WARMUP * steps))
    return lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm))


def distill(teacher: nn.Module, student: nn.Module, plan: SubModelPlan, batches: Iterator[Batch], steps: int,
            alpha: float, lr: float, meter: FlopMeter, device: torch.device,
            masks: dict[int, torch.Tensor] | None = None, mode: str = CASCADE,
            weight_decay: float = 0.0) -> DistillStats:
    """`steps` optimiser steps on the compressed blocks of `student` (only `masks`' neurons of
    the FFNs if given). Teacher and student run in eval mode (no dropout: a deterministic
    regression, so a resumed run redoes it bit for bit; the official code leaves the student's
    FFN dropout on). `weight_decay` applies in cascade mode (official: 0.01 before FL, 0 when aligning)."""
    stats = DistillStats()
    if steps <= 0 or not plan.compressed:
        return stats
    params = trained_params(student, plan, mode)
    flags = {p: p.requires_grad for p in student.parameters()}
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    if mode == CASCADE:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _linear_warmup(steps))
    else:
        opt, sched = torch.optim.Adam(params, lr=lr), None
    t_mode, s_mode = teacher.training, student.training
    teacher.eval()
    student.eval()
    n = len(plan.compressed)
    try:
        for _ in range(steps):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            opt.zero_grad(set_to_none=True)

            def step() -> torch.Tensor:
                loss = layer_losses(teacher, student, plan, batch, alpha, mode).sum()
                loss.backward()
                return loss

            loss, flops = meter.run(("distill", mode, id(student), alpha > 0, shape_key(batch)), step)
            if masks is not None:
                _mask_grads(student, plan, masks)
            if sched is not None:
                torch.nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
            if sched is not None:
                sched.step()
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


def least_active(inactive_share: torch.Tensor, plan: SubModelPlan, counts: dict[int, int]) -> dict[int, torch.Tensor]:
    """Per compressed layer i, the counts[i] neurons most often inactive (flat stats in plan
    order), as sub-model positions in increasing order, on the stats' device. Ties go to the
    lower position (a stable sort), so the choice does not depend on the device's top-k."""
    out, offset = {}, 0
    for i in plan.compressed:
        n = len(plan.kept[i])
        share = inactive_share[offset:offset + n].float()
        k = min(counts[i], n)
        order = torch.sort(share, descending=True, stable=True).indices
        out[i] = torch.sort(order[:k]).values
        offset += n
    return out
