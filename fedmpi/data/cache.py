"""Tokenised splits cached across runs, as Arrow files written by `datasets`.

A sweep runs the same data through the same tokenizer again and again, in
every rank of every run. The first `fedmpi launch` of a (data, tokenizer,
max_length) tokenises each split once with `datasets.Dataset.map` into an
Arrow file named by a fingerprint of exactly those inputs; every rank of that
run and of later runs memory-maps the file (no tokenising, no Python list per
sample) and takes each client's rows as a view.

The fingerprint covers the split's texts and labels, the tokenizer's files
and the versions of transformers and tokenizers, the max length and this
module's format version, so a changed input is a different file, never a
stale hit. `datasets` writes a map's output to a temporary file and renames
it, so concurrent jobs at worst tokenise twice and never read half a file.
Only the writer imports `datasets`; readers need pyarrow alone (which pandas
already brings).

`FEDMPI_CACHE` sets the folder (default ~/.cache/fedmpi); `off` disables it.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

import numpy as np

from fedmpi.data.splits import TextSplit

FORMAT = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "added_tokens.json")


def cache_dir() -> Path | None:
    where = os.environ.get("FEDMPI_CACHE", "")
    if where.lower() in ("off", "0", "none", "false"):
        return None
    return Path(where).expanduser() if where else Path.home() / ".cache" / "fedmpi"


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "-"


def tokenizer_fingerprint(folder: str | Path) -> str | None:
    """A digest of a local tokenizer's files (None: not a local folder with a tokenizer)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256(f"transformers={_version('transformers')};tokenizers={_version('tokenizers')}".encode())
    found = False
    for name in TOKENIZER_FILES:
        p = folder / name
        if p.is_file():
            found = True
            h.update(name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest() if found else None


def split_fingerprint(split: TextSplit) -> str:
    h = hashlib.sha256()
    for texts in (split.texts, split.texts_b or []):
        h.update(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)).tobytes())
        h.update("".join(texts).encode("utf-8", "surrogatepass"))
    h.update(np.ascontiguousarray(np.asarray(split.labels, dtype=np.int64)).tobytes())
    return h.hexdigest()


def key(split: TextSplit, tokenizer: str, max_length: int) -> str:
    """The file name of a split's encoding: every input that changes the ids."""
    parts = f"fedmpi-encoded-v{FORMAT};tok={tokenizer};max_length={max_length};split={split_fingerprint(split)}"
    return hashlib.sha256(parts.encode()).hexdigest()[:32]


def path_of(name: str) -> Path | None:
    root = cache_dir()
    return None if root is None else root / "encoded" / f"{name}.arrow"


def load(name: str):
    """The cached encoding `name` (memory-mapped), or None when it is not there."""
    path = path_of(name)
    if path is None or not path.is_file() or not path.with_suffix(".json").is_file():
        return None
    import pyarrow as pa

    from fedmpi.data.federated import Encoded

    try:
        pad_id = int(json.loads(path.with_suffix(".json").read_text())["pad_id"])
        with pa.memory_map(str(path)) as src:
            table = pa.ipc.open_stream(src).read_all()
        ids = table.column("input_ids").combine_chunks()
        types = table.column("token_type_ids").combine_chunks()
        labels = table.column("label").to_numpy()
        return Encoded.from_arrays(ids.values.to_numpy(), types.values.to_numpy(), ids.offsets.to_numpy(),
                                   labels, pad_id)
    except (OSError, KeyError, ValueError, TypeError, pa.ArrowException):  # unreadable: tokenise instead
        return None


def store(name: str, split: TextSplit, tokenizer, max_length: int) -> bool:
    """Tokenise `split` into the cache with `datasets` (atomic); False when caching is off."""
    path = path_of(name)
    if path is None:
        return False
    import datasets

    datasets.disable_progress_bars()
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {"text": split.texts, "label": np.asarray(split.labels, dtype=np.int64)}
    if split.texts_b is not None:
        columns["text_b"] = split.texts_b

    def tokenise(batch):
        enc = tokenizer(batch["text"], batch.get("text_b"), truncation=True, max_length=max_length,
                        padding=False, return_token_type_ids=True, return_attention_mask=False)
        return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}

    from fedmpi.atomic import atomic_write_bytes

    # The sidecar first: a reader takes the pair only once the Arrow file (renamed into place last) is there.
    atomic_write_bytes(path.with_suffix(".json"), json.dumps({"pad_id": tokenizer.pad_token_id or 0,
                                                              "rows": len(split)}).encode())
    ds = datasets.Dataset.from_dict(columns)
    ds.map(tokenise, batched=True, batch_size=2000, remove_columns=[c for c in columns if c != "label"],
           cache_file_name=str(path), new_fingerprint=name, features=datasets.Features({
               "label": datasets.Value("int64"),
               "input_ids": datasets.Sequence(datasets.Value("int32")),
               "token_type_ids": datasets.Sequence(datasets.Value("int8"))}))
    return True
