"""The convert-once cache of models/llm.py, with fake converters (the real SmolLM2
conversion takes ~20 s): one conversion however many processes ask at once, the
others wait for it; never a partial folder, even when the converter fails or is
killed mid-way."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from fedmpi.models.llm import cache_root, cached

FORK = mp.get_context("fork")


def _slow_convert(out: Path) -> None:
    log = out.parent.parent / "conversions.log"
    with log.open("a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(0.5)  # long enough that every waiter arrives during the conversion
    (out / "weights.bin").write_bytes(b"x" * 1000)


def _ask(root: str, queue) -> None:
    path = cached("model", _slow_convert, Path(root))
    queue.put((str(path), (path / "weights.bin").stat().st_size))


def test_converts_once_then_reuses(tmp_path: Path) -> None:
    calls = []

    def convert(out: Path) -> None:
        calls.append(out)
        (out / "f").write_text("ok")

    root = tmp_path / "cache"
    first = cached("m", convert, root)
    second = cached("m", convert, root)
    assert first == second == root / "m" and len(calls) == 1
    assert (first / "f").read_text() == "ok"
    assert calls[0] != first  # written elsewhere, then renamed into place
    assert oct(first.stat().st_mode & 0o777) == "0o755"


def test_concurrent_processes_convert_once_and_the_others_wait(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    queue = FORK.Queue()
    procs = [FORK.Process(target=_ask, args=(str(root), queue)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    answers = [queue.get(timeout=5) for _ in procs]
    assert answers == [(str(root / "model"), 1000)] * 4  # every waiter saw the whole folder
    assert len((tmp_path / "conversions.log").read_text().split()) == 1


def test_a_failing_converter_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "cache"

    def broken(out: Path) -> None:
        (out / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        cached("m", broken, root)
    assert sorted(p.name for p in root.iterdir()) == [".m.lock"]  # no target, no temporary folder


def _killed_convert(out: Path) -> None:
    (out / "half.bin").write_bytes(b"x")
    time.sleep(60)


def test_a_killed_converter_leaves_no_cache_and_is_cleaned_up(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    proc = FORK.Process(target=cached, args=("m", _killed_convert, root))
    proc.start()
    deadline = time.time() + 20
    while not list(root.glob(".m.tmp-*/half.bin")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-conversion, like an OOM kill
    proc.join(10)
    assert not (root / "m").exists() and list(root.glob(".m.tmp-*"))
    path = cached("m", lambda out: (out / "f").write_text("ok"), root)  # the lock died with its holder
    assert (path / "f").read_text() == "ok" and not (path / "half.bin").exists()
    assert not list(root.glob(".m.tmp-*"))  # the dead converter's leftovers are gone


def test_cache_root_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDMPI_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("FEDMPI_CACHE")
    assert cache_root() == Path.home() / ".cache" / "fedmpi"
