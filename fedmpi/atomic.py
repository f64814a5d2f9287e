"""Files written whole or not at all: a reader, or a resumed run, never sees half of one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO, Callable


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """`write(file)` into a temporary file, synced, then renamed over `path`: a reader
    (or a resumed run) sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save streamed to disk (no in-memory copy of a large checkpoint)."""
    atomic_write(path, lambda fh: _torch_save(obj, fh))


def _torch_save(obj: Any, fh: BinaryIO) -> None:
    import torch

    torch.save(obj, fh)
