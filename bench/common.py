"""Helpers shared by the benchmarks: launching fedmpi, timing a process tree
with its peak memory, the machine's description, and markdown tables.

Benchmarks compare ratios measured side by side in one run (interleaved),
never absolute seconds: the machines they run on are shared and noisy.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
PY = sys.executable
# OMP_WAIT_POLICY=PASSIVE: OpenMP threads that spin-wait are catastrophic on a shared,
# oversubscribed machine (a 2-thread plain loop ran >5x slower than 1 thread here).
ENV = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}

# The compute-bound workload of issue 7: a small transformer, 100 clients,
# 10 per round, 5 local steps (rounds set by the caller), evaluated every round as
# users do (issue 16: skipping evaluation hid the server's time while clients wait).
COMPUTE_BOUND = ("model.name=tiny-bert", "model.hidden_size=128", "model.num_layers=4", "model.num_heads=4",
                 "model.intermediate_size=512", "model.max_length=48", "data.name=embedded", "data.max_train_samples=null",
                 "federation.num_clients=100", "federation.clients_per_round=10", "train.local_steps=5",
                 "train.batch_size=16", "train.lr=0.0005", "federation.eval_every=1")
# The overhead-bound workload: the tiny test model, 1000 clients, short rounds.
OVERHEAD_BOUND = ("model.name=tiny-bert", "model.max_length=32", "data.name=embedded", "data.max_train_samples=null",
                  "federation.num_clients=1000", "federation.clients_per_round=20", "train.local_steps=1",
                  "train.batch_size=16", "federation.eval_every=1000")


# The "before" columns: the engine branch as it was before issue 16 (start-up, per-round
# placement, evaluation overlapped with training, per-client costs). `--before REF` overrides.
BEFORE_REF = "8e50674"
_TREES: dict[str, Path] = {}
# Set by run_all --lock: every measured run holds this lock (flock(2), the same lock as
# `flock FILE cmd`), so other jobs on a shared machine run between runs, never during one.
LOCK: str | None = os.environ.get("BENCH_LOCK") or None


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, **ENV, **extra}


@dataclass
class Measured:
    """A finished process tree: wall time, peak summed memory (PSS, else RSS) of all its
    processes, and the machine's 1-minute load average as it started."""
    returncode: int
    wall: float
    peak_rss: int
    stdout: str
    stderr: str
    cmd: list[str] = field(default_factory=list)
    load: float = 0.0

    def check(self) -> "Measured":
        if self.returncode != 0:
            raise RuntimeError(f"command failed ({self.returncode}): {shlex.join(self.cmd)}\n"
                               f"{self.stdout[-2000:]}\n{self.stderr[-4000:]}")
        return self


def tree(ref: str | None) -> Path:
    """The source tree to run fedmpi from: this checkout (None), or `git archive REF` unpacked
    once into a temporary folder. Both are byte-compiled first, so neither pays for compiling
    fedmpi in every process (this machine sets PYTHONDONTWRITEBYTECODE)."""
    import compileall

    key = ref or ""
    if key not in _TREES:
        if ref is None:
            path = ROOT
        else:
            path = Path(tempfile.mkdtemp(prefix=f"bench_tree_{ref[:12]}_"))
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(path)], input=archive.stdout, check=True)
        compileall.compile_dir(str(path / "fedmpi"), quiet=1)
        compileall.compile_dir(str(path / "bench"), quiet=1)
        _TREES[key] = path
    return _TREES[key]


class _Lock:
    """LOCK around measured runs, held across consecutive runs for up to HOLD_S and then
    given up after the run that passes it: the other jobs of a shared machine get their
    turn every few minutes, and no run is ever measured while one of them runs."""
    HOLD_S = 180.0
    fh = None
    since = 0.0

    def __enter__(self):
        cls = type(self)
        if LOCK and cls.fh is None:
            import fcntl

            cls.fh = open(LOCK, "a")
            fcntl.flock(cls.fh, fcntl.LOCK_EX)
            cls.since = time.perf_counter()
        return self

    def __exit__(self, *exc):
        cls = type(self)
        if cls.fh is not None and time.perf_counter() - cls.since > cls.HOLD_S:
            cls.fh.close()  # releases the lock
            cls.fh = None


def run_measured(cmd: Sequence[str], *, extra_env: dict[str, str] | None = None, timeout: float = 900,
                 cwd: Path = ROOT, poll: float = 0.2) -> Measured:
    """Run cmd (holding LOCK, when set); wall clock from spawn to exit (start-up included), and the
    peak of the summed RSS of the whole process tree, sampled every `poll` s (coarse: the sampler
    must not load the machine it measures). `cwd` is also first on PYTHONPATH: the tree measured."""
    with _Lock():
        load = os.getloadavg()[0]
        m = _run_measured(cmd, extra_env={"PYTHONPATH": str(cwd), **(extra_env or {})}, timeout=timeout,
                          cwd=cwd, poll=poll)
        m.load = load
        return m


def _pss(p) -> int:
    """A process's proportional set size (each shared page split between its sharers), else
    its RSS. Summed over a process tree, RSS counts a page once per process mapping it: ranks
    forked from one prepared parent (fedmpi launch) or Ray's workers would look N times their size."""
    try:
        return p.memory_full_info().pss
    except Exception:  # noqa: BLE001 - no smaps here, or not ours to read: RSS
        return p.memory_info().rss


def _run_measured(cmd: Sequence[str], *, extra_env: dict[str, str], timeout: float, cwd: Path,
                  poll: float) -> Measured:
    import psutil

    cmd = [str(c) for c in cmd]
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env(**(extra_env or {})), stdout=out, stderr=err, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            total = 0
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                break
            for p in procs:
                try:
                    total += _pss(p)
                except psutil.Error:
                    pass
            peak = max(peak, total)
            stop.wait(poll)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    out.seek(0)
    err.seek(0)
    return Measured(rc, wall, peak, out.read(), err.read(), cmd)


def fedmpi_cmd(ranks: int, outdir: Path, name: str, *sets: str, config: Path = TINY) -> list[str]:
    """The exact user command: `python -m fedmpi launch -n R config --set ...`."""
    cmd = [PY, "-m", "fedmpi", "launch", "-n", str(ranks), str(config)]
    for s in (f"output.dir={outdir}", f"name={name}", "output.progress=false", *sets):
        cmd += ["--set", s]
    return cmd


def mpi_cmd(ranks: int, module: str, *args: str) -> list[str]:
    """A bench worker module under the bundled mpiexec."""
    from fedmpi.cli import find_mpiexec, launch_command

    mpiexec = find_mpiexec(None)
    cmd, _ = launch_command(mpiexec, ranks, [])
    head = cmd[: cmd.index(PY)] if PY in cmd else [mpiexec, "-n", str(ranks)]
    return head + [PY, "-m", module, *args]


def read_run(run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {"summary": summary, "metrics": metrics}


def shown(cmd: Sequence[str]) -> str:
    """A command as a reader would type it (repo-relative paths, `python`)."""
    parts = []
    for c in cmd:
        c = str(c)
        if c == PY:
            c = "python"
        elif c.startswith(str(ROOT) + "/"):
            c = c[len(str(ROOT)) + 1:]
        elif "=" in c and str(ROOT) in c:
            c = c.replace(str(ROOT) + "/", "")
        elif c.endswith("/mpiexec"):
            c = "mpiexec"
        parts.append(c)
    return shlex.join(parts)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def machine() -> dict[str, str]:
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "torch": torch.__version__,
            "python": platform.python_version(), "os": platform.platform(), "load (1/5/15 min)": load}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass
class Section:
    """One benchmark's result: a markdown body and its headline figures."""
    title: str
    body: str
    figures: dict[str, Any] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        cmds = "\n".join(self.commands)
        out = f"## {self.title}\n\n{self.body}\n"
        if cmds:
            out += f"\nCommands (one repetition):\n\n```\n{cmds}\n```\n"
        return out


def verdict(value: float, target: float, lower_is_better: bool = True) -> str:
    ok = value <= target if lower_is_better else value >= target
    return "meets target" if ok else "MISSES target"


def usage(argv: list[str], doc: str) -> bool:
    """True (after printing `doc`) for -h/--help; exits with `doc` when a
    one-run invocation lacks CONFIG OUT."""
    if argv[:1] in (["-h"], ["--help"]):
        print(doc)
        return True
    if not argv or (argv[0] != "--bench" and len(argv) < 2):
        raise SystemExit(doc)
    return False
