"""The causal-LM task without a real model: prompt/reply masking, truncation and
length buckets on a whitespace tokenizer, and eval_loss / verbaliser accuracy on
a hand-built bigram "model" whose numbers are computed here by hand. Also the
configs the task refuses before any rank starts."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from fedmpi.config import config_from_dict
from fedmpi.data.instructions import LMSplit, user_prompt
from fedmpi.errors import ConfigError
from fedmpi.registry import TASKS
from fedmpi.tasks.causal_lm import LMEncoded, PromptFormat, bucket, choice_logliks, fit, render_plain


class WordTokenizer:
    """Whitespace tokens, ids given on first sight; a toy chat template."""
    chat_template = "toy"
    pad_token_id, eos_token_id, eos_token = 0, 1, "</s>"

    def __init__(self) -> None:
        self.vocab = {"<pad>": 0, "</s>": 1}

    def id(self, word: str) -> int:
        return self.vocab.setdefault(word, len(self.vocab))

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [self.id(w) for w in text.split()]}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False) -> str:
        text = "".join(f"<{m['role']}> {m['content']} </s> " for m in messages)
        return text + ("<assistant> " if add_generation_prompt else "")


def _split(prompts: list[str], replies: list[str], labels: list[int] | None = None,
           choices: list[str] | None = None) -> LMSplit:
    n = len(prompts)
    return LMSplit([user_prompt(p) for p in prompts], replies, np.full(n, -1),
                   np.asarray(labels if labels is not None else [-1] * n), choices or [])


def test_fit_keeps_the_reply_and_the_latest_context() -> None:
    p, r = list(range(50)), list(range(100, 130))
    assert fit(p, r, 64) == (p[-34:], r)  # the reply fits in 64 - min(50, 32): all of it
    p, r = list(range(10)), list(range(100, 200))
    assert fit(p, r, 64) == (p, r[:54])  # a short prompt leaves the reply the rest
    p, r = list(range(100)), list(range(100, 200))
    assert fit(p, r, 64) == (p[-32:], r[:32])  # both long: half each
    assert fit([1, 2], [3], 64) == ([1, 2], [3])


def test_bucket_is_a_multiple_of_32_capped_at_max_length() -> None:
    assert [bucket(n, 96) for n in (1, 32, 33, 64, 65, 96)] == [32, 32, 64, 64, 96, 96]
    assert bucket(70, 80) == 80


@pytest.mark.parametrize("kind", ["chat", "plain"])
def test_labels_mask_everything_but_the_reply(kind: str) -> None:
    tok = WordTokenizer()
    split = _split(["good film", "a long and rather dull film indeed"], ["yes", "no it was not"])
    enc = LMEncoded(split, PromptFormat(tok, kind), max_length=96)
    b = enc.batch([0, 1])
    assert b["input_ids"].shape == (2, 32) and set(b) == {"input_ids", "attention_mask", "labels"}
    for row in range(2):
        p, r = enc.example(row)
        n = len(p) + len(r)
        assert b["input_ids"][row, :n].tolist() == p + r
        assert b["attention_mask"][row].tolist() == [1] * n + [0] * (32 - n)
        assert b["labels"][row].tolist() == [-100] * len(p) + r + [-100] * (32 - n)
        assert r[-1] == tok.eos_token_id  # the reply ends with the end marker, which is learned too
    if kind == "chat":
        assert [tok.id(w) for w in "<user> good film </s> <assistant>".split()] == enc.example(0)[0]
        assert enc.example(0)[1] == [tok.id("yes"), 1]
    else:
        assert render_plain(split.prompts[0]) == "### Instruction:\ngood film\n\n### Response:\n"


def test_system_message_is_prepended() -> None:
    tok = WordTokenizer()
    fmt = PromptFormat(tok, "chat", system="be kind")
    assert fmt.prompt_text(user_prompt("hi")) == "<system> be kind </s> <user> hi </s> <assistant> "


def test_chat_format_needs_a_template() -> None:
    tok = WordTokenizer()
    tok.chat_template = None
    with pytest.raises(ConfigError, match="prompt_format: plain"):
        PromptFormat(tok, "chat")


class Bigram(nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: the next token depends on the current one only."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.table[input_ids])


def _task(tmp_path: Path, choices: list[str]):
    folder = tmp_path / "sst"
    folder.mkdir(exist_ok=True)
    (folder / "train.csv").write_text("text,label\ngood ,1\nbad ,0\n")
    (folder / "test.csv").write_text("text,label\ngood ,1\n")
    cfg = config_from_dict({"task": "causal_lm", "model": {"name": "tiny-llama"},
                            "data": {"name": "sst", "path": str(tmp_path)}})
    task = TASKS.get("causal_lm")(cfg)
    task.info["verbalisers"] = choices
    return task


def test_eval_loss_and_verbaliser_accuracy_by_hand(tmp_path: Path) -> None:
    tok = WordTokenizer()
    for w in ("<user>", "great", "awful", "</s>", "<assistant>", "pos", "neg", "very"):
        tok.id(w)
    V = 10
    table = torch.zeros(V, V)
    A = tok.id("<assistant>")
    table[A, tok.id("pos")] = 2.0  # after <assistant>: pos is e^2 times as likely as any other token
    table[tok.id("pos"), 1] = 1.0
    table[tok.id("neg"), 1] = 1.0
    task = _task(tmp_path, ["neg", "pos"])
    task._tok = tok
    # gold: pos (the model's favourite: right), neg (wrong) -> accuracy 1/2
    split = _split(["great", "awful"], ["pos", "neg"], labels=[1, 0], choices=["neg", "pos"])
    enc = LMEncoded(split, PromptFormat(tok, "chat"), max_length=64)
    batch = enc.batch([0, 1])
    assert batch["class_label"].tolist() == [1, 0]
    out = task.evaluate(Bigram(table), [batch], torch.device("cpu"))
    assert out["accuracy"] == 0.5
    # reply tokens: [pos, </s>] and [neg, </s>]; each predicted from the token before it
    z_a = math.log(math.exp(2.0) + (V - 1))  # log-partition of the <assistant> row
    z_r = math.log(math.e + (V - 1))  # of the pos / neg rows
    nll = [z_a - 2.0, z_r - 1.0, z_a - 0.0, z_r - 1.0]
    assert out["eval_loss"] == pytest.approx(sum(nll) / 4, rel=1e-6)
    assert out["perplexity"] == pytest.approx(math.exp(sum(nll) / 4), rel=1e-6)

    # two-token verbalisers go through full scoring: "very pos" vs "neg": log p summed over tokens
    very = tok.id("very")
    table2 = table.clone()
    table2[A, very] = 3.0
    table2[very, tok.id("pos")] = 0.5
    scores = choice_logliks(Bigram(table2), [enc.example(0)[0]], [[very, tok.id("pos")], [tok.id("neg")]],
                            0, torch.device("cpu"), 64)
    row_a = torch.log_softmax(table2[A], -1)
    row_v = torch.log_softmax(table2[very], -1)
    assert scores[0, 0].item() == pytest.approx(float(row_a[very] + row_v[tok.id("pos")]), rel=1e-6)
    assert scores[0, 1].item() == pytest.approx(float(row_a[tok.id("neg")]), rel=1e-6)


# -- configs refused before any rank starts --------------------------------------------------
LLM = {"task": "causal_lm", "model": {"name": "tiny-llama"}, "data": {"name": "chitchat", "partition": "natural"}}


def _refused(tree: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg = config_from_dict(tree)  # method / algorithm checks
        TASKS.get(cfg.task)(cfg)  # the task's: what the launcher and every rank's prepare do first


@pytest.mark.parametrize("algorithm, method", [("sfprompt", "full"), ("fedpft", "lora")])
def test_classification_only_algorithms(algorithm: str, method: str) -> None:
    _refused({**LLM, "algorithm": algorithm, "method": {"name": method}},
             f"algorithm '{algorithm}' cannot run task causal_lm")


def test_splitfed_with_a_full_method() -> None:
    _refused({**LLM, "algorithm": "splitfed", "method": {"name": "full"}}, "split learning cuts a sequence classifier")


def test_head_and_bitfit_on_llama() -> None:
    _refused({**LLM, "method": {"name": "head"}}, "tied vocabulary embedding")
    _refused({**LLM, "method": {"name": "bitfit"}}, "has none")


def test_sequence_beyond_the_model_positions() -> None:
    _refused({**LLM, "model": {"name": "tiny-llama", "max_length": 1024}}, "beyond tiny-llama's 512 positions")
    _refused({**LLM, "model": {"name": "smollm2", "max_length": 9000}}, "beyond smollm2's 8192 positions")


def test_classifier_model_or_label_partitions() -> None:
    _refused({**LLM, "model": {"name": "minilm"}}, "classifier backbone")
    _refused({**LLM, "data": {"name": "chitchat", "partition": "dirichlet"}}, "chitchat has none")
    _refused({**LLM, "attack": {"malicious_fraction": 0.5}}, "backdoor")


def test_natural_partition_needs_natural_clients(tmp_path: Path) -> None:
    _refused({"data": {"partition": "natural"}}, "classification data has none")
    (tmp_path / "a.jsonl").write_text('{"instruction": "hi", "output": "there"}\n')
    _refused({**LLM, "data": {"name": str(tmp_path / "a.jsonl"), "partition": "natural"}}, "data.name chitchat")


def test_dataset_without_the_needed_columns(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"question": "hi", "answer": "there"}\n')
    _refused({**LLM, "data": {"name": str(tmp_path / "a.jsonl"), "partition": "iid"}}, "needs `instruction`")


def test_gguf_transformers_cannot_load(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 3)
    _refused({**LLM, "model": {"name": str(bad)}}, "cannot load GGUF file .*truncated")
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    _refused({**LLM, "model": {"name": str(bad)}}, "bad magic")


def test_task_options_are_checked() -> None:
    _refused({**LLM, "task_options": {"prompt_fromat": "plain"}}, "unknown config key 'task_options.prompt_fromat'")
    _refused({**LLM, "task_options": {"prompt_format": "json"}}, "choose one of: chat, plain")
    _refused({"task_options": {"prompt_format": "plain"}}, "config key 'task_options.prompt_format' does not apply to task")
