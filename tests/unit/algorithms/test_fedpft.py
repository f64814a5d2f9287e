"""FedPFT's parts in one process: sub-model construction, LoRA portability, distillation,
activity statistics and options (the federated run is tests/mpi/test_fedpft.py)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fedmpi.algorithms.fedpft import ActivityMeter, add_lora, cycle_batches, public_split
from fedmpi.algorithms.fedpft_options import FedPFTOptions
from fedmpi.config import DataConfig, load_config
from fedmpi.data.federated import Encoded
from fedmpi.errors import ConfigError
from fedmpi.experiment import prepare
from fedmpi.options import build
from fedmpi.models.distill import capture, distill, evaluate_layers, least_active, neuron_masks
from fedmpi.metering.flops import FlopMeter
from fedmpi.models.methods import trainable
from fedmpi.models.submodel import (build_submodel, encoder_layers, ffn, neuron_scores, param_count,
                                    plan_submodel, sample_flops)
from fedmpi.net.flat import flatten, unflatten_into

from conftest import TINY

H, I, L = 32, 64, 4  # tiny-bert with 4 layers: 1 and 2 get compressed
TARGETS = ["query", "key", "value", "attention.output.dense"]


@pytest.fixture(scope="module")
def prep():
    return prepare(load_config(TINY, [f"model.num_layers={L}"]))


@pytest.fixture
def full(prep):
    return copy.deepcopy(prep.model).eval()


def batch_of(prep, n: int = 8) -> dict[str, torch.Tensor]:
    enc = Encoded(prep.dataset.test, prep.tokenizer, 32)
    return enc.batch(np.arange(n))


def test_all_neurons_kept_reproduces_outputs(prep, full):
    plan = plan_submodel(full, None, 1.0)
    assert plan.compressed == [1, 2] and all(len(k) == I for k in plan.kept.values())
    sub = build_submodel(full, plan).eval()
    b = batch_of(prep)
    with torch.no_grad():
        ref, out = full(**b), sub(**b)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-6)
    assert param_count(sub) == param_count(full)


def test_k_neurons_shapes_count_and_flops(prep, full):
    k = I // 4
    plan = plan_submodel(full, None, 0.25)
    sub = build_submodel(full, plan)
    for i in range(L):
        f_in, f_out = ffn(encoder_layers(full)[i])
        s_in, s_out = ffn(encoder_layers(sub)[i])
        if i in (0, L - 1):  # kept whole
            assert s_in.weight.shape == (I, H) and torch.equal(s_in.weight, f_in.weight)
            continue
        # top-k by ‖[W_in row, W_out column]‖, original order
        score = np.sqrt((f_in.weight.detach().numpy() ** 2).sum(1) + (f_out.weight.detach().numpy() ** 2).sum(0))
        expect = np.sort(np.argsort(-score)[:k])
        assert plan.kept[i].tolist() == expect.tolist()
        torch.testing.assert_close(neuron_scores(encoder_layers(full)[i]), torch.from_numpy(score).float())
        assert s_in.weight.shape == (k, H) and s_in.bias.shape == (k,) and s_out.weight.shape == (H, k)
        assert torch.equal(s_in.weight, f_in.weight[expect]) and torch.equal(s_out.weight, f_out.weight[:, expect])
        assert torch.equal(s_out.bias, f_out.bias)  # FFN output bias unchanged
        fl, sl = encoder_layers(full)[i], encoder_layers(sub)[i]
        assert torch.equal(sl.output.LayerNorm.weight, fl.output.LayerNorm.weight)
        assert torch.equal(sl.attention.self.query.weight, fl.attention.self.query.weight)
    # each dropped neuron: one W_in row (H), its bias (1), one W_out column (H)
    assert param_count(full) - param_count(sub) == 2 * (I - k) * (2 * H + 1)
    # forward FLOPs per sample: each dropped neuron saves, per token, 2 matmuls of 2*H FLOPs,
    # its bias add and its erf-GELU (5; metering/formulas.py)
    b = batch_of(prep)
    tokens = b["input_ids"].shape[1]
    saved = sample_flops(full, b, FlopMeter()) - sample_flops(sub, b, FlopMeter())
    assert saved == 2 * (I - k) * (4 * H + 1 + 5) * tokens


def test_lora_trained_on_submodel_loads_into_full_model(prep, full):
    cfg = load_config(TINY, [f"model.num_layers={L}", "method.name=lora", "method.r=4"])
    sub = add_lora(build_submodel(full, plan_submodel(full, None, 0.25)), cfg, TARGETS, 0)
    full = add_lora(full, cfg, TARGETS, 0)
    names_sub = [(n, p.shape) for n, p in trainable(sub)]
    assert names_sub == [(n, p.shape) for n, p in trainable(full)]
    names = [n for n, _ in names_sub]
    assert any("classifier" in n for n in names)
    for t in TARGETS:  # every target of every layer carries LoRA
        assert sum(n.endswith(f"{t}.lora_A.default.weight") for n in names) == L
    assert not any("intermediate" in n or ".output.dense.lora" in n and "attention" not in n for n in names)
    opt = torch.optim.AdamW([p for _, p in trainable(sub)], lr=0.05)
    b = batch_of(prep, 16)
    for _ in range(3):
        opt.zero_grad()
        sub(**b).loss.backward()
        opt.step()
    before = full.eval()(**b).logits.detach()
    unflatten_into(flatten([p for _, p in trainable(sub)]), [p for _, p in trainable(full)])
    sd_full = full.state_dict()
    for n, p in trainable(sub):
        assert torch.equal(sd_full[n], p.detach())
    assert not torch.allclose(full(**b).logits, before)  # the loaded adapters act on the full model


def test_lora_on_uncompressed_submodel_matches_full_model(prep, full):
    cfg = load_config(TINY, [f"model.num_layers={L}", "method.name=lora"])
    sub = add_lora(build_submodel(full, plan_submodel(full, None, 1.0)), cfg, TARGETS, 0).eval()
    full = add_lora(full, cfg, TARGETS, 0).eval()
    with torch.no_grad():
        for p in trainable(sub):
            p[1].add_(0.1 * torch.randn_like(p[1]))
    unflatten_into(flatten([p for _, p in trainable(sub)]), [p for _, p in trainable(full)])
    b = batch_of(prep)
    with torch.no_grad():
        torch.testing.assert_close(sub(**b).logits, full(**b).logits, rtol=0, atol=1e-5)


def public_batches(prep, seed=0):
    opts = FedPFTOptions(public_samples=200)
    enc = Encoded(public_split(opts, DataConfig(), seed), prep.tokenizer, 32)
    return cycle_batches(enc, 16, seed)


def test_public_text_is_not_training_data(prep):
    pub = public_split(FedPFTOptions(public_samples=300), DataConfig(), 0)
    assert len(pub) == 300
    overlap = len(set(pub.texts) & set(prep.dataset.train.texts)) / len(pub)
    assert pub.texts[:50] != prep.dataset.train.texts[:50] and overlap < 0.5
    with pytest.raises(ConfigError, match="task's own data"):
        public_split(FedPFTOptions(public_data="sst2"), DataConfig(name="sst2", path="../shared/data"), 0)


def test_distillation_lowers_layer_loss(prep, full):
    plan = plan_submodel(full, None, 0.25)
    sub = build_submodel(full, plan)
    batches = public_batches(prep)
    heldout = [next(batches) for _ in range(2)]
    before = evaluate_layers(full, sub, plan, heldout)
    attn = copy.deepcopy(encoder_layers(sub)[1].attention.state_dict())
    st = distill(full, sub, plan, batches, 40, 0.5, 3e-3, FlopMeter(), torch.device("cpu"))
    after = evaluate_layers(full, sub, plan, heldout)
    assert st.steps == 40 and st.flops > 0 and st.loss_last < st.loss_first
    assert after < 0.8 * before, (before, after)
    for k, v in encoder_layers(sub)[1].attention.state_dict().items():  # only FFNs train
        assert torch.equal(v, attn[k])


def test_neuron_alignment_moves_only_chosen_neurons(prep, full):
    plan = plan_submodel(full, None, 0.25)
    sub = build_submodel(full, plan)
    chosen = {1: torch.tensor([0, 5]), 2: torch.tensor([3])}
    w = {i: [t.detach().clone() for t in (ffn(encoder_layers(sub)[i])[0].weight,
                                           ffn(encoder_layers(sub)[i])[1].weight)] for i in (1, 2)}
    distill(full, sub, plan, public_batches(prep), 5, 0.5, 1e-2, FlopMeter(), torch.device("cpu"),
            masks=neuron_masks(plan, chosen))
    for i in (1, 2):
        w_in, w_out = ffn(encoder_layers(sub)[i])
        moved_rows = (w_in.weight != w[i][0]).any(1).nonzero().flatten().tolist()
        moved_cols = (w_out.weight != w[i][1]).any(0).nonzero().flatten().tolist()
        assert moved_rows == chosen[i].tolist() and moved_cols == chosen[i].tolist()


def test_activity_stats_and_least_active_choice(prep, full):
    plan = plan_submodel(full, None, 0.25)
    sub = build_submodel(full, plan).eval()
    b = batch_of(prep)
    meter = ActivityMeter(sub, plan, 0.05)
    with torch.no_grad():
        for bb in meter.batches([b]):
            sub(**bb)
    flat = meter.close()
    assert flat.dtype == torch.float32 and flat.shape == (2 * (I // 4),)  # the `stats` message
    with torch.no_grad():
        seen = capture(sub, [1, 2], b)
        mask = b["attention_mask"].bool()
        expect = torch.cat([(encoder_layers(sub)[i].intermediate(seen[i][0]).abs() < 0.05)[mask].float().mean(0)
                            for i in (1, 2)])
    torch.testing.assert_close(flat, expect)
    chosen = least_active(flat, plan, {1: 3, 2: 2})
    for i, n, part in ((1, 3, flat[:16]), (2, 2, flat[16:])):
        assert len(chosen[i]) == n and chosen[i].tolist() == sorted(chosen[i].tolist())
        assert part[chosen[i]].min() >= torch.sort(part, descending=True).values[n - 1]


def parse_options(raw: dict) -> FedPFTOptions:
    return build(FedPFTOptions, raw, "options.", what="algorithm 'fedpft'")


def test_options_are_validated():
    with pytest.raises(ConfigError, match="unknown config key 'options.ffn_ratio' for algorithm 'fedpft'"):
        parse_options({"ffn_ratio": 0.5})
    with pytest.raises(ConfigError, match=r"options.ffn_keep_ratio must be in \(0, 1\]"):
        parse_options({"ffn_keep_ratio": 1.5})
    with pytest.raises(ConfigError, match="unknown options.mode 'x'"):
        parse_options({"mode": "x"})
    with pytest.raises(ConfigError, match="options.align_every must be >= 0"):
        parse_options({"align_every": -1})
    assert parse_options({"distill_lr": "1e-3"}).distill_lr == 1e-3
    assert parse_options({"mode": "full"}).ffn_keep_ratio == 1.0
    assert not parse_options({"mode": "no_align"}).aligns and not parse_options({"mode": "no_align"}).distills


def test_keep_layers_out_of_range_is_a_config_error(full):
    with pytest.raises(ConfigError, match="keep_layers: 7 is not a layer index"):
        plan_submodel(full, [0, 7], 0.25)


