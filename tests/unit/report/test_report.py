"""fedmpi report on two synthetic run folders written in the core's format."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from fedmpi.report.cli import main
from fedmpi.report.runs import find_run_dirs, load_run


def write_run(root: Path, name: str, method: str, rounds: int, clients: int, acc0: float) -> dict:
    """A run folder as the core writes it: config, metrics, ledger, summary."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"name": name, "seed": 0, "algorithm": "fedavg", "method": {"name": method},
         "data": {"name": "embedded", "alpha": 0.5}}))
    metrics, ledger = [], []
    for r in range(rounds):
        down = up = 0
        for c in range(clients):
            ledger += [
                {"round": r, "client": c, "direction": "down", "kind": "model", "bytes": 1000 * (c + 1),
                 "flops": 0, "seconds": 0.1},
                {"round": r, "client": c, "direction": "local", "kind": "compute", "bytes": 0,
                 "flops": 2_000_000, "seconds": 0.5},
                {"round": r, "client": c, "direction": "up", "kind": "update", "bytes": 500 * (c + 1),
                 "flops": 0, "seconds": 0.2},
            ]
            down += 1000 * (c + 1)
            up += 500 * (c + 1)
        ledger.append({"round": r, "client": -1, "direction": "server", "kind": "aggregate", "bytes": 0,
                       "flops": 10_000, "seconds": 0.01})
        metrics.append({"round": r, "accuracy": None if r == 0 else acc0 + 0.1 * r, "loss": 1.0 / (r + 1),
                        "bytes_up": up, "bytes_down": down, "transport_bytes": up + down,
                        "emulated_seconds": 0.81, "client_flops": 2_000_000 * clients, "server_flops": 10_000,
                        "wall_seconds": 0.05, "bytes_by_kind": {"model": down, "update": up},
                        "attack_success_rate": 0.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run / "ledger.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ledger))
    summary = {"name": name, "algorithm": "fedavg", "method": method, "rounds": rounds,
               "final_accuracy": metrics[-1]["accuracy"], "best_accuracy": metrics[-1]["accuracy"],
               "total_bytes_up": sum(m["bytes_up"] for m in metrics),
               "total_bytes_down": sum(m["bytes_down"] for m in metrics),
               "total_client_flops": sum(m["client_flops"] for m in metrics),
               "total_server_flops": 10_000 * rounds, "emulated_seconds": 0.81 * rounds,
               "wall_seconds": 0.05 * rounds, "trainable_params": 1234, "total_params": 99999,
               "some_future_key": [1, 2]}
    (run / "summary.json").write_text(json.dumps(summary))
    return summary


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, list[dict]]:
    runs = tmp_path / "runs"
    s1 = write_run(runs, "alpha-lora", "lora", rounds=3, clients=3, acc0=0.5)
    s2 = write_run(runs / "nested", "beta-full", "full", rounds=4, clients=2, acc0=0.4)
    (runs / "half-written").mkdir()  # a crashed run without summary.json is not a run folder
    (runs / "half-written" / "metrics.jsonl").write_text("{}\n")
    return runs, [s1, s2]


def test_finds_run_folders_recursively(two_runs):
    runs, _ = two_runs
    assert [p.name for p in find_run_dirs([runs])] == ["alpha-lora", "beta-full"]
    assert find_run_dirs([runs / "alpha-lora"]) == [runs / "alpha-lora"]


def test_report_table_matches_summaries(two_runs, capsys):
    runs, summaries = two_runs
    assert main([str(runs)]) == 0
    out = runs / "report"
    with (out / "report.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == [s["name"] for s in summaries]
    for row, s in zip(rows, summaries):
        assert row["algorithm"] == s["algorithm"] and row["method"] == s["method"]
        assert float(row["final_accuracy"]) == pytest.approx(s["final_accuracy"])
        assert int(row["total_bytes_up"]) == s["total_bytes_up"]
        assert int(row["total_bytes_down"]) == s["total_bytes_down"]
        assert float(row["client_gflops"]) == pytest.approx(s["total_client_flops"] / 1e9)
        assert float(row["emulated_seconds"]) == pytest.approx(s["emulated_seconds"])
        assert float(row["wall_seconds"]) == pytest.approx(s["wall_seconds"])
    md = (out / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == 2
    for line, s in zip(table, summaries):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:3] == [s["name"], "fedavg", s["method"]]
        assert float(cells[3]) == pytest.approx(s["final_accuracy"], abs=1e-4)
        assert int(cells[4].replace(",", "")) == s["total_bytes_up"]
        assert int(cells[5].replace(",", "")) == s["total_bytes_down"]
    assert "2 runs" in capsys.readouterr().out


def test_report_writes_the_four_kinds_of_plots(two_runs, tmp_path):
    runs, summaries = two_runs
    out = tmp_path / "elsewhere"
    assert main([str(runs / "alpha-lora"), str(runs / "nested"), "--out", str(out)]) == 0
    expected = ["accuracy_vs_bytes.png", "accuracy_vs_time.png"]
    for s in summaries:
        expected += [f"bytes_by_kind_{s['name']}.png", f"client_bytes_{s['name']}.png"]
    for name in expected:
        png = out / name
        assert png.is_file() and png.stat().st_size > 1000, name
        assert png.read_bytes()[:4] == b"\x89PNG"
        assert f"]({name})" in (out / "report.md").read_text()


def test_missing_summary_keys_fall_back_to_metrics(two_runs):
    runs, summaries = two_runs
    path = runs / "alpha-lora"
    (path / "summary.json").write_text(json.dumps({"rounds": 3}))
    with (path / "metrics.jsonl").open("a") as fh:
        fh.write('{"round": 3, "accur')  # a run killed mid-write
    run = load_run(path)
    assert run.name == "alpha-lora" and run.method == "lora" and run.algorithm == "fedavg"
    assert run.final_accuracy == pytest.approx(summaries[0]["final_accuracy"])
    assert run.total("total_bytes_up", "bytes_up") == summaries[0]["total_bytes_up"]


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "no such directory"),
    (lambda root: root.mkdir(), "no run folders"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, capsys, setup, message):
    root = tmp_path / "nothing"
    setup(root)
    assert main([str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
