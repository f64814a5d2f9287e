"""FedPFT: clients fine-tune a compressed proxy; the LoRA they learn plugs into the full model.

The server keeps the full model. Every rank builds the same sub-model (FFNs of
every layer but `keep_layers` cut to their top-k neurons); the server distils
it on a general public corpus (the student runs its own forward and matches
each compressed layer's output) and sends it once to every client (kind
`init`). Rounds are FedAvg (this class *is* a FedAvg whose training model is
the sub-model) over attention LoRA + classifier, whose names and shapes match
the full model's, so the global model evaluated is the full model carrying the
aggregated LoRA. Every `align_every` rounds the sampled clients upload each
kept neuron's inactivity (APoZ, kind `stats`), the server re-distils the least
active half against the full model with the current LoRA, and sends the
changed neurons (and each compressed block's output bias and LayerNorm) to
every client (kind `submodel`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from fedmpi.algorithms.fedavg import FedAvg
from fedmpi.algorithms.fedpft_corpus import PackedWindows, pack, public_texts
from fedmpi.algorithms.fedpft_options import FedPFTOptions
from fedmpi.engine.training import LocalStats
from fedmpi.errors import ConfigError
from fedmpi.models.distill import (CASCADE, DistillStats, closeness, distill, evaluate_layers, least_active,
                                   neuron_masks, trained_params)
from fedmpi.models.methods import trainable
from fedmpi.models.submodel import (SubModelPlan, build_submodel, encoder_layers, ffn, output_norm_params,
                                    param_count, plan_submodel, sample_flops, training_memory_bytes)
from fedmpi.net.flat import flatten, unflatten_into
from fedmpi.seeding import derive_seed

INIT_KIND, STATS_KIND, SUBMODEL_KIND = "init", "stats", "submodel"
CLOSENESS_SAMPLES = 128  # task test texts on which the report measures the proxy's distance to the full model
ALIGN_WEIGHT_DECAY, DISTILL_WEIGHT_DECAY = 0.0, 0.01  # official: Trainer default 0 when aligning, 0.01 before FL


def add_lora(model: nn.Module, cfg, targets: list[str], seed: int) -> nn.Module:
    """peft LoRA on `targets`, classifier trained in full (modules_to_save); seeded so
    the full model and the sub-model get the very same initial adapters."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(derive_seed(seed, 0x10BA))
    conf = LoraConfig(r=cfg.method.r, lora_alpha=cfg.method.lora_alpha, lora_dropout=cfg.method.lora_dropout,
                      target_modules=list(targets), modules_to_save=["classifier"])
    return get_peft_model(model, conf)


def public_windows(opts: FedPFTOptions, cfg) -> PackedWindows:
    """The public corpus, packed into `public_samples` windows of model.max_length tokens."""
    from fedmpi.models.backbone import load_tokenizer

    texts = public_texts(opts.public_data, opts.public_samples * cfg.model.max_length, cfg.data, cfg.seed)
    return pack(texts, load_tokenizer(cfg.model), cfg.model.max_length, opts.public_samples)


def cycle_batches(enc, batch_size: int, seed: int, stream: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches; `stream` picks an independent order (0: set-up
    distillation, r + 1: alignment at round r), so no iterator state has to be
    checkpointed for a resumed run to see the same batches."""
    rng = np.random.default_rng([seed, 0xC7C1, stream])
    while True:
        order = rng.permutation(len(enc))
        for s in range(0, len(order) - batch_size + 1, batch_size):
            yield enc.batch(order[s:s + batch_size])


class ActivityMeter:
    """Per kept neuron of each compressed FFN: the share of real tokens on which it is inactive.

    `apoz` (default): activation <= 0, the Average Percentage of Zeros of a ReLU
    network, which for GELU is its negative half (GELU(x) <= 0 iff x <= 0); the
    official code tests `== 0`, which a GELU output almost never is, so its
    choice falls to a random tie-break. `near_zero`: |activation| < eps."""

    def __init__(self, model: nn.Module, plan: SubModelPlan, activity: str = "apoz", eps: float = 0.05) -> None:
        self.plan, self.activity, self.eps = plan, activity, eps
        self.mask: torch.Tensor | None = None
        self.inactive: dict[int, torch.Tensor] = {}
        self.tokens = 0
        blocks = encoder_layers(model)
        self.hooks = [blocks[i].intermediate.register_forward_hook(self._hook(i)) for i in plan.compressed]

    def _off(self, out: torch.Tensor) -> torch.Tensor:
        return out <= 0 if self.activity == "apoz" else out.abs() < self.eps

    def _hook(self, i: int):
        def fn(module, args, out):
            m = self.mask.to(out.device).bool()
            count = self._off(out.detach())[m].sum(0).double()
            self.inactive[i] = count if i not in self.inactive else self.inactive[i] + count
        return fn

    def batches(self, batches):
        for b in batches:
            self.mask = b["attention_mask"]
            self.tokens += int(b["attention_mask"].sum())
            yield b

    def close(self, device: torch.device) -> torch.Tensor:
        """Flat shares (float32, compressed layers in order) on `device`: the `stats` message."""
        for h in self.hooks:
            h.remove()
        parts = [self.inactive[i].to(device) if i in self.inactive else
                 torch.zeros(len(self.plan.kept[i]), dtype=torch.float64, device=device) for i in self.plan.compressed]
        return (torch.cat(parts) / max(1, self.tokens)).float()


class FedPFT(FedAvg):
    name = "fedpft"
    Options = FedPFTOptions
    builds_own_method = True  # it adds the method's LoRA to the full model and to its proxy

    @classmethod
    def check(cls, cfg) -> None:
        opts = cfg.options
        if cfg.method.name != "lora":
            raise ConfigError(f"algorithm fedpft trains LoRA (on options.lora_targets, with method.r, "
                              f"method.lora_alpha, method.lora_dropout): set method.name to lora, "
                              f"not '{cfg.method.name}'")
        if opts.distills or opts.aligns:
            root = Path(cfg.data.path or "../shared/data")
            if opts.public_data != "embedded" and not Path(opts.public_data).is_dir() and not (
                    root / opts.public_data).is_dir():
                raise ConfigError(f"options.public_data '{opts.public_data}' not found (neither a folder "
                                  f"nor a dataset under {root}); use e.g. 20newsgroups, ag_news or embedded")

    # -- setup: sub-model, distillation, one download, LoRA ------------------
    def setup(self) -> None:
        ctx, cfg, o = self.ctx, self.ctx.cfg, self.opts
        self.info: dict[str, object] = {}
        full = ctx.model
        keep = list(range(len(encoder_layers(full)))) if o.mode == "full" else o.keep_layers
        self.plan = plan_submodel(full, keep, o.ffn_keep_ratio)
        sub = build_submodel(full, self.plan)
        for p in list(full.parameters()) + list(sub.parameters()):
            p.requires_grad_(False)
        probe = next(ctx.data.test_batches(cfg.train.eval_batch_size))
        probe = {k: v[: min(16, len(v))].to(ctx.device) for k, v in probe.items()}
        self.info.update(full_params=param_count(full), sub_params=param_count(sub),
                         full_flops_per_sample=sample_flops(full, probe),
                         sub_flops_per_sample=sample_flops(sub, probe),
                         compressed_layers=self.plan.compressed, kept_whole=self.plan.whole,
                         ffn_neurons_kept={i: len(k) for i, k in self.plan.kept.items()},
                         mode=o.mode, distill_mode=o.distill_mode)
        if ctx.rt.is_server and (o.distills or o.aligns):
            self.public_enc = public_windows(o, cfg)
            self.public = cycle_batches(self.public_enc, o.distill_batch_size, cfg.seed)
            # on the device the models are: evaluate_layers runs them on these batches as given
            self.public_heldout = [{k: v.to(ctx.device) for k, v in next(self.public).items()} for _ in range(2)]
            self.info.update(public_data=o.public_data, public_windows=len(self.public_enc),
                             public_window_tokens=cfg.model.max_length)
        if ctx.rt.is_server and o.distills:
            self._distill(full, sub)
        # The sub-model (frozen weights, all of it: a client has nothing else) goes down once.
        base = list(sub.parameters())
        flat = flatten(base) if ctx.rt.is_server else torch.empty(sum(p.numel() for p in base),
                                                                  dtype=base[0].dtype, device=ctx.device)
        everyone = list(range(cfg.federation.num_clients))
        unflatten_into(ctx.link.broadcast(flat, kind=INIT_KIND, clients=everyone if ctx.fresh_start else []), base)
        del flat
        self.info["init_bytes_per_client"] = sum(p.numel() * p.element_size() for p in base)
        # Same LoRA + classifier on both; their names and shapes must match.
        self.full = add_lora(full, cfg, o.lora_targets, cfg.seed)
        self.sub = add_lora(sub, cfg, o.lora_targets, cfg.seed)
        self.full_params = [p for _, p in trainable(self.full)]
        names_full = [(n, tuple(p.shape)) for n, p in trainable(self.full)]
        names_sub = [(n, tuple(p.shape)) for n, p in trainable(self.sub)]
        if names_full != names_sub:
            raise RuntimeError("fedpft: sub-model LoRA does not match the full model's")
        with torch.no_grad():
            for (_, ps), pf in zip(trainable(self.sub), self.full_params):
                ps.copy_(pf)
        self.model = self.sub  # clients train the proxy; the server evaluates the full model
        self.params = [p for _, p in trainable(self.sub)]
        self._first_round, self._resumed = True, False
        if ctx.rt.is_server:
            batch = next(ctx.data.client_batches(0, 0, 1, cfg.train.batch_size))
            batch = {k: v.to(ctx.device) for k, v in batch.items()}
            self.info["client_memory"] = training_memory_bytes(self.sub, batch)
            self.info["full_model_client_memory"] = training_memory_bytes(self.full, batch)

    def _closeness(self, full: nn.Module, sub: nn.Module) -> dict[str, object]:
        """The proxy's distance to the full model on the task's test text (the emulator's
        diagnostic: a deployed server has no test data, so it is not charged)."""
        ctx = self.ctx
        bs = min(32, ctx.cfg.train.eval_batch_size)
        batches = [b for b, _ in zip(ctx.data.test_batches(bs), range(-(-CLOSENESS_SAMPLES // bs)))]
        return closeness(full, sub, self.plan, batches, ctx.device)

    def _distill(self, full: nn.Module, sub: nn.Module) -> None:
        ctx, o = self.ctx, self.opts
        before_test = self._closeness(full, sub)
        before = evaluate_layers(full, sub, self.plan, self.public_heldout, mode=o.distill_mode)
        st = distill(full, sub, self.plan, self.public, o.distill_steps, o.distill_alpha, o.distill_lr,
                     ctx.meter, ctx.device, mode=o.distill_mode, weight_decay=DISTILL_WEIGHT_DECAY)
        after = evaluate_layers(full, sub, self.plan, self.public_heldout, mode=o.distill_mode)
        after_test = self._closeness(full, sub)
        self._server_work("distill", st, charge=ctx.fresh_start)  # redone on resume, not re-charged
        self.info.update(distill_layer_loss_before=before, distill_layer_loss_after=after,
                         distill_test_layer_mse_before=before_test["layer_mse"],
                         distill_test_layer_mse_after=after_test["layer_mse"],
                         distill_test_layer_mse_mean_before=before_test["layer_mse_mean"],
                         distill_test_layer_mse_mean_after=after_test["layer_mse_mean"],
                         distill_test_kl_before=before_test["kl"], distill_test_kl_after=after_test["kl"])

    def _server_work(self, kind: str, st: DistillStats, charge: bool = True) -> None:
        if charge:
            self.ctx.link.charge_server(kind, st.flops)
        self.info.setdefault(f"{kind}_steps", 0)
        self.info[f"{kind}_steps"] += st.steps

    # -- the round ------------------------------------------------------------
    def aligns_now(self, rnd: int) -> bool:
        return self.opts.aligns and bool(self.plan.compressed) and (rnd + 1) % self.opts.align_every == 0

    def before_round(self, rnd: int, sampled: list[int]) -> None:
        self.activity: dict[int, torch.Tensor] = {}
        if self._first_round:  # after a resume, clients need the checkpoint's aligned FFNs
            self._first_round = False
            if self.ctx.link.share(self._resumed):
                self._resync_ffns()

    def train_client(self, client: int, rnd: int) -> LocalStats:
        if not self.aligns_now(rnd):
            return super().train_client(client, rnd)
        ctx = self.ctx
        meter = ActivityMeter(self.sub, self.plan, self.opts.align_activity, self.opts.align_eps)
        try:
            # its own FLOP-cache key per aligning round: the activity hooks' ops are counted in
            # aligning rounds only, and their count depends on the round's FFNs, so a resumed
            # process meters each aligning round as the uninterrupted one did
            return ctx.train(self.model, meter.batches(ctx.client_batches(client, rnd)), ctx.optimizer(self.params),
                             tag=f"train_activity_{rnd}")
        finally:
            self.activity[client] = meter.close(ctx.device)

    def after_round(self, rnd: int, sampled: list[int]) -> None:
        if self.ctx.rt.is_server:  # the global LoRA + classifier also live on the full model
            unflatten_into(flatten(self.params), self.full_params)
        if self.aligns_now(rnd):
            self.align(rnd, sampled)

    def align(self, rnd: int, sampled: list[int]) -> None:
        """Stats up (per client), re-distil the least active neurons, changed neurons down (all clients)."""
        ctx, o = self.ctx, self.opts
        link = ctx.link
        live = ctx.live(rnd, sampled)
        counts = {i: o.align_count(len(self.plan.kept[i])) for i in self.plan.compressed}
        n_idx = sum(counts.values())
        if ctx.rt.is_server:
            share, weight = None, 0.0
            for c in live:
                s = link.from_client(client=c, kind=STATS_KIND).double()
                w = ctx.data.client_size(c)
                share = s * w if share is None else share + s * w
                weight += w
            if share is not None:
                share /= weight
                chosen = least_active(share, self.plan, counts)
                batches = cycle_batches(self.public_enc, o.distill_batch_size, ctx.cfg.seed, stream=rnd + 1)
                st = distill(self.full, self.sub, self.plan, batches, o.align_steps, 0.0, o.distill_lr,
                             ctx.meter, ctx.device, masks=neuron_masks(self.plan, chosen), mode=o.distill_mode,
                             weight_decay=ALIGN_WEIGHT_DECAY)
                self._server_work("align", st)
                self.info.setdefault("align_rounds", []).append(rnd)
                index = torch.cat([chosen[i] for i in self.plan.compressed]).long().to(ctx.device)
            else:
                index = torch.full((n_idx,), -1, dtype=torch.long, device=ctx.device)
        else:
            for c in ctx.rt.clients_here(live):
                link.to_server(self.activity.pop(c), client=c, kind=STATS_KIND)
            index = torch.empty(n_idx, dtype=torch.long, device=ctx.device)
        everyone = list(range(ctx.cfg.federation.num_clients))
        index = link.broadcast(index, kind=SUBMODEL_KIND, clients=everyone)
        if int(index[0]) < 0:
            return  # nobody arrived: nothing was aligned
        chosen = self._split(index, counts)
        values = self._neurons(chosen) if ctx.rt.is_server else torch.empty(
            self._neuron_numel(counts), dtype=self.params[0].dtype, device=ctx.device)
        values = link.broadcast(values, kind=SUBMODEL_KIND, clients=everyone)
        if not ctx.rt.is_server:
            self._load_neurons(values, chosen)

    # -- packing the changed neurons ------------------------------------------
    def _split(self, index: torch.Tensor, counts: dict[int, int]) -> dict[int, torch.Tensor]:
        out, off = {}, 0
        for i in self.plan.compressed:
            out[i] = index[off:off + counts[i]]
            off += counts[i]
        return out

    def _pieces(self, chosen: dict[int, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor | None, int]]:
        """(parameter, neuron indices or None for the whole tensor, neuron axis) of every
        changed slice: the chosen neurons' W_in rows, b_in entries and W_out columns, and in
        cascade mode each compressed block's FFN output bias and output LayerNorm, which
        alignment trains in full."""
        blocks = encoder_layers(self.sub)
        out = []
        for i in self.plan.compressed:
            w_in, w_out = ffn(blocks[i])
            out += [(w_in.weight, chosen[i], 0)] + ([(w_in.bias, chosen[i], 0)] if w_in.bias is not None else [])
            out.append((w_out.weight, chosen[i], 1))
            if self.opts.distill_mode == CASCADE:
                out += [(t, None, 0) for t in output_norm_params(blocks[i])]
        return out

    def _neuron_numel(self, counts: dict[int, int]) -> int:
        blocks = encoder_layers(self.sub)
        n = 0
        for i in self.plan.compressed:
            w_in, w_out = ffn(blocks[i])
            n += counts[i] * (w_in.in_features + (w_in.bias is not None) + w_out.out_features)
            if self.opts.distill_mode == CASCADE:
                n += sum(t.numel() for t in output_norm_params(blocks[i]))
        return n

    def _neurons(self, chosen: dict[int, torch.Tensor]) -> torch.Tensor:
        return torch.cat([(p.detach() if idx is None else p.detach().index_select(ax, idx.to(p.device))).reshape(-1)
                          for p, idx, ax in self._pieces(chosen)])

    @torch.no_grad()
    def _load_neurons(self, values: torch.Tensor, chosen: dict[int, torch.Tensor]) -> None:
        off = 0
        for p, idx, ax in self._pieces(chosen):
            if idx is None:
                p.copy_(values[off:off + p.numel()].view(p.shape))
                off += p.numel()
                continue
            shape = list(p.shape)
            shape[ax] = len(idx)
            n = int(np.prod(shape))
            p.index_copy_(ax, idx.to(p.device), values[off:off + n].view(shape).to(p.device))
            off += n

    # -- evaluation, checkpoint, report -----------------------------------------
    def eval_model(self) -> nn.Module:
        return self.full

    def _ffns(self) -> list[torch.Tensor]:
        """The compressed blocks' weights that distillation and alignment change."""
        return list(trained_params(self.sub, self.plan, self.opts.distill_mode))

    def _resync_ffns(self) -> None:
        ffns = self._ffns()
        if not ffns:
            return
        ctx = self.ctx
        flat = flatten(ffns) if ctx.rt.is_server else torch.empty(
            sum(t.numel() for t in ffns), dtype=ffns[0].dtype, device=ctx.device)
        # Uncharged: the emulated deployment never lost these; only the emulator restarted.
        unflatten_into(ctx.link.broadcast(flat, kind=SUBMODEL_KIND, clients=[]), ffns)

    def state_dict(self) -> dict[str, torch.Tensor]:
        ffns = self._ffns()
        return {"sub_ffn": flatten(ffns).cpu() if ffns else torch.zeros(0)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Server only, `params` already restored; the aligned FFNs reach the clients
        at the first round after it."""
        unflatten_into(flatten(self.params), self.full_params)
        ffns = self._ffns()
        if ffns:
            unflatten_into(state["sub_ffn"].to(self.ctx.device), ffns)
        self._resumed = True

    def report(self) -> dict[str, object]:
        out = super().report()
        out.update({f"fedpft_{k}": v for k, v in self.info.items()})
        return out
