"""Loading a task: the embedded set, a local folder of CSV/JSON/Parquet files
(../shared/data/<name> layout), or a Hugging Face `datasets` name when online."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedmpi.data.embedded import embedded_sentiment
from fedmpi.data.images import image_task
from fedmpi.data.splits import TEST_SPLITS, Dataset, TextSplit
from fedmpi.errors import ConfigError

_EXTS = (".csv", ".csv.gz", ".jsonl", ".json", ".parquet", ".tsv")


def _find_file(folder: Path, split: str) -> Path | None:
    for ext in _EXTS:
        p = folder / f"{split}{ext}"
        if p.is_file():
            return p
    return None


def _read_table(path: Path):
    try:
        return _read_table_raw(path)
    except (ValueError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise ConfigError(f"cannot read {path}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None


def _read_table_raw(path: Path):
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


def _to_split(frame, cfg, source: str) -> TextSplit:
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
    column = frame[cfg.label_column]
    try:
        labels = np.asarray(column, dtype=np.float64)
    except (TypeError, ValueError):
        bad = next((v for v in column if not _is_int(v)), None)
        raise ConfigError(f"{source}: label column '{cfg.label_column}' must hold integer class indices "
                          f"(found {bad!r}); map names to indices with a labels.json") from None
    if len(labels) and (not np.isfinite(labels).all() or (labels != np.round(labels)).any()):
        bad = float(next(v for v in labels if not (np.isfinite(v) and v == round(v))))
        raise ConfigError(f"{source}: label column '{cfg.label_column}' must hold integer class indices "
                          f"(found {bad!r})")
    labels = labels.astype(np.int64)
    return TextSplit([str(t) for t in frame[a]], labels, None if b is None else [str(t) for t in frame[b]])


def _is_int(v) -> bool:
    try:
        return float(v) == int(float(v))
    except (TypeError, ValueError, OverflowError):
        return False


def _local_folder(cfg) -> Path | None:
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
        try:
            names = json.loads(meta.read_text()).get("label")
        except (ValueError, AttributeError) as exc:
            raise ConfigError(f"{meta} is not a JSON mapping with a 'label' list: {exc}") from None
        if isinstance(names, list) and names:
            return [str(n) for n in names]
    return [str(i) for i in range(int(labels.max()) + 1)]


def _load_folder(folder: Path, cfg) -> Dataset:
    train_file = _find_file(folder, cfg.train_split)
    splits = [cfg.test_split] if cfg.test_split else list(TEST_SPLITS)
    test_file = next((f for f in (_find_file(folder, s) for s in splits) if f is not None), None)
    if test_file is None:
        raise ConfigError(f"dataset folder {folder}: no test split ({'/'.join(splits)}); set data.test_split")
    train = _to_split(_read_table(train_file), cfg, str(train_file))
    test = _to_split(_read_table(test_file), cfg, str(test_file))
    return Dataset(cfg.name, train, test, _label_names(folder, np.concatenate([train.labels, test.labels])))


def _load_hub(cfg) -> Dataset:
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
    test_name = cfg.test_split or next((s for s in TEST_SPLITS if s in dd), None)
    if cfg.train_split not in dd or test_name is None:
        raise ConfigError(f"hub dataset '{cfg.name}' has splits {list(dd)}; set data.train_split/test_split")
    train = _to_split(dd[cfg.train_split].to_pandas(), cfg, cfg.name)
    test = _to_split(dd[test_name].to_pandas(), cfg, cfg.name)
    feat = dd[cfg.train_split].features.get(cfg.label_column)
    names = list(getattr(feat, "names", []) or [])
    return Dataset(cfg.name, train, test, names or [str(i) for i in range(int(train.labels.max()) + 1)])


def _cap(split: TextSplit, limit: int | None, seed: int, salt: int) -> TextSplit:
    if limit is None or limit >= len(split):
        return split
    idx = np.sort(np.random.default_rng([seed, salt]).permutation(len(split))[:limit])
    return split.subset(idx)


def check_labels(task: Dataset) -> None:
    """Every label must index a label name (labels.json, or 0..max)."""
    for split, part in (("train", task.train), ("test", task.test)):
        labels = np.asarray(part.labels)
        if len(labels) and (labels.min() < 0 or labels.max() >= task.num_labels):
            bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
            raise ConfigError(f"dataset '{task.name}': {split} label {bad} is outside the {task.num_labels} "
                              f"label names ({', '.join(task.label_names[:6])}{', ...' if task.num_labels > 6 else ''})")


def load_dataset(cfg, seed: int) -> Dataset:
    """Load train/test splits; deterministic in the seed (never in the rank)."""
    if cfg.name == "embedded" and not cfg.path:
        tr_x, tr_y, te_x, te_y, names = embedded_sentiment()
        task = Dataset("embedded", TextSplit(tr_x, np.asarray(tr_y)), TextSplit(te_x, np.asarray(te_y)), names)
    elif (images := image_task(cfg, seed)) is not None:  # mnist idx files or class-per-folder images
        task = images
    else:
        folder = _local_folder(cfg)
        task = _load_folder(folder, cfg) if folder is not None else _load_hub(cfg)
    task.train = _cap(task.train, cfg.max_train_samples, seed, 1)
    task.test = _cap(task.test, cfg.max_test_samples, seed, 2)
    if cfg.validation_fraction > 0:  # held out of training; scored instead of the test split if asked
        n = len(task.train)
        k = min(n - 1, max(1, round(n * cfg.validation_fraction)))
        order = np.random.default_rng([seed, 3]).permutation(n)
        validation = task.train.subset(np.sort(order[:k]))
        task.train = task.train.subset(np.sort(order[k:]))
        if cfg.evaluate == "validation":
            task.test = validation
    if len(task.train) == 0:
        raise ConfigError(f"dataset '{cfg.name}' has an empty training split")
    if len(task.test) == 0:
        raise ConfigError(f"dataset '{cfg.name}' has an empty test split")
    check_labels(task)
    return task
