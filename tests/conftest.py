"""Shared fixtures: run fedmpi under real mpiexec, find ../shared/data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDMPI_SHARED_DATA", ROOT.parent / "shared" / "data"))
TINY = ROOT / "configs" / "tiny.yaml"


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    dir: Path

    @property
    def summary(self) -> dict:
        return json.loads((self.dir / "summary.json").read_text())

    @property
    def metrics(self) -> list[dict]:
        return [json.loads(x) for x in (self.dir / "metrics.jsonl").read_text().splitlines() if x.strip()]

    @property
    def ledger(self) -> list[dict]:
        return [json.loads(x) for x in (self.dir / "ledger.jsonl").read_text().splitlines() if x.strip()]


def launch(tmp_path: Path, ranks: int, *overrides: str, config: Path | str = TINY, name: str = "run",
           timeout: float = 300, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Run:
    """`fedmpi launch -n ranks config --set ...` with output under tmp_path."""
    sets = [f"output.dir={tmp_path}", f"name={name}", "output.progress=false", *overrides]
    cmd = [sys.executable, "-m", "fedmpi", "launch", "-n", str(ranks), str(config), *extra]
    for s in sets:
        cmd += ["--set", s]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                    **(env or {}))
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    return Run(proc, tmp_path / name)


def assert_ok(run: Run) -> None:
    assert run.proc.returncode == 0, f"fedmpi failed ({run.proc.returncode}):\n{run.proc.stdout[-3000:]}\n{run.proc.stderr[-6000:]}"


@pytest.fixture(scope="session")
def single_rank():
    """A one-rank gloo process group: enough for the server side of the Link
    and the Aggregator, in-process."""
    import torch
    import torch.distributed as dist

    from fedmpi.runtime import Runtime

    store = dist.FileStore(str(Path(tempfile.mkdtemp()) / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield Runtime(0, 1, 0, 1, "test", "gloo", torch.device("cpu"))
    dist.destroy_process_group()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found at {SHARED_DATA}: the real-dataset tests need it "
                    "(set FEDMPI_SHARED_DATA to its path)")
    return SHARED_DATA
