"""fedmpi sweep: grid expansion, naming, validation before any run, launcher choice."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedmpi.config import ConfigError, load_config
from fedmpi.sweep import Entry, command_for, expand, format_value, main, resolve_launcher


def write(tmp_path: Path, grid: dict, base: dict | None = None) -> Path:
    (tmp_path / "cfg").mkdir(exist_ok=True)
    (tmp_path / "cfg" / "base.yaml").write_text(yaml.safe_dump(base or {
        "name": "tiny", "model": {"name": "tiny-bert"},
        "federation": {"num_clients": 4, "clients_per_round": 2, "rounds": 2}}))
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"base": "cfg/base.yaml", **grid}, sort_keys=False))
    return path


GRID = {"set": {"federation.rounds": 1, "train.lr": 1.0e-3},
        "grid": {"method.name": ["lora", "full", "bitfit"], "seed": [0, 1]}}


def test_expansion_count_order_and_fixed_overrides(tmp_path):
    sweep = expand(write(tmp_path, GRID))
    assert len(sweep.entries) == 6
    assert sweep.base == tmp_path / "cfg" / "base.yaml"
    points = [(e.varied[0], e.varied[1]) for e in sweep.entries]
    assert points == [(f"method.name={m}", f"seed={s}") for m in ("lora", "full", "bitfit") for s in (0, 1)]
    for e in sweep.entries:
        assert e.overrides[:2] == ["federation.rounds=1", "train.lr=0.001"]
        cfg = load_config(sweep.base, e.overrides)
        assert cfg.federation.rounds == 1 and cfg.train.lr == 1e-3 and cfg.name == e.name
    assert len({e.name for e in sweep.entries}) == 6
    assert sweep.entries[3].name == "tiny-003-name=full-seed=1"


def test_name_template_and_run_dirs(tmp_path):
    sweep = expand(write(tmp_path, {**GRID, "name": "{method.name}-lr{train.lr:g}-s{seed}"}),
                   extra=["output.dir=/tmp/x"])
    assert [e.name for e in sweep.entries][:2] == ["lora-lr0.001-s0", "lora-lr0.001-s1"]
    assert sweep.entries[0].run_dir == Path("/tmp/x/lora-lr0.001-s0")


def test_template_that_collides_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="share the run folder"):
        expand(write(tmp_path, {**GRID, "name": "{method.name}"}))


def test_bad_key_fails_before_anything_runs(tmp_path, capsys):
    grid = write(tmp_path, {"grid": {"method.name": ["lora", "loar"]}})
    with pytest.raises(ConfigError, match="unknown method.name 'loar'.*grid entry 1"):
        expand(grid)
    started = []
    assert main([str(grid), "--run-index", "0"], run_in_process=started.append) == 2
    assert started == []
    err = capsys.readouterr().err.strip()
    assert "did you mean 'lora'" in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("grid, message", [
    ({"grid": {"federation.roundz": [1, 2]}}, "unknown config key 'federation.roundz'"),
    ({"grid": {"seed": 3}}, "must be a non-empty list"),
    ({"sets": {}}, "unknown key 'sets'"),
])
def test_grid_file_errors(tmp_path, capsys, grid, message):
    assert main([str(write(tmp_path, grid)), "--count"]) == 2
    assert message in capsys.readouterr().err


def test_missing_grid_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"fedmpi sweep: grid file not found: {tmp_path / 'nope.yaml'}"


def test_count_and_dry_run_output(tmp_path, capsys):
    grid = write(tmp_path, GRID)
    assert main([str(grid), "--count"]) == 0
    assert capsys.readouterr().out == "6\n"
    assert main([str(grid), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("6 entries") and "federation.rounds=1" in lines[1]
    table = lines[3:]
    assert len(table) == 6
    assert table[5].split()[:2] == ["5", "tiny-005-name=bitfit-seed=1"]
    assert table[5].split()[2:] == ["method.name=bitfit", "seed=1"]


def test_run_index_in_process_gets_every_override(tmp_path):
    calls: list[list[str]] = []
    assert main([str(write(tmp_path, GRID)), "--run-index", "2", "--launcher", "none"],
                run_in_process=lambda argv: calls.append(argv) or 0) == 0
    (argv,) = calls
    assert argv[:2] == ["run", str(tmp_path / "cfg" / "base.yaml")]
    sets = argv[3::2]
    assert argv[2::2] == ["--set"] * len(sets)
    assert sets == ["federation.rounds=1", "train.lr=0.001", "method.name=full", "seed=0",
                    "name=tiny-002-name=full-seed=0"]


def test_run_index_out_of_range(tmp_path, capsys):
    assert main([str(write(tmp_path, GRID)), "--run-index", "6"]) == 2
    assert "out of range" in capsys.readouterr().err


@pytest.mark.parametrize("env, expected", [
    ({}, "mpirun"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, "mpirun"),  # one-task batch script: fedmpi launch
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "3", "SLURM_PROCID": "0"}, "srun"),  # batch script of 3 tasks
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "3", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "3"}, "none"),
])
def test_launcher_auto(env, expected):
    assert resolve_launcher("auto", env) == expected
    assert resolve_launcher("srun", env) == "srun"


def test_commands_per_launcher():
    entry = Entry(0, "a", ["seed=1", "name=a"], Path("runs/a"), ["seed=1"])
    srun = command_for(entry, Path("c.yaml"), "srun", None)
    assert srun[:2] == ["srun", "--kill-on-bad-exit=1"] and srun[3:] == [
        "-m", "fedmpi", "run", "c.yaml", "--set", "seed=1", "--set", "name=a"]
    launch = command_for(entry, Path("c.yaml"), "mpirun", 5)
    assert launch[1:6] == ["-m", "fedmpi", "launch", "-n", "5"] and launch[6] == "c.yaml"


@pytest.mark.parametrize("value", [0.1, 1e-5, 3, True, None, "lora", "1e-4", "yes", "", [1, 2], ["query", "value"],
                                   {"a": 1}, float("inf")])
def test_values_round_trip_through_set(value):
    assert yaml.safe_load(format_value(value)) == value


def test_all_runs_every_entry_in_order_and_resume_skips_the_finished(tmp_path):
    grid = write(tmp_path, {**GRID, "set": {**GRID["set"], "output.dir": str(tmp_path / "runs")}})
    calls: list[list[str]] = []
    cut = {"tiny-002-name=full-seed=0"}  # this entry is killed once: it leaves a checkpoint and fails

    def fake(argv: list[str]) -> int:
        calls.append(argv)
        name = next(a for a in argv if a.startswith("name=")).split("=", 1)[1]
        run = tmp_path / "runs" / name
        run.mkdir(parents=True, exist_ok=True)
        if name in cut:
            cut.discard(name)
            (run / "checkpoint.pt").write_text("")
            return 1
        (run / "summary.json").write_text("{}")
        return 0

    assert main([str(grid), "--all", "--launcher", "none"], run_in_process=fake) == 1
    assert len(calls) == 3 and "--resume" not in calls[2]
    calls.clear()
    assert main([str(grid), "--all", "--resume", "--launcher", "none"], run_in_process=fake) == 0
    names = [next(a for a in argv if a.startswith("name=")).split("=", 1)[1] for argv in calls]
    assert names[0].startswith("tiny-002") and "--resume-or-start" in calls[0]  # the cut one, continued
    assert len(calls) == 4 and all("--resume-or-start" not in a for a in calls[1:])  # the rest, fresh


def test_cases_cross_their_own_grid_with_the_top_grid(tmp_path):
    grid = write(tmp_path, {"set": {"federation.rounds": 1},
                            "cases": {"full": {"set": {"method.name": "full", "train.lr": 5.0e-5}},
                                      "lora": {"set": {"method.name": "lora"}, "grid": {"train.lr": [0.001, 0.003]}}},
                            "grid": {"seed": [0, 1]}, "name": "{case}-lr{train.lr}-s{seed}"})
    sweep = expand(grid, ["train.batch_size=4"])
    names = [e.name for e in sweep.entries]
    assert names == ["full-lr5e-05-s0", "full-lr5e-05-s1", "lora-lr0.001-s0", "lora-lr0.001-s1",
                     "lora-lr0.003-s0", "lora-lr0.003-s1"]
    assert sweep.entries[2].overrides[:5] == ["federation.rounds=1", "method.name=lora", "train.lr=0.001", "seed=0",
                                               "train.batch_size=4"]
    assert sweep.entries[0].varied == ["case=full", "seed=0"]
    bad = write(tmp_path, {"cases": {"x": {"set": {"method.name": "lorra"}}}})
    with pytest.raises(ConfigError, match=r"unknown method.name 'lorra'.*\[grid entry 0: case x\]"):
        expand(bad)
