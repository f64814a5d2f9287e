"""Experiment trackers as engine callbacks: every metrics row also goes to TensorBoard
event files or to an MLflow run, inside the run folder (nothing leaves the machine).

`output.tracker: tensorboard` writes `<run>/tensorboard/` (view with `tensorboard
--logdir runs`); `output.tracker: mlflow` logs into `sqlite:///<run>/mlflow.db`, MLflow's
current local store (the ./mlruns file store is deprecated), with artifacts under
`<run>/mlartifacts/` (view with `mlflow ui --backend-store-uri sqlite:///runs/NAME/mlflow.db`).
A resumed run continues the same MLflow run and drops the TensorBoard events from the
resumed round on, so either shows each round once.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from fedmpi.config import dotted_keys
from fedmpi.engine.callbacks import Callback
from fedmpi.errors import ConfigError

NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny sqlalchemy alembic")}


def check(kind: str | None) -> None:
    """Before any rank starts: the tracker's package must be importable."""
    if kind is None:
        return
    module, packages = NEEDS[kind]
    missing = [m for m in ([module] + (["sqlalchemy", "alembic"] if kind == "mlflow" else []))
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"output.tracker: {kind} needs {', '.join(missing)}: "
                          f"pip install {packages} (or pip install -e '.[tracking]')")


def numeric(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The row's numbers, nested mappings flattened (bytes_by_kind/update, ...)."""
    out: dict[str, float] = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(numeric(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:  # skip NaN
            out[f"{prefix}{k}"] = float(v)
    return out


class TensorBoardTracker(Callback):
    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir) / "tensorboard"
        self.writer = None

    def on_round_end(self, rnd: int, row: dict[str, Any]) -> None:
        if self.writer is None:  # the first round this job runs: earlier events of a resumed run stay
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.dir), purge_step=rnd)
        for key, value in numeric(row).items():
            if key != "round":
                self.writer.add_scalar(key, value, rnd)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflowTracker(Callback):
    def __init__(self, run_dir: Path, name: str, params: dict[str, Any]) -> None:
        self.dir, self.name, self.params = Path(run_dir), name, params
        self.run = None

    def _start(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{self.dir.resolve() / 'mlflow.db'}")
        id_file = self.dir / "mlflow_run_id"
        if id_file.is_file():  # a resumed run continues its MLflow run
            self.run = mlflow.start_run(run_id=id_file.read_text().strip())
            return
        exp = mlflow.get_experiment_by_name(self.name) or mlflow.get_experiment(
            mlflow.create_experiment(self.name, artifact_location=(self.dir / "mlartifacts").resolve().as_uri()))
        self.run = mlflow.start_run(experiment_id=exp.experiment_id, run_name=self.name)
        id_file.write_text(self.run.info.run_id + "\n")
        mlflow.log_params({k: str(v)[:500] for k, v in self.params.items()})

    def on_round_end(self, rnd: int, row: dict[str, Any]) -> None:
        import mlflow

        if self.run is None:
            self._start()
        mlflow.log_metrics({k.replace("/", "."): v for k, v in numeric(row).items() if k != "round"}, step=rnd)

    def on_end(self, summary: dict[str, Any]) -> None:
        import mlflow

        if self.run is not None:
            mlflow.log_metrics({f"summary.{k}".replace("/", "."): v for k, v in numeric(summary).items()})
            config = self.dir / "config.yaml"
            if config.is_file():
                mlflow.log_artifact(str(config))

    def close(self) -> None:
        if self.run is not None:
            import mlflow

            mlflow.end_run()
            self.run = None


def make_tracker(cfg: Any, run_dir: Path) -> Callback:
    if cfg.output.tracker == "tensorboard":
        return TensorBoardTracker(run_dir)
    return MLflowTracker(run_dir, cfg.name, dotted_keys(cfg.to_dict()))
