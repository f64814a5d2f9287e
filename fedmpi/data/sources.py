"""Loading a task: the embedded set, a local folder of CSV/JSON/Parquet files
(../shared/data/<name> layout), or a Hugging Face `datasets` name when online."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmpi.config import ConfigError, DataConfig
from fedmpi.data.embedded import embedded_sentiment
from fedmpi.data.images import image_task

_EXTS = (".csv", ".csv.gz", ".jsonl", ".json", ".parquet", ".tsv")
_TEST_SPLITS = ("test", "dev", "validation", "valid")


@dataclass
class TextSplit:
    texts: list[str]
    labels: np.ndarray  # int64
    texts_b: list[str] | None = None  # second sentence of pair tasks

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: np.ndarray) -> "TextSplit":
        return TextSplit([self.texts[i] for i in idx], self.labels[idx],
                         None if self.texts_b is None else [self.texts_b[i] for i in idx])


@dataclass
class Task:
    name: str
    train: TextSplit
    test: TextSplit
    label_names: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def _find_file(folder: Path, split: str) -> Path | None:
    for ext in _EXTS:
        p = folder / f"{split}{ext}"
        if p.is_file():
            return p
    return None


def _read_table(path: Path):
    import pandas as pd

    name = path.name
    if name.endswith((".csv", ".csv.gz")):
        return pd.read_csv(path, keep_default_na=False)
    if name.endswith(".tsv"):
        return pd.read_csv(path, sep="\t", keep_default_na=False, quoting=3)
    if name.endswith(".jsonl"):
        return pd.read_json(path, lines=True)
    if name.endswith(".json"):
        return pd.read_json(path)
    return pd.read_parquet(path)


def _to_split(frame, cfg: DataConfig, source: str) -> TextSplit:
    cols = list(frame.columns)
    if cfg.label_column not in cols:
        raise ConfigError(f"{source}: no label column '{cfg.label_column}' (columns: {cols})")
    if cfg.text_column:
        if cfg.text_column not in cols:
            raise ConfigError(f"{source}: no text column '{cfg.text_column}' (columns: {cols})")
        a, b = cfg.text_column, None
    elif "text" in cols:
        a, b = "text", None
    elif "text_a" in cols and "text_b" in cols:
        a, b = "text_a", "text_b"
    elif "sentence1" in cols and "sentence2" in cols:
        a, b = "sentence1", "sentence2"
    elif "sentence" in cols:
        a, b = "sentence", None
    else:
        raise ConfigError(f"{source}: cannot tell the text column (columns: {cols}); set data.text_column")
    labels = np.asarray(frame[cfg.label_column], dtype=np.int64)
    return TextSplit([str(t) for t in frame[a]], labels, None if b is None else [str(t) for t in frame[b]])


def _local_folder(cfg: DataConfig) -> Path | None:
    candidates = []
    if cfg.path:
        base = Path(cfg.path)
        candidates += [base / cfg.name, base]
    else:
        candidates.append(Path(cfg.name))
    for c in candidates:
        if c.is_dir() and _find_file(c, cfg.train_split):
            return c
    if cfg.path:
        raise ConfigError(f"dataset '{cfg.name}' not found: no {cfg.train_split}.csv (or .jsonl/.parquet) in "
                          + " or ".join(str(c) for c in candidates))
    return None


def _label_names(folder: Path, labels: np.ndarray) -> list[str]:
    meta = folder / "labels.json"
    if meta.is_file():
        names = json.loads(meta.read_text()).get("label")
        if isinstance(names, list) and names:
            return [str(n) for n in names]
    return [str(i) for i in range(int(labels.max()) + 1)]


def _load_folder(folder: Path, cfg: DataConfig) -> Task:
    train_file = _find_file(folder, cfg.train_split)
    splits = [cfg.test_split] if cfg.test_split else list(_TEST_SPLITS)
    test_file = next((f for f in (_find_file(folder, s) for s in splits) if f is not None), None)
    if test_file is None:
        raise ConfigError(f"dataset folder {folder}: no test split ({'/'.join(splits)}); set data.test_split")
    train = _to_split(_read_table(train_file), cfg, str(train_file))
    test = _to_split(_read_table(test_file), cfg, str(test_file))
    return Task(cfg.name, train, test, _label_names(folder, np.concatenate([train.labels, test.labels])))


def _load_hub(cfg: DataConfig) -> Task:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"dataset '{cfg.name}' is not a local folder and the `datasets` package is not "
                          "installed to fetch it from the hub (pip install datasets), or set data.path") from None
    try:
        dd = datasets.load_dataset(cfg.name)
    except Exception as exc:  # offline, unknown name, ...
        raise ConfigError(f"dataset '{cfg.name}' is not a local folder and could not be loaded from the hub: "
                          f"{type(exc).__name__}: {exc}") from None
    test_name = cfg.test_split or next((s for s in _TEST_SPLITS if s in dd), None)
    if cfg.train_split not in dd or test_name is None:
        raise ConfigError(f"hub dataset '{cfg.name}' has splits {list(dd)}; set data.train_split/test_split")
    train = _to_split(dd[cfg.train_split].to_pandas(), cfg, cfg.name)
    test = _to_split(dd[test_name].to_pandas(), cfg, cfg.name)
    feat = dd[cfg.train_split].features.get(cfg.label_column)
    names = list(getattr(feat, "names", []) or [])
    return Task(cfg.name, train, test, names or [str(i) for i in range(int(train.labels.max()) + 1)])


def _cap(split: TextSplit, limit: int | None, seed: int, salt: int) -> TextSplit:
    if limit is None or limit >= len(split):
        return split
    idx = np.sort(np.random.default_rng([seed, salt]).permutation(len(split))[:limit])
    return split.subset(idx)


def load_task(cfg: DataConfig, seed: int) -> Task:
    """Load train/test splits; deterministic in the seed (never in the rank)."""
    if cfg.name == "embedded" and not cfg.path:
        tr_x, tr_y, te_x, te_y, names = embedded_sentiment()
        task = Task("embedded", TextSplit(tr_x, np.asarray(tr_y)), TextSplit(te_x, np.asarray(te_y)), names)
    elif (images := image_task(cfg, seed)) is not None:  # mnist idx files or class-per-folder images
        task = images
    else:
        folder = _local_folder(cfg)
        task = _load_folder(folder, cfg) if folder is not None else _load_hub(cfg)
    task.train = _cap(task.train, cfg.max_train_samples, seed, 1)
    task.test = _cap(task.test, cfg.max_test_samples, seed, 2)
    if len(task.train) == 0:
        raise ConfigError(f"dataset '{cfg.name}' has an empty training split")
    return task
