"""Fine-tuning methods on the tiny BERT, in one process: what trains, exact
parameter counts, and outputs at initialisation (FeDeRA, adapters)."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from fedmpi.config import ModelConfig
from fedmpi.errors import ConfigError
from fedmpi.models.backbone import build_model, load_tokenizer
from fedmpi.models.methods import apply_method, trainable
from fedmpi.models.sync import CLIENT_FLOPS_ATTR, FLOPS_ATTR, SYNC_ATTR, model_digest
from fedmpi.options import build
from fedmpi.registry import METHODS


def MethodConfig(name: str, **kw):
    """The `method` section for `name`, keeping only the keys that method declares."""
    cls = METHODS.get(name).Options
    known = {f.name for f in dataclasses.fields(cls)}
    return build(cls, {"name": name, **{k: v for k, v in kw.items() if k in known}}, "method.")

TINY = ModelConfig(name="tiny-bert")  # hidden 32, 2 layers, FFN 64
H, LAYERS, LABELS = 32, 2, 2
HEAD = H * LABELS + LABELS


def tiny():
    return build_model(TINY, LABELS, seed=0)


@pytest.fixture(scope="module")
def batch():
    tok = load_tokenizer(TINY)
    enc = tok(["the film was great .", "i thought the plot was dull overall ."], padding=True,
              return_tensors="pt", return_token_type_ids=True)
    return {**enc, "labels": torch.tensor([1, 0])}


def names(model):
    return [n for n, _ in trainable(model)]


def numel(model):
    return sum(p.numel() for _, p in trainable(model))


def test_lora_trains_only_adapters_and_head():
    m = apply_method(tiny(), MethodConfig(name="lora", r=4, target_modules=["query", "value"]))
    assert all("lora_" in n or "classifier.modules_to_save" in n for n in names(m))
    # per target: A (r x in) + B (out x r)
    assert numel(m) == LAYERS * 2 * 4 * (H + H) + HEAD


def test_lora_fedpft_targets_and_no_head():
    """FedPFT's setting: query/key/value/attention-output (not the FFN or pooler dense)."""
    m = apply_method(tiny(), MethodConfig(name="lora", r=2, train_head=False,
                                          target_modules=["query", "key", "value", "attention.output.dense"]))
    assert not any("classifier" in n for n in names(m))
    assert numel(m) == LAYERS * 4 * 2 * (H + H)


def test_unknown_target_is_a_config_error():
    with pytest.raises(ConfigError, match="target_modules"):
        apply_method(tiny(), MethodConfig(name="lora", target_modules=["nope"]))


@pytest.mark.parametrize("mode", ["client_svd", "server_residual"])
def test_federa_output_at_init_equals_base(batch, mode):
    base = tiny().eval()
    m = apply_method(copy.deepcopy(base), MethodConfig(name="federa", r=4, federa_init=mode)).eval()
    with torch.no_grad():
        diff = (base(**batch).logits - m(**batch).logits).abs().max().item()
    assert diff < 1e-5
    # the frozen base weight is the residual (W - principal part), not W
    q = base.bert.encoder.layer[0].attention.self.query.weight
    res = dict(m.named_parameters())["base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight"]
    assert not torch.equal(q, res)
    if mode == "server_residual":  # residuals of query and value, marked for the init sync
        assert len(getattr(m, SYNC_ATTR)) == LAYERS * 2 and CLIENT_FLOPS_ATTR not in vars(m)
    else:  # every client derives them itself, paying the same SVDs as the server, once
        assert getattr(m, SYNC_ATTR) == [] and getattr(m, CLIENT_FLOPS_ATTR) == getattr(m, FLOPS_ATTR)
    assert numel(m) == LAYERS * 2 * 4 * (H + H) + HEAD


def _spectrum_weight(n: int, seed: int) -> torch.Tensor:
    """An n x n weight with singular values 2^-i (a clear gap after every rank)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = 2.0 ** (-torch.arange(n, dtype=torch.float64))
    return (u * s) @ v.T


@pytest.mark.parametrize("niter,tol", [(None, 1e-5), (4, 2e-2)])
def test_federa_adapters_are_the_top_r_singular_components(niter, tol):
    """scaling * B A = U_r S_r V_r^T of the pre-trained weight (an exact float64 SVD
    computed here), and the frozen residual is W minus it. Tolerances, relative to
    ||U_r S_r V_r^T||: 1e-5 for the exact SVD (float32 rounding); 2e-2 for the
    randomised one (peft's rank-r sketch without oversampling, 4 power iterations,
    on a spectrum halving per singular value: Halko et al.'s bound ~ (s_r+1 / s_r)^(2 niter + 1)
    = 2^-9; on a slowly decaying spectrum the same sketch is far off, see docs/results/peft.md)."""
    r = 4
    model = tiny()
    target = model.bert.encoder.layer[0].attention.self.query
    with torch.no_grad():
        target.weight.copy_(_spectrum_weight(H, 0).float())
    w = target.weight.detach().double().clone()
    m = apply_method(model, MethodConfig(name="federa", r=r, pissa_niter=niter))
    layer = m.base_model.model.bert.encoder.layer[0].attention.self.query
    scale = layer.scaling["default"]
    ba = scale * layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
    u, s, vh = torch.linalg.svd(w)
    principal = (u[:, :r] * s[:r]) @ vh[:r]
    size = principal.norm()
    assert (ba - principal).norm() / size < tol
    residual = layer.base_layer.weight.double()
    assert (residual - (w - principal)).norm() / size < tol
    assert (residual + ba - w).norm() / size < 1e-5  # residual + adapters = W, whatever the SVD's error


def test_federa_randomised_svd_option():
    m = apply_method(tiny(), MethodConfig(name="federa", r=4, pissa_niter=2))
    assert numel(m) == LAYERS * 2 * 4 * (H + H) + HEAD
    # the server's one-off SVD FLOPs: rank-4 randomised is far cheaper than exact 26·H³ per weight
    exact = apply_method(tiny(), MethodConfig(name="federa", r=4))
    assert getattr(exact, FLOPS_ATTR) == LAYERS * 2 * 26 * H ** 3
    assert 0 < getattr(m, FLOPS_ATTR) < getattr(exact, FLOPS_ATTR) / 5
    with pytest.raises(ConfigError, match="method.pissa_niter must be > 0"):
        MethodConfig(name="federa", pissa_niter=0)


def test_prompt_trains_prompt_and_head(batch):
    m = apply_method(tiny(), MethodConfig(name="prompt", num_virtual_tokens=5))
    assert numel(m) == 5 * H + HEAD
    assert "bert.embeddings.prompt.tokens" in names(m)  # after [CLS] (models/prompting.py), not peft's prepend
    assert m(**batch).loss.isfinite()
    m2 = apply_method(tiny(), MethodConfig(name="prompt", num_virtual_tokens=5, train_head=False))
    assert numel(m2) == 5 * H


def test_adapter_is_identity_at_init(batch):
    base = tiny().eval()
    m = apply_method(copy.deepcopy(base), MethodConfig(name="adapter", adapter_size=8)).eval()
    with torch.no_grad():
        assert torch.equal(base(**batch).logits, m(**batch).logits)
    # after attention output and FFN output of each layer: down (H*8+8) + up (8*H+H)
    assert numel(m) == LAYERS * 2 * (H * 8 + 8 + 8 * H + H) + HEAD
    assert all(".down." in n or ".up." in n or n.startswith("classifier") for n in names(m))


def test_bitfit_and_head():
    m = apply_method(tiny(), MethodConfig(name="bitfit"))
    assert all(n.endswith("bias") or n.startswith("classifier") for n in names(m))
    biases = sum(p.numel() for n, p in tiny().named_parameters() if n.endswith("bias"))
    assert numel(m) == biases + H * LABELS  # all biases (head bias included) + head weight
    h = apply_method(tiny(), MethodConfig(name="head"))
    assert names(h) == ["classifier.weight", "classifier.bias"]
    assert numel(h) == HEAD


@pytest.mark.parametrize("method", ["full", "lora", "federa", "prompt", "adapter", "bitfit", "head"])
def test_same_model_on_every_rank(method, batch):
    """Ranks build the model independently: the same seed must give bitwise the same model."""
    a = apply_method(tiny(), MethodConfig(name=method))
    b = apply_method(tiny(), MethodConfig(name=method))
    assert model_digest(a) == model_digest(b)
    a.train()
    a(**batch).loss.backward()
    assert all(p.grad is not None for _, p in trainable(a))


# -- vision backbones (tiny random ViT / CLIP, grey 28x28) ----------------------
VISION = {"tiny-vit": "vit", "tiny-clip": "vision_model"}


@pytest.mark.parametrize("backbone", list(VISION))
@pytest.mark.parametrize("method", ["full", "lora", "federa", "prompt", "adapter", "bitfit", "head"])
def test_vision_methods(backbone, method):
    cfg = ModelConfig(name=backbone)  # hidden 32, 2 layers, 4x4 patches of 7 px
    m = apply_method(build_model(cfg, 10, seed=0), MethodConfig(name=method, r=4, num_virtual_tokens=3,
                                                                  adapter_size=8))
    x = torch.randn(3, 1, 28, 28)
    out = m(pixel_values=x, labels=torch.tensor([0, 1, 2]))
    assert out.logits.shape == (3, 10)
    out.loss.backward()
    assert all(p.grad is not None for _, p in trainable(m))
    head = H * 10 + 10
    expected = {"lora": LAYERS * 2 * 4 * (H + H) + head, "federa": LAYERS * 2 * 4 * (H + H) + head,
                "prompt": 3 * H + head, "adapter": LAYERS * 2 * (H * 8 + 8 + 8 * H + H) + head, "head": head}
    if method in expected:
        assert numel(m) == expected[method]


def test_mnist_task_and_pixels(shared_data):
    from fedmpi.config import load_config
    from fedmpi.data.federated import FederatedData
    from fedmpi.tasks.classification import Classification

    cfg = load_config(None, ["model.name=tiny-vit", "model.image_size=32", "data.name=mnist",
                             f"data.path={shared_data}", "federation.num_clients=4"])
    task = Classification(cfg)
    dataset = task.load_data()
    assert (len(dataset.train), len(dataset.test)) == (8000, 2000) and dataset.num_labels == 10
    data = FederatedData(dataset, task.partition(dataset), task.encoder(task.tokenizer()), seed=0)
    b = next(data.client_batches(0, 0, 1, 5))
    assert b["pixel_values"].shape == (5, 1, 32, 32) and b["labels"].shape == (5,)


@pytest.mark.parametrize("backbone", list(VISION))
def test_vision_fedpft_targets(backbone):
    """query/key/value/attention-output map to the q/k/v/o projections of ViT and CLIP."""
    m = apply_method(build_model(ModelConfig(name=backbone), 10, 0),
                     MethodConfig(name="lora", r=2, train_head=False,
                                  target_modules=["query", "key", "value", "attention.output.dense"]))
    assert numel(m) == LAYERS * 4 * 2 * (H + H)
