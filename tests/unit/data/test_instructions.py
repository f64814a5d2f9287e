"""Instruction files and classification-as-instruction data: which kind a file is,
what is refused, and the prompts/answers they become."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedmpi.data.instructions import as_instructions, join_choices, load_instructions, locate, verbalisers
from fedmpi.data.splits import TextSplit
from fedmpi.errors import ConfigError


def _data(name: str, path: str | None = None, **kw) -> SimpleNamespace:
    base = dict(name=name, path=path, train_split="train", test_split=None, label_column="label", text_column=None)
    return SimpleNamespace(**{**base, **kw})


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ALPACA = [{"instruction": f"Add {i} and 1.", "input": "" if i % 2 else f"numbers: {i}, 1", "output": str(i + 1)}
          for i in range(10)]


def test_single_instruction_file_holds_out_a_fixed_share(tmp_path: Path) -> None:
    src = locate(_data(str(_jsonl(tmp_path / "alpaca.jsonl", ALPACA))))
    assert src.kind == "instructions" and src.test is None
    train, test = load_instructions(src, test_fraction=0.2)
    assert len(train) == 8 and len(test) == 2
    again = load_instructions(src, test_fraction=0.2)[1]
    assert list(test.responses) == list(again.responses)
    i = list(train.responses).index("1")  # row 0: with an input
    assert train.prompts[i] == [{"role": "user", "content": "Add 0 and 1.\n\nnumbers: 0, 1"}]
    j = list(train.responses).index("2")  # row 1: no input
    assert train.prompts[j] == [{"role": "user", "content": "Add 1 and 1."}]
    assert not train.labelled and (train.owners == -1).all()


def test_folder_with_train_and_test_csv(tmp_path: Path) -> None:
    import pandas as pd

    folder = tmp_path / "instr"
    folder.mkdir()
    pd.DataFrame(ALPACA[:6]).to_csv(folder / "train.csv", index=False)
    pd.DataFrame(ALPACA[6:]).drop(columns=["input"]).to_csv(folder / "test.csv", index=False)
    src = locate(_data("instr", str(tmp_path)))
    assert (src.kind, src.train.name, src.test.name) == ("instructions", "train.csv", "test.csv")
    train, test = load_instructions(src, 0.1)
    assert len(train) == 6 and list(test.responses) == ["7", "8", "9", "10"]


def test_missing_columns_are_refused(tmp_path: Path) -> None:
    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "hi", "completion": "there"}])
    with pytest.raises(ConfigError, match=r"needs `instruction` and `output` columns.*found \['prompt', 'completion'\]"):
        locate(_data(str(bad)))
    with pytest.raises(ConfigError, match="not found"):
        locate(_data("no-such-folder", str(tmp_path)))


def test_classification_folder_is_classification(tmp_path: Path) -> None:
    folder = tmp_path / "sst"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\ngood film ,1\nbad film ,0\n")
    (folder / "dev.csv").write_text("text,label\nfine ,1\n")
    src = locate(_data("sst", str(tmp_path)))
    assert src.kind == "classification" and src.test.name == "dev.csv"


def test_classification_as_instruction() -> None:
    names = ["not_entailment", "entailment"]
    assert verbalisers(names, None) == ["not entailment", "entailment"]
    assert verbalisers(names, ["no", "yes"]) == ["no", "yes"]
    with pytest.raises(ConfigError, match="2 classes"):
        verbalisers(names, ["no"])
    with pytest.raises(ConfigError, match="distinct"):
        verbalisers(names, ["x", "x"])
    assert join_choices(["negative", "positive"]) == "negative or positive"
    assert join_choices(["a", "b", "c"]) == "a, b or c"
    split = TextSplit(["a cat", "a dog"], np.array([1, 0]), ["a pet", "a cat"])
    lm = as_instructions(split, ["no", "yes"], "Same meaning, {choices}?")
    assert lm.prompts[0] == [{"role": "user", "content": "Same meaning, no or yes?\n\nSentence 1: a cat\nSentence 2: a pet"}]
    assert list(lm.responses) == ["yes", "no"]
    sub = lm.subset(np.array([1]))
    assert list(sub.responses) == ["no"] and sub.labels.tolist() == [0] and sub.choices == ["no", "yes"]
