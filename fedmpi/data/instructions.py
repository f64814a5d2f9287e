"""Prompt -> response data for the causal-LM task: the split type, local
instruction files (Alpaca-style `instruction` / `input` / `output`), and
classification sets recast as instructions (the answer is the label's name).

A split keeps its prompts as chat messages ({"role", "content"}); how they are
rendered (a model's chat template, or a plain `### Instruction:` format) is the
task's encoder's business, so one split serves every model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fedmpi.errors import ConfigError

Messages = list[dict[str, str]]
INSTRUCTION_COLUMNS = ("instruction", "output")  # `input` is optional
TEXT_COLUMNS = (("text",), ("text_a", "text_b"), ("sentence1", "sentence2"), ("sentence",))
FILE_EXTS = (".jsonl", ".json", ".csv", ".csv.gz", ".tsv", ".parquet")


class Lazy(Sequence):
    """Rows computed on access: a large split stays a few integer arrays until a
    client's batch needs its examples (chitchat has ~130k of them per rank)."""

    def __init__(self, get: Callable[[int], Any], index: np.ndarray) -> None:
        self.get = get
        self.index = np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):  # type: ignore[override]
        return self.get(int(self.index[i]))

    def take(self, idx: np.ndarray) -> "Lazy":
        return Lazy(self.get, self.index[np.asarray(idx, dtype=np.int64)])


def _take(rows: Sequence, idx: np.ndarray) -> Sequence:
    return rows.take(idx) if isinstance(rows, Lazy) else [rows[int(i)] for i in idx]


@dataclass
class LMSplit:
    """Examples of a causal-LM task: the conversation so far and the reply to learn."""
    prompts: Sequence[Messages]
    responses: Sequence[str]
    owners: np.ndarray  # int64: each example's natural client (chitchat participant), -1 if none
    labels: np.ndarray  # int64: the class of a classification-as-instruction example, -1 otherwise
    choices: list[str] = field(default_factory=list)  # verbalisers: responses[i] == choices[labels[i]]

    def __len__(self) -> int:
        return len(self.responses)

    def subset(self, idx: np.ndarray) -> "LMSplit":
        idx = np.asarray(idx, dtype=np.int64)
        return LMSplit(_take(self.prompts, idx), _take(self.responses, idx), self.owners[idx], self.labels[idx],
                       self.choices)

    @property
    def labelled(self) -> bool:
        return bool(self.choices)


def user_prompt(instruction: str, text: str = "") -> Messages:
    content = instruction.strip() if not text.strip() else f"{instruction.strip()}\n\n{text.strip()}"
    return [{"role": "user", "content": content}]


# -- locating files -----------------------------------------------------------------
def find_table(folder: Path, split: str) -> Path | None:
    for ext in FILE_EXTS:
        p = folder / f"{split}{ext}"
        if p.is_file():
            return p
    return None


def columns_of(path: Path) -> list[str]:
    """The column names of a table file, read cheaply (header or first record)."""
    import json

    import pandas as pd

    name = path.name
    try:
        if name.endswith(".jsonl"):
            with path.open() as fh:
                first = next((line for line in fh if line.strip()), "{}")
            return list(json.loads(first))
        if name.endswith((".csv", ".csv.gz")):
            return list(pd.read_csv(path, nrows=0).columns)
        if name.endswith(".tsv"):
            return list(pd.read_csv(path, sep="\t", nrows=0, quoting=3).columns)
        from fedmpi.data.sources import _read_table

        return list(_read_table(path).columns)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"cannot read {path}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None


@dataclass
class Source:
    """Where a prompt/response dataset's files are and what kind they hold."""
    kind: str  # "instructions" | "classification"
    train: Path
    test: Path | None  # None: hold out a seeded share of `train`
    folder: Path | None  # a ../shared/data-style folder (labels.json), for classification


def locate(data) -> Source:
    """The train (and test) file of data.name (under data.path if given): a folder
    with train/test files, or one file. Its columns say the kind: instruction and
    output -> instructions; a text and a label column -> classification as
    instruction. Anything else is refused here, before any rank starts."""
    from fedmpi.data.splits import TEST_SPLITS

    bases = [Path(data.path) / data.name, Path(data.path)] if data.path else [Path(data.name)]
    train = test = folder = None
    for base in bases:
        if base.is_file():
            train = base
            break
        if base.is_dir() and find_table(base, data.train_split):
            folder, train = base, find_table(base, data.train_split)
            splits = [data.test_split] if data.test_split else list(TEST_SPLITS)
            test = next((f for f in (find_table(base, s) for s in splits) if f is not None), None)
            break
    if train is None:
        raise ConfigError(f"dataset '{data.name}' not found: no {data.train_split} file "
                          f"({'/'.join(FILE_EXTS)}) in " + " or ".join(str(b) for b in bases)
                          + "; the causal_lm task reads data.name: chitchat, a local instruction file/folder, "
                            "or a classification folder")
    cols = columns_of(train)
    if all(c in cols for c in INSTRUCTION_COLUMNS):
        kind = "instructions"
    elif data.label_column in cols and (data.text_column in cols if data.text_column
                                        else any(all(c in cols for c in group) for group in TEXT_COLUMNS)):
        kind = "classification"
    else:
        raise ConfigError(f"{train}: the causal_lm task needs `instruction` and `output` columns (`input` optional; "
                          f"Alpaca-style) or a text column and a '{data.label_column}' label column "
                          f"(classification as instruction); found {cols}")
    if test is not None and kind == "instructions":
        missing = [c for c in INSTRUCTION_COLUMNS if c not in columns_of(test)]
        if missing:
            raise ConfigError(f"{test}: no {missing} column(s) (columns: {columns_of(test)})")
    return Source(kind, train, test, folder)


# -- instruction files --------------------------------------------------------------
def _instruction_split(frame, where: str) -> LMSplit:
    cols = list(frame.columns)
    missing = [c for c in INSTRUCTION_COLUMNS if c not in cols]
    if missing:
        raise ConfigError(f"{where}: no {missing} column(s) (columns: {cols})")
    inputs = [str(x) for x in frame["input"]] if "input" in cols else [""] * len(frame)
    prompts = [user_prompt(str(i), x) for i, x in zip(frame["instruction"], inputs)]
    n = len(prompts)
    return LMSplit(prompts, [str(o) for o in frame["output"]], np.full(n, -1, np.int64), np.full(n, -1, np.int64))


def holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: a fixed-seed share `fraction` of n rows held out (at least one)."""
    perm = np.random.default_rng([seed, 0x7E57]).permutation(n)
    k = max(1, int(round(n * fraction)))
    return np.sort(perm[k:]), np.sort(perm[:k])


def load_instructions(src: Source, test_fraction: float) -> tuple[LMSplit, LMSplit]:
    from fedmpi.data.sources import _read_table

    train = _instruction_split(_read_table(src.train), str(src.train))
    if src.test is not None:
        return train, _instruction_split(_read_table(src.test), str(src.test))
    if len(train) < 2:
        raise ConfigError(f"{src.train}: {len(train)} example(s); an instruction file needs at least 2 "
                          "(one is held out for evaluation)")
    tr, te = holdout(len(train), test_fraction, 0)
    return train.subset(tr), train.subset(te)


# -- classification as instruction --------------------------------------------------
def verbalisers(label_names: list[str], given: list[str] | None) -> list[str]:
    """The answer text of each class: given, else the label names (underscores as spaces)."""
    if given:
        if len(given) != len(label_names):
            raise ConfigError(f"task_options.verbalisers has {len(given)} entries for {len(label_names)} classes "
                              f"({', '.join(label_names)})")
        out = [str(v) for v in given]
    else:
        out = [n.replace("_", " ") for n in label_names]
    if len(set(out)) != len(out) or not all(v.strip() for v in out):
        raise ConfigError(f"verbalisers must be distinct and non-empty, got {out}")
    return out


def join_choices(choices: list[str]) -> str:
    """"a or b", "a, b or c": how an instruction names the answers."""
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def as_instructions(split, choices: list[str], instruction: str) -> LMSplit:
    """A TextSplit (text [, text_b], label) as prompts whose answer is the label's verbaliser."""
    texts, texts_b, labels = split.texts, split.texts_b, np.asarray(split.labels, dtype=np.int64)
    head = instruction.replace("{choices}", join_choices(choices))

    def prompt(i: int) -> Messages:
        body = texts[i] if texts_b is None else f"Sentence 1: {texts[i].strip()}\nSentence 2: {texts_b[i].strip()}"
        return user_prompt(head, body)

    index = np.arange(len(labels))
    return LMSplit(Lazy(prompt, index), Lazy(lambda i: choices[labels[i]], index), np.full(len(labels), -1, np.int64),
                   labels, list(choices))
