"""Experiment trackers receive every metrics row, inside the run folder."""
from __future__ import annotations

import pytest

from conftest import assert_ok, launch

pytestmark = pytest.mark.mpi


def test_tensorboard_events_hold_every_round(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = launch(tmp_path, 2, "output.tracker=tensorboard", "federation.rounds=3")
    assert_ok(run)
    acc = EventAccumulator(str(run.dir / "tensorboard"))
    acc.Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert loss == [(m["round"], pytest.approx(m["loss"])) for m in run.metrics]
    assert [e.value for e in acc.Scalars("bytes_by_kind/update")] == [m["bytes_by_kind"]["update"]
                                                                       for m in run.metrics]


def test_mlflow_run_in_the_run_folder(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    import mlflow

    run = launch(tmp_path, 2, "output.tracker=mlflow", "federation.rounds=2")
    assert_ok(run)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run.dir / 'mlflow.db'}")
    run_id = (run.dir / "mlflow_run_id").read_text().strip()
    history = client.get_metric_history(run_id, "accuracy")
    assert [(h.step, h.value) for h in history] == [(m["round"], pytest.approx(m["accuracy"])) for m in run.metrics]
    assert client.get_run(run_id).data.params["train.lr"] == "0.003"
