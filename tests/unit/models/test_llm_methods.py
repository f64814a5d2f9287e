"""Fine-tuning methods on a causal LM (tiny-llama): exactly the parameters that
should travel train, the refused pairings say why, and the written-out SiLU keeps
the FLOP meter's counted step bitwise equal to an uncounted one."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils import flop_counter as fc

from fedmpi.errors import ConfigError
from fedmpi.models.llm import ExactSiLU, build_llm, is_causal_lm, load_tokenizer
from fedmpi.models.peft_methods import (Adapter, AdapterOptions, BitFit, BitFitOptions, FederaOptions, FeDeRA,
                                        LoRA, LoraOptions, PromptOptions, PromptTuning)
from fedmpi.models.sync import synced_tensors

pytest.importorskip("gguf", reason="tiny-llama borrows SmolLM2's tokenizer from its GGUF file")

H, LAYERS = 32, 2
CFG = SimpleNamespace(name="tiny-llama", max_length=64, hidden_size=H, num_layers=LAYERS, num_heads=2,
                      intermediate_size=64)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(CFG)


def _model(tok):
    return build_llm(CFG, 0, tok)


def _batch(tok):
    ids = torch.as_tensor([tok("hello there, how are you?")["input_ids"] * 2])
    labels = ids.clone()
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _trainable(model) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


def test_tiny_llama_shares_smollm2s_vocabulary(tok) -> None:
    model = _model(tok)
    assert type(model).__name__ == "LlamaForCausalLM" and is_causal_lm(model)
    assert model.config.vocab_size == len(tok) == 49152
    assert model.config.tie_word_embeddings
    assert all(isinstance(layer.mlp.act_fn, ExactSiLU) for layer in model.model.layers)


def test_lora_on_q_and_v_projections(tok) -> None:
    model = LoRA.apply(_model(tok), LoraOptions(r=4))  # default targets query/value map to q_proj/v_proj
    assert type(model).__name__ == "PeftModelForCausalLM" and is_causal_lm(model)
    trained = _trainable(model)
    assert len(trained) == LAYERS * 2 * 2 and all(".q_proj.lora_" in n or ".v_proj.lora_" in n for n in trained)
    assert sum(trained.values()) == LAYERS * 2 * 4 * (H + H)


def test_federa_marks_its_residual_and_keeps_round0_outputs(tok) -> None:
    base = _model(tok)
    batch = _batch(tok)
    with torch.no_grad():
        before = base(**batch).logits.clone()
    assert not synced_tensors(FeDeRA.apply(_model(tok), FederaOptions(r=4)))  # client_svd: each client its own
    model = FeDeRA.apply(base, FederaOptions(r=4, federa_init="server_residual"))
    assert len(synced_tensors(model)) == LAYERS * 2  # q and v residuals go out once (ledger kind init)
    with torch.no_grad():
        after = model(**batch).logits
    assert torch.allclose(before, after, atol=1e-4)


def test_prompt_tuning_is_causal_lm_prompt_tuning(tok) -> None:
    model = PromptTuning.apply(_model(tok), PromptOptions(num_virtual_tokens=5))
    assert sum(_trainable(model).values()) == 5 * H  # the prompt only: no head to save on a causal LM
    batch = _batch(tok)
    out = model(**batch)
    assert out.logits.shape[1] == 5 + batch["input_ids"].shape[1] and torch.isfinite(out.loss)
    out.loss.backward()
    gen = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=3,
                         do_sample=False)
    assert gen.shape[1] == batch["input_ids"].shape[1] + 3


def test_pairings_that_make_no_sense(tok) -> None:
    with pytest.raises(ConfigError, match="no bias terms, BitFit would train nothing"):
        BitFit.apply(_model(tok), BitFitOptions())
    with pytest.raises(ConfigError, match="no attention/FFN output projections"):
        Adapter.apply(_model(tok), AdapterOptions())


def test_max_length_beyond_positions(tok) -> None:
    with pytest.raises(ConfigError, match="beyond tiny-llama's 512 positions"):
        build_llm(SimpleNamespace(**{**vars(CFG), "max_length": 513}), 0, tok)


def test_exact_silu_matches_silu_and_is_stable_under_the_flop_counter() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 64, 48, requires_grad=True)
    g = torch.randn(4, 64, 48)

    def grad(fn, counted: bool) -> torch.Tensor:
        x.grad = None
        if counted:
            with fc.FlopCounterMode(display=False):
                fn(x).mul(g).sum().backward()
        else:
            fn(x).mul(g).sum().backward()
        return x.grad.clone()

    exact = ExactSiLU()
    assert torch.equal(exact(x), torch.nn.functional.silu(x))
    assert torch.allclose(grad(exact, False), grad(torch.nn.functional.silu, False), rtol=1e-5, atol=1e-6)
    assert torch.equal(grad(exact, False), grad(exact, True))
    # the reason it exists: torch's own silu backward is not bitwise stable under the counter
    assert not torch.equal(grad(torch.nn.functional.silu, False), grad(torch.nn.functional.silu, True))


def test_a_local_folder_loads_through_the_auto_classes(tok, tmp_path) -> None:
    model = _model(tok)
    model.save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    cfg = SimpleNamespace(**{**vars(CFG), "name": str(tmp_path / "llama")})
    again = build_llm(cfg, 1, load_tokenizer(cfg))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_gpt2_needs_its_own_lora_targets(tok, tmp_path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128)) \
        .save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    cfg = SimpleNamespace(**{**vars(CFG), "name": str(tmp_path / "gpt2")})
    model = build_llm(cfg, 0, load_tokenizer(cfg))
    assert is_causal_lm(model)
    with pytest.raises(ConfigError, match=r"target_modules \['query', 'value'\] not found in GPT2LMHeadModel"):
        LoRA.apply(model, LoraOptions())
    lora = LoRA.apply(model, LoraOptions(r=2, target_modules=["c_attn"]))
    assert sum(_trainable(lora).values()) == 2 * 2 * (32 + 3 * 32)
    with pytest.raises(ConfigError, match="beyond .* 128 positions"):
        build_llm(SimpleNamespace(**{**vars(cfg), "max_length": 129}), 0, tok)
