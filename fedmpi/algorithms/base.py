"""The algorithm contract: the round loop (in experiment.py) calls these hooks.

An algorithm reads as the few steps that make it different; the Link, the
Ledger, sampling, evaluation and checkpoints live underneath.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fedmpi.algorithms.local import evaluate

if TYPE_CHECKING:
    from fedmpi.config import ExperimentConfig
    from fedmpi.experiment import Experiment


class Algorithm:
    name = "base"

    def __init__(self, exp: "Experiment") -> None:
        self.exp = exp

    @classmethod
    def check(cls, cfg: "ExperimentConfig") -> None:
        """Refuse bad options with a ConfigError, from the config alone.

        Called by the launcher and by every rank before the process group
        exists: an error raised once ranks are connected has to abort MPI,
        which can swallow the message."""

    def setup(self) -> None:
        """One-off work before round 0 (collective: called on every rank)."""

    def run_round(self, rnd: int, sampled: list[int]) -> dict[int, dict[str, float]]:
        """Run one round on every rank; the server returns per-client stats
        (num_samples, loss_sum, flops, seconds, arrived, server_flops)."""
        raise NotImplementedError

    def eval_model(self) -> torch.nn.Module:
        """The global model the server evaluates."""
        return self.exp.model

    def evaluate(self) -> dict[str, float]:
        """Server only: accuracy and loss on the test split, plus any evaluator's metrics."""
        exp = self.exp
        model = self.eval_model()
        out = evaluate(model, exp.data.test_batches(exp.cfg.train.eval_batch_size), exp.rt.device)
        for extra in exp.evaluators:
            out.update(extra(model))
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Server's global state, enough to resume exactly."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def report(self) -> dict[str, object]:
        """Extra summary fields (trainable parameters, bytes per client, ...)."""
        return {}
