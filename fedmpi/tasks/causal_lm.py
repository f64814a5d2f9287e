"""Causal-LM fine-tuning (decoder LLMs): chat/instruction replies, loss on the reply only.

Data: `data.name: chitchat` (participants as natural clients, `data.partition:
natural`), a local instruction file or folder (`instruction`/`input`/`output`),
or a classification folder recast as instructions (the answer is the label's
verbaliser, e.g. SST-2's "negative"/"positive").

A batch is the prompt rendered by the model's chat template (or a plain
`### Instruction:` / `### Response:` format) followed by the reply and its end
marker; `labels` are -100 everywhere but the reply, so the loss is the reply's
token-mean NLL. Rows are padded to a multiple of 32 tokens, so the FLOP meter
sees a handful of shapes. Sequences longer than model.max_length keep the reply
(at least half the window) and the most recent part of the prompt.

Each evaluation reports `eval_loss` (token-mean NLL of the held-out replies) and
`perplexity` = exp(eval_loss); on classification data also `accuracy`, the
share of test prompts whose gold verbaliser has the highest log-likelihood
(no sampling). The headline score is `accuracy` there, `eval_loss` (lower is
better) otherwise.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from fedmpi.data.instructions import LMSplit, Messages, locate
from fedmpi.data.splits import Dataset
from fedmpi.errors import ConfigError
from fedmpi.options import at_least, in_range, option, positive
from fedmpi.tasks.base import Batch, Task

BUCKET = 32  # sequence lengths are padded to a multiple of this
EVAL_ROWS = 8  # rows per forward at evaluation: B x L x vocab float32 logits stay ~150 MB for SmolLM2
MODEL_KEYS = ("input_ids", "attention_mask", "labels")
CLASSIFIER_MODELS = ("minilm", "tiny-bert")

# Algorithms built around a classifier: what they would need from a causal LM.
CLASSIFICATION_ONLY = {
    "splitfed": "split learning cuts a sequence classifier at a layer and the server owns its head and labels",
    "sfprompt": "SFPrompt splits a prompt-tuned classifier and prunes samples by their classification EL2N",
    "fedpft": "FedPFT distills a sub-model and aligns it on classifier features and labels",
}


@dataclass
class CausalLMOptions:
    prompt_format: str = option("chat", choices=("chat", "plain"),
                                help="chat: the tokenizer's chat template; plain: ### Instruction / ### Response")
    min_client_samples: int = option(8, check=positive,
                                     help="natural partition: participants with fewer training examples are left out")
    history_turns: int = option(3, check=positive, help="chitchat: messages of context before each reply")
    test_participants: float = option(0.1, check=in_range(0, 1, low_open=True, high_open=True),
                                      help="chitchat: share of participants held out (unseen) for evaluation")
    test_fraction: float = option(0.1, check=in_range(0, 1, low_open=True, high_open=True),
                                  help="a single instruction file: share of examples held out for evaluation")
    instruction: str = option("Classify the text as one of: {choices}. Answer with the label only.",
                              help="classification as instruction: the instruction before each text")
    verbalisers: list[str] | None = option(None, help="classification: the answer text of each class "
                                                      "(default: the label names)")
    system: str | None = option(None, help="a system message before every prompt (default: the template's own)")
    generations: int = option(3, check=at_least(0),
                              help="greedy generations from the first test prompts saved at each evaluation")
    max_new_tokens: int = option(32, check=positive)


def options_of(cfg: Any) -> CausalLMOptions:
    opts = getattr(cfg, "task_options", None)
    return opts if isinstance(opts, CausalLMOptions) else CausalLMOptions()


# -- prompt rendering -----------------------------------------------------------------
def render_plain(messages: Messages) -> str:
    heads = {"user": "### Instruction:", "assistant": "### Response:", "system": "### System:"}
    return "".join(f"{heads.get(m['role'], '### ' + m['role'] + ':')}\n{m['content']}\n\n" for m in messages) \
        + "### Response:\n"


class PromptFormat:
    """Prompt and reply as token ids: the chat template's, or the plain format + EOS."""

    def __init__(self, tokenizer: Any, kind: str, system: str | None = None) -> None:
        if kind == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("task_options.prompt_format chat: the tokenizer of this model has no chat template; "
                              "set task_options.prompt_format: plain")
        self.tok, self.kind, self.system = tokenizer, kind, system

    def _with_system(self, messages: Messages) -> Messages:
        return [{"role": "system", "content": self.system}, *messages] if self.system else messages

    def prompt_text(self, messages: Messages) -> str:
        messages = self._with_system(messages)
        if self.kind == "plain":
            return render_plain(messages)
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, messages: Messages, response: str) -> tuple[list[int], list[int]]:
        tok = self.tok
        prompt = self.prompt_text(messages)
        messages = self._with_system(messages)
        if self.kind == "plain":
            ids = tok(prompt, add_special_tokens=True)["input_ids"]
            return ids, tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        full = tok.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
        # The reply as the template closes it (e.g. "yes<|im_end|>\n"); a template that rewrites
        # earlier turns when a reply follows falls back to the reply + EOS.
        tail = full[len(prompt):] if full.startswith(prompt) else None
        reply = tok(tail, add_special_tokens=False)["input_ids"] if tail else \
            tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return tok(prompt, add_special_tokens=False)["input_ids"], reply

    def prompt_ids(self, messages: Messages) -> list[int]:
        return self.encode(messages, "")[0]


def fit(prompt: list[int], reply: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Trim to max_length: the reply keeps at least half the window (more if the
    prompt is short), the prompt its most recent tokens."""
    if len(prompt) + len(reply) <= max_length:
        return prompt, reply
    reply = reply[:max_length - min(len(prompt), max_length // 2)]
    return prompt[len(prompt) - (max_length - len(reply)):], reply


def bucket(n: int, max_length: int) -> int:
    return min(-(-n // BUCKET) * BUCKET, max_length)


class LMEncoded:
    """A split as token ids, encoded example by example on first use (a client's
    batches need only its own), padded per batch to a multiple of BUCKET."""

    def __init__(self, split: LMSplit, fmt: PromptFormat, max_length: int) -> None:
        self.split, self.fmt, self.max_length = split, fmt, max_length
        self.pad_id = fmt.tok.pad_token_id
        self._ids: dict[int, tuple[list[int], list[int]]] = {}

    def __len__(self) -> int:
        return len(self.split)

    def example(self, i: int) -> tuple[list[int], list[int]]:
        if i not in self._ids:
            p, r = self.fmt.encode(self.split.prompts[i], self.split.responses[i])
            self._ids[i] = fit(p, r, self.max_length)
        return self._ids[i]

    def batch(self, idx: np.ndarray | list[int]) -> Batch:
        rows = [self.example(int(i)) for i in idx]
        width = bucket(max(len(p) + len(r) for p, r in rows), self.max_length)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for row, (p, r) in enumerate(rows):
            n = len(p) + len(r)
            ids[row, :n] = torch.as_tensor(p + r)
            mask[row, :n] = 1
            labels[row, len(p):n] = torch.as_tensor(r)
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if self.split.labelled:
            out["class_label"] = torch.as_tensor(self.split.labels[np.asarray(idx, dtype=np.int64)])
            out["prompt_length"] = torch.as_tensor([len(p) for p, _ in rows])
        return out


# -- scoring ----------------------------------------------------------------------------
def reply_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """(sum of the reply tokens' NLL, their count): position t predicts token t+1."""
    targets = labels[:, 1:]
    nll = nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                      ignore_index=-100, reduction="sum")
    return float(nll), int((targets != -100).sum())


def choice_logliks(model: nn.Module, prompts: list[list[int]], choices: list[list[int]], pad_id: int,
                   device: torch.device, max_length: int) -> torch.Tensor:
    """log p(choice | prompt) summed over the choice's tokens, for each prompt x choice: (P, C)."""
    seqs, spans = [], []
    for p in prompts:
        for c in choices:
            p_fit, c_fit = fit(p, c, max_length)
            seqs.append(p_fit + c_fit)
            spans.append((len(p_fit), len(c_fit)))
    out = torch.empty(len(seqs), dtype=torch.float64)
    for start in range(0, len(seqs), EVAL_ROWS):
        chunk = seqs[start:start + EVAL_ROWS]
        width = bucket(max(map(len, chunk)), max_length)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, s in enumerate(chunk):
            ids[row, :len(s)] = torch.as_tensor(s)
            mask[row, :len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -width:]
        logp = torch.log_softmax(logits.float(), dim=-1)
        for row, s in enumerate(chunk):
            a, n = spans[start + row]
            pos = torch.arange(a - 1, a - 1 + n, device=logp.device)
            out[start + row] = logp[row, pos, torch.as_tensor(s[a:a + n], device=logp.device)].double().sum()
    return out.view(len(prompts), len(choices))


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class CausalLM(Task):
    name = "causal_lm"
    Options = CausalLMOptions

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.opts = options_of(cfg)
        self.kind = "chitchat" if self._is_chitchat(cfg.data) else locate(cfg.data).kind
        self._tok: Any = None
        self.info: dict[str, Any] = {"data": self.kind, "prompt_format": self.opts.prompt_format,
                                     "score": self.score, "higher_is_better": self.higher_is_better}

    # accuracy on classification-as-instruction data, the held-out loss otherwise
    @property
    def score(self) -> str:  # type: ignore[override]
        return "accuracy" if self.kind == "classification" else "eval_loss"

    @property
    def higher_is_better(self) -> bool:  # type: ignore[override]
        return self.kind == "classification"

    @staticmethod
    def _is_chitchat(data: Any) -> bool:
        from fedmpi.data.chitchat import NAME

        return data.name == NAME and not data.path

    @classmethod
    def check(cls, cfg: Any) -> None:
        from fedmpi.models.llm import check_gguf, known_max_positions
        from fedmpi.models.vision import vision_kind
        from fedmpi.registry import ALGORITHMS

        if cfg.algorithm in CLASSIFICATION_ONLY:
            raise ConfigError(f"algorithm '{cfg.algorithm}' cannot run task causal_lm: "
                              f"{CLASSIFICATION_ONLY[cfg.algorithm]}; use algorithm: fedavg")
        tasks = getattr(ALGORITHMS.get(cfg.algorithm), "tasks", None)  # a plug-in may name the tasks it serves
        if tasks is not None and cls.name not in tasks:
            raise ConfigError(f"algorithm '{cfg.algorithm}' serves tasks {list(tasks)}, not causal_lm")
        m = cfg.model
        if m.name in CLASSIFIER_MODELS or vision_kind(m):
            raise ConfigError(f"model '{m.name}' is a classifier backbone; task causal_lm needs a decoder LM "
                              "(smollm2, tiny-llama, a .gguf file, or a hub id / folder of a causal LM)")
        if m.name.endswith(".gguf"):
            check_gguf(Path(m.name))
        limit = known_max_positions(m.name)
        if limit is not None and m.max_length > limit:
            raise ConfigError(f"model.max_length {m.max_length} is beyond {m.name}'s {limit} positions")
        d = cfg.data
        if d.partition == "natural" and not cls._is_chitchat(d):
            raise ConfigError("data.partition natural needs data with natural clients: data.name chitchat "
                              "(participants as clients); use iid or quantity")
        if cfg.attack.malicious_fraction > 0:
            raise ConfigError("the backdoor attack poisons classification labels; it does not apply to causal_lm")
        if not cls._is_chitchat(d):
            src = locate(d)  # refuses a file without the needed columns
            if d.partition in ("dirichlet", "shards") and src.kind != "classification":
                raise ConfigError(f"data.partition {d.partition} skews labels; instruction data has none "
                                  "(use iid or quantity)")
        elif d.partition in ("dirichlet", "shards"):
            raise ConfigError(f"data.partition {d.partition} skews labels; chitchat has none (use natural, iid or "
                              "quantity)")

    # -- data -------------------------------------------------------------------
    def load_data(self) -> Dataset:
        from fedmpi.data.sources import _cap

        d, o, seed = self.cfg.data, self.opts, self.cfg.seed
        choices: list[str] = []
        if self.kind == "chitchat":
            from fedmpi.data import chitchat

            conv = chitchat.read()
            train, test = chitchat.splits(conv, o.history_turns, o.test_participants)
            self.info.update(participants=len(conv.participants),
                             held_out_participants=int(len(np.unique(test.owners))))
        elif self.kind == "instructions":
            from fedmpi.data.instructions import load_instructions

            train, test = load_instructions(locate(d), o.test_fraction)
        else:
            from fedmpi.data.instructions import as_instructions, verbalisers
            from fedmpi.data.sources import load_dataset

            raw = load_dataset(dataclasses.replace(d, max_train_samples=None, max_test_samples=None), seed)
            choices = verbalisers(raw.label_names, o.verbalisers)
            train, test = (as_instructions(s, choices, o.instruction) for s in (raw.train, raw.test))
            self.info["verbalisers"] = choices
        # train: a seeded share; test: the same examples for every seed (seed spreads stay comparable)
        train, test = _cap(train, d.max_train_samples, seed, 1), _cap(test, d.max_test_samples, 0, 2)
        if len(train) == 0 or len(test) == 0:
            raise ConfigError(f"dataset '{d.name}' has an empty {'training' if len(train) == 0 else 'test'} split")
        test = test.subset(np.argsort([_chars(test, i) for i in range(len(test))], kind="stable"))  # less padding
        self.info.update(train_examples=len(train), test_examples=len(test))
        return Dataset(d.name, train, test, choices)

    def partition(self, dataset: Dataset) -> list[np.ndarray]:
        from fedmpi.data.partition import partition

        d, n, train = self.cfg.data, self.partition_clients(), dataset.train
        if d.partition == "natural":
            from fedmpi.data.chitchat import natural_partition

            p = natural_partition(train.owners, n, self.opts.min_client_samples, self.cfg.seed)
            self.info.update(participants_with_examples=p.participants, eligible_participants=p.eligible,
                             left_out_participants=p.participants - p.eligible)
            return p.parts
        labels = train.labels if train.labelled else np.zeros(len(train), dtype=np.int64)
        return partition(labels, n, d.partition, alpha=d.alpha, shards_per_client=d.shards_per_client,
                         seed=self.cfg.seed)

    def tokenizer(self) -> Any:
        if self._tok is None:
            from fedmpi.models.llm import load_tokenizer

            self._tok = load_tokenizer(self.cfg.model)
            self.prompt_format(self._tok)  # refuses chat without a template, now
        return self._tok

    def prompt_format(self, tokenizer: Any) -> PromptFormat:
        return PromptFormat(tokenizer, self.opts.prompt_format, self.opts.system)

    def encoder(self, tokenizer: Any) -> Callable[[Any], Any]:
        fmt, max_length = self.prompt_format(tokenizer), self.cfg.model.max_length
        return lambda split: LMEncoded(split, fmt, max_length)

    # -- model ---------------------------------------------------------------------
    def build_model(self, dataset: Dataset) -> nn.Module:
        from fedmpi.models.llm import build_llm

        return build_llm(self.cfg.model, self.cfg.seed, self.tokenizer())

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(**{k: batch[k] for k in MODEL_KEYS}).loss

    # -- scoring -------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
        model.eval()
        nll, tokens, correct, total = 0.0, 0, 0, 0
        for batch in batches:
            for start in range(0, int(batch["input_ids"].shape[0]), EVAL_ROWS):
                part = to_device({k: v[start:start + EVAL_ROWS] for k, v in batch.items()}, device)
                width = part["input_ids"].shape[1]
                logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits[:, -width:]
                s, n = reply_nll(logits, part["labels"])
                nll, tokens = nll + s, tokens + n
                if "class_label" in part:
                    correct += self._correct(model, part, logits, device)
                    total += int(part["class_label"].shape[0])
        loss = nll / max(1, tokens)
        out = {"eval_loss": loss, "perplexity": math.exp(min(loss, 700.0))}
        if total:
            out["accuracy"] = correct / total
        return out

    def _correct(self, model: nn.Module, part: Batch, logits: torch.Tensor, device: torch.device) -> int:
        """Rows whose gold verbaliser is the most likely reply. Single-token verbalisers
        are read off the logits at the prompt's end; longer ones are scored in full."""
        enc_choices = self._choice_ids()
        gold = part["class_label"].cpu()
        if all(len(c) == 1 for c in enc_choices):
            rows = torch.arange(logits.shape[0], device=logits.device)
            at = logits[rows, part["prompt_length"] - 1].float()
            scores = at[:, torch.as_tensor([c[0] for c in enc_choices], device=logits.device)].cpu()
        else:
            prompts = [ids[:int(pl)].tolist() for ids, pl in zip(part["input_ids"].cpu(), part["prompt_length"].cpu())]
            scores = choice_logliks(model, prompts, enc_choices, self.tokenizer().pad_token_id, device,
                                    self.cfg.model.max_length)
        return int((scores.argmax(-1) == gold).sum())

    def _choice_ids(self) -> list[list[int]]:
        """The verbalisers' tokens as they start a reply (without its end marker)."""
        if getattr(self, "_choice_cache", None) is None:
            tok = self.tokenizer()
            self._choice_cache = [tok(c, add_special_tokens=False)["input_ids"] for c in self.info["verbalisers"]]
        return self._choice_cache

    def generation_prompts(self, dataset: Dataset, k: int) -> tuple[list[str], list[list[int]]]:
        """The first k test prompts (fixed for the run), as text and as the token ids
        the model continues: what plugins/generations.py decodes at each evaluation."""
        fmt, test = self.prompt_format(self.tokenizer()), dataset.test
        prompts = [test.prompts[i] for i in range(min(k, len(test)))]
        return ([fmt.prompt_text(p) for p in prompts],
                [fit(fmt.prompt_ids(p), [], self.cfg.model.max_length)[0] for p in prompts])


def _chars(split: LMSplit, i: int) -> int:
    return len(split.responses[i]) + sum(len(m["content"]) for m in split.prompts[i])
