"""Each seam takes a plug-in written outside fedmpi, with no change to the engine:
a toy regression task, an fp16 codec and a trivial server strategy, all defined in
this file and named in the config as "module:Class" (every rank imports them)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pytest
import torch
from torch import nn

from conftest import assert_ok, launch
from fedmpi.data.splits import Dataset
from fedmpi.net.codec import Codec, CodecOptions
from fedmpi.options import option
from fedmpi.strategies.base import ServerOptions, ServerStrategy
from fedmpi.tasks.base import Task

pytestmark = pytest.mark.mpi
HERE = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": f"{HERE}:{HERE.parent}"}
DIM = 5


# -- a toy regression task -----------------------------------------------------------
@dataclass
class Points:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> "Points":
        return Points(self.x[idx], self.y[idx])


class Encoded:
    def __init__(self, p: Points) -> None:
        self.x, self.y = torch.as_tensor(p.x, dtype=torch.float32), torch.as_tensor(p.y, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(list(idx)), dtype=torch.long)
        return {"x": self.x[idx], "y": self.y[idx]}


class ToyRegression(Task):
    """y = x . w* + noise; a linear model; score: test mean squared error (lower is better)."""
    name = "toy-regression"
    score = "mse"
    higher_is_better = False

    def load_data(self) -> Dataset:
        rng = np.random.default_rng(7)
        w = rng.normal(size=DIM)
        x = rng.normal(size=(600, DIM))
        y = x @ w + 0.01 * rng.normal(size=600)
        return Dataset("toy", Points(x[:500], y[:500]), Points(x[500:], y[500:]), [])

    def partition(self, dataset: Dataset) -> list[np.ndarray]:
        return np.array_split(np.arange(len(dataset.train)), self.cfg.federation.num_clients)

    def tokenizer(self) -> Any:
        return None

    def encoder(self, tokenizer: Any):
        return Encoded

    def build_model(self, dataset: Dataset) -> nn.Module:
        torch.manual_seed(self.cfg.seed)
        return nn.Linear(DIM, 1)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.mse_loss(model(batch["x"]).squeeze(-1), batch["y"])

    def samples(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["y"].shape[0])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict], device: torch.device) -> dict[str, float]:
        err = n = 0.0
        for b in batches:
            err += float(((model(b["x"]).squeeze(-1) - b["y"]) ** 2).sum())
            n += len(b["y"])
        return {"mse": err / n}


# -- an fp16 codec ---------------------------------------------------------------------
@dataclass
class HalfOptions(CodecOptions):
    name: str = option("test_seams:Half")


class Half(Codec):
    """fp16 values, no header: half the bytes of fp32."""
    name = "half"
    Options = HalfOptions

    def encode(self, x: torch.Tensor, key) -> torch.Tensor:
        return x.detach().to(torch.float16).contiguous().view(torch.uint8).reshape(-1)

    def decode(self, wire: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return wire.view(torch.float16).to(like.dtype).reshape(like.shape)


# -- a trivial server strategy ------------------------------------------------------------
class KeepGlobal(ServerStrategy):
    """Ignores the clients: the global model never moves."""
    name = "keep"
    Options = ServerOptions

    def apply(self, params, mean, rnd) -> None:
        pass


TOY = ("task=test_seams:ToyRegression", "federation.num_clients=5", "federation.clients_per_round=3",
       "federation.rounds=4", "train.lr=0.05", "train.local_steps=10", "train.optimizer=sgd", "train.batch_size=10")


def test_a_task_plugs_in_without_touching_the_engine(tmp_path):
    run = launch(tmp_path, 2, *TOY, env=ENV)
    assert_ok(run)
    mse = [m["mse"] for m in run.metrics]
    assert mse[-1] < 0.2 * mse[0]  # it learns the linear map
    assert run.summary["best_mse"] == min(mse) and run.summary["final_mse"] == mse[-1]
    numel = DIM + 1  # weight + bias: the whole linear model trains and travels
    assert {r["bytes"] for r in run.ledger if r["kind"] in ("model", "update")} == {numel * 4}


def test_a_codec_plugs_in_and_its_bytes_are_charged(tmp_path):
    run = launch(tmp_path, 2, "transport.up.name=test_seams:Half", "federation.rounds=2", env=ENV)
    assert_ok(run)
    state = run.summary["trainable_params"]
    ups = [r for r in run.ledger if r["kind"] == "update"]
    downs = [r for r in run.ledger if r["kind"] == "model"]
    assert ups and all(r["bytes"] == state * 2 for r in ups)  # fp16 up
    assert all(r["bytes"] == state * 4 for r in downs)  # fp32 (identity) down


def test_a_server_strategy_plugs_in(tmp_path):
    run = launch(tmp_path, 2, *TOY, "strategy.server.name=test_seams:KeepGlobal", env=ENV)
    assert_ok(run)
    mse = {m["mse"] for m in run.metrics}
    assert len(mse) == 1  # the global model never changed, though clients trained
    assert all(m["loss"] > 0 for m in run.metrics)
