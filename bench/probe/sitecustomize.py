"""Start-up and round profile of any fedmpi tree, without changing it.

Put this folder first on PYTHONPATH with FEDMPI_PROBE=DIR set: every Python
process then appends (phase, seconds since the process was created) lines to
DIR/<pid>.jsonl, by wrapping fedmpi's own functions as their modules are
imported (bench/startup.py reads them). Wrapping costs a few microseconds per
call; only functions called a few times per round are wrapped.
"""
from __future__ import annotations

import importlib.abc
import json
import os
import sys
import time

_DIR = os.environ.get("FEDMPI_PROBE")


def _created() -> float:
    """This process's creation time (wall clock): now minus its age from /proc (uptime and
    start time in clock ticks; /proc/stat's btime is rounded to the second, so not from it)."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


if _DIR:
    _BORN = _created()
    _FH = None

    def _forked() -> None:  # a forked rank (fedmpi/forklaunch.py): its own file, born now
        global _BORN, _FH
        _BORN, _FH = time.time(), None

    os.register_at_fork(after_in_child=_forked)

    def mark(phase: str, **extra) -> None:
        global _FH
        if _FH is None:
            os.makedirs(_DIR, exist_ok=True)
            _FH = open(os.path.join(_DIR, f"{os.getpid()}.jsonl"), "a", buffering=1)
            _FH.write(json.dumps({"phase": "born", "t": 0.0, "at": _BORN, "argv": sys.argv[:3],
                                  "rank": os.environ.get("PMI_RANK", os.environ.get("RANK"))}) + "\n")
        _FH.write(json.dumps({"phase": phase, "t": round(time.time() - _BORN, 4), **extra}) + "\n")

    def _wrap(owner, name: str, label: str) -> None:
        fn = getattr(owner, name, None)
        if fn is None or getattr(fn, "_probed", False):
            return

        def wrapped(*args, **kwargs):
            mark(label + ":start")
            try:
                return fn(*args, **kwargs)
            finally:
                mark(label + ":end")

        wrapped._probed = True
        wrapped.__wrapped__ = fn
        setattr(owner, name, wrapped)

    _TARGETS = {
        "fedmpi.cli": [("cmd_launch", "launch"), ("launch_command", "spawn")],
        "fedmpi.runner": [("run_rank", "rank"), ("run_prepared", "rank_run"), ("import_model_code", "imports")],
        "fedmpi.gate": [("wait_at_gate", "gate")],
        "fedmpi.forklaunch": [("launch_forked", "forked"), ("supervise", "supervise")],
        "fedmpi.config": [("load_config", "config")],
        "fedmpi.experiment": [("preflight", "preflight"), ("prepare", "prepare"), ("build", "build")],
        "fedmpi.runtime": [("init_runtime", "init_runtime")],
        "fedmpi.tasks.classification": [("Classification.load_data", "load_data"),
                                        ("Classification.fill_cache", "fill_cache"),
                                        ("Classification.tokenizer", "tokenizer"),
                                        ("Classification.build_model", "build_model")],
        "fedmpi.models.methods": [("apply_method", "apply_method")],
        "fedmpi.engine.loop": [("SyncEngine.run_round", "round"), ("SyncEngine.evaluate", "evaluate"),
                               ("SyncEngine._download", "download")],
        "fedmpi.engine.aggregate": [("Aggregator.finish", "finish")],
    }

    def _patch(module) -> None:
        for dotted, label in _TARGETS.get(module.__name__, []):
            owner = module
            *path, name = dotted.split(".")
            for part in path:
                owner = getattr(owner, part, None)
            if owner is not None:
                _wrap(owner, name, label)
        if module.__name__ == "fedmpi.algorithms.fedavg":
            _wrap(module.FedAvg, "train_client", "client")

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname not in _TARGETS and fullname != "fedmpi.algorithms.fedavg":
                return None
            for finder in sys.meta_path:
                if finder is self:
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
            loader = spec.loader
            exec_module = loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _patch(module)

            loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, _Finder())
    import atexit

    atexit.register(lambda: mark("exit"))
    mark("python")
