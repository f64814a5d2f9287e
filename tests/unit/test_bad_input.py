"""Every bad input the suite tries, in one table: each ends with exit status 2, one
`fedmpi: error:` line naming the key or file, no traceback, and no run folder.

Most cases call `fedmpi.cli.main([...])` in-process (a config error happens before
any rank, so there is nothing to start: `run_job` is replaced by a tripwire); the
few whose path goes through real ranks or a real process run as subprocesses.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT, TINY

HAS_CUDA = False
try:  # a machine with GPUs may honour runtime.backend=nccl / device=cuda
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    pass


@dataclass
class Case:
    category: str
    sets: list[str] = field(default_factory=list)  # --set overrides ({d}: the files folder)
    needle: str = ""  # the error line must contain it (it names the key or file)
    args: list[str] = field(default_factory=list)  # launch arguments besides the config
    config: str = str(TINY)
    prepare: str | None = None  # a run folder to set up before (see `_prepare`)
    how: str = "inproc"  # inproc | launch | mpiexec | run  (the last three: a real subprocess)
    ranks: int = 3  # how=mpiexec: mpiexec -n
    env: dict[str, str] = field(default_factory=dict)


LORA = ["method.name=lora"]
CASES: dict[str, Case] = {
    # -- config syntax --------------------------------------------------------------
    "config-missing": Case("syntax", config="{d}/nope.yaml", needle="config file not found: {d}/nope.yaml"),
    "config-invalid-yaml": Case("syntax", config="{d}/broken.yaml", needle="{d}/broken.yaml is not valid YAML"),
    "config-not-mapping": Case("syntax", config="{d}/list.yaml", needle="must be a mapping of sections, got list"),
    "config-binary": Case("syntax", config="{d}/binary.yaml", needle="{d}/binary.yaml is not a text file"),
    "set-without-equals": Case("syntax", ["federation.rounds"], "--set expects key=value, got 'federation.rounds'"),
    "set-bad-yaml": Case("syntax", ["federation.rounds=[1,"], "--set federation.rounds=[1,: not a valid YAML value"),
    "set-into-scalar": Case("syntax", ["seed.x=1"], "--set seed.x: 'seed' is not a section"),
    # -- keys -----------------------------------------------------------------------
    "unknown-key": Case("keys", ["federation.bogus=1"], "unknown config key 'federation.bogus'"),
    "unknown-section": Case("keys", ["federaton.rounds=1"], "unknown config key 'federaton' (did you mean"),
    "key-of-another-method": Case("keys", ["method.r=4"], "'method.r' does not apply to method.name 'full'"),
    "key-of-another-algorithm": Case("keys", ["options.prune_ratio=0.5"],
                                     "'options.prune_ratio' does not apply to algorithm 'fedavg'"),
    # -- types ----------------------------------------------------------------------
    "int-not-number": Case("types", ["federation.rounds=abc"], "'federation.rounds' expects an integer"),
    "int-fraction": Case("types", ["federation.rounds=2.5"], "'federation.rounds' expects an integer, got 2.5"),
    "float-word": Case("types", ["train.lr=fast"], "'train.lr' expects a number, got 'fast'"),
    "bool-word": Case("types", ["output.progress=maybe"], "'output.progress' expects true/false"),
    "list-as-mapping": Case("types", LORA + ["method.target_modules={a: 1}"], "'method.target_modules' expects a list"),
    "nan-latency": Case("types", ["network.latency_ms=.nan"], "'network.latency_ms' must be a finite number"),
    # -- ranges ---------------------------------------------------------------------
    "zero-clients": Case("ranges", ["federation.num_clients=0"], "federation.num_clients must be > 0"),
    "zero-rounds": Case("ranges", ["federation.rounds=0"], "federation.rounds must be > 0"),
    "zero-eval-batch": Case("ranges", ["train.eval_batch_size=0"], "train.eval_batch_size must be > 0"),
    "lora-dropout-2": Case("ranges", LORA + ["method.lora_dropout=2"], "method.lora_dropout must be in [0, 1)"),
    "lora-rank-0": Case("ranges", LORA + ["method.r=0"], "method.r must be > 0"),
    "zero-shards": Case("ranges", ["data.partition=shards", "data.shards_per_client=0"],
                        "data.shards_per_client must be > 0"),
    "dropout-1": Case("ranges", ["federation.dropout=1"], "federation.dropout must be in [0, 1)"),
    "negative-latency": Case("ranges", ["network.latency_ms=-5"], "network.latency_ms must be >= 0"),
    "zero-bandwidth": Case("ranges", ["network.up_mbps=0"], "network.up_mbps must be > 0"),
    "more-per-round-than-clients": Case("ranges", ["federation.clients_per_round=9"],
                                        "federation.clients_per_round (9) > federation.num_clients (6)"),
    "malicious-fraction-2": Case("ranges", ["attack.malicious_fraction=2"], "attack.malicious_fraction must be in"),
    # -- data files -----------------------------------------------------------------
    "data-path-missing": Case("data", ["data.path=/nonexistent/data"], "dataset 'embedded' not found"),
    "data-no-label-column": Case("data", ["data.name={d}/nolabel"], "{d}/nolabel/train.csv: no label column 'label'"),
    "data-no-text-column": Case("data", ["data.name={d}/notext"], "cannot tell the text column"),
    "data-garbage": Case("data", ["data.name={d}/garbage"], "cannot read {d}/garbage/train.csv"),
    "data-empty-train": Case("data", ["data.name={d}/emptytrain"], "dataset '{d}/emptytrain' has an empty training"),
    "data-no-test": Case("data", ["data.name={d}/notest"], "dataset folder {d}/notest: no test split"),
    "more-clients-than-samples": Case("data", ["federation.num_clients=1000", "federation.clients_per_round=4"],
                                      "more clients (1000) than training samples (400)"),
    # -- labels ---------------------------------------------------------------------
    "labels-strings": Case("labels", ["data.name={d}/strlabels"],
                           "label column 'label' must hold integer class indices (found 'pos')"),
    "labels-fractions": Case("labels", ["data.name={d}/floatlabels"], "must hold integer class indices (found 1.5)"),
    "labels-outside-labels-json": Case("labels", ["data.name={d}/outside"],
                                       "train label 3 is outside the 2 label names (neg, pos)"),
    "labels-negative": Case("labels", ["data.name={d}/negative"], "train label -1 is outside"),
    # -- traces ---------------------------------------------------------------------
    "trace-missing": Case("traces", ["network.trace={d}/none.csv"], "network.trace file not found: {d}/none.csv"),
    "trace-nan": Case("traces", ["network.trace={d}/nan.csv"], "network.trace {d}/nan.csv line 3: up_mbps must be finite"),
    "trace-negative-bandwidth": Case("traces", ["network.trace={d}/negbw.csv"], "line 2: bandwidth must be > 0"),
    "trace-negative-latency": Case("traces", ["network.trace={d}/neglat.csv"], "line 2: latency_ms must be >= 0"),
    "trace-missing-column": Case("traces", ["network.trace={d}/nocol.csv"], "missing column(s) down_mbps"),
    "trace-bad-client": Case("traces", ["network.trace={d}/badclient.csv"], "line 2: client must be an integer"),
    "trace-word": Case("traces", ["network.trace={d}/word.csv"], "line 2: up_mbps must be a number, got 'fast'"),
    "trace-no-rows": Case("traces", ["network.trace={d}/header.csv"], "network.trace {d}/header.csv has no rows"),
    # -- model paths ----------------------------------------------------------------
    "model-path-missing": Case("models", ["model.name={d}/no-such-model"], "cannot load model '{d}/no-such-model'"),
    "model-folder-not-a-model": Case("models", ["model.name={d}/emptymodel"], "cannot load model '{d}/emptymodel'"),
    "split-points-past-the-layers": Case("models", ["algorithm=splitfed", "options.split_head_layers=1",
                                                    "options.split_tail_layers=1"],
                                         "must leave at least one layer for the server's body: model 'tiny-bert' "
                                         "has 2 layers"),
    # -- output folders -------------------------------------------------------------
    "output-dir-is-a-file": Case("output", ["output.dir={d}/afile"], "output.dir: {d}/afile is a file"),
    "output-dir-below-a-file": Case("output", ["output.dir={d}/afile/sub"], "output.dir: {d}/afile is a file"),
    "output-dir-unwritable": Case("output", ["output.dir={unwritable}"], "output.dir: "),
    "run-folder-locked": Case("output", ["name=locked"], "run folder {out}/locked is in use by another fedmpi job "
                              "(pid {pid} on", prepare="locked"),
    # -- resume ---------------------------------------------------------------------
    "resume-without-checkpoint": Case("resume", needle="--resume: no checkpoint to resume in {out}/bad",
                                      args=["--resume"]),
    "resume-changed-lr": Case("resume", ["name=done", "train.lr=0.1"], "train.lr: 0.003 -> 0.1",
                              args=["--resume"], prepare="done"),
    "resume-changed-model": Case("resume", ["name=done", "model.hidden_size=64"], "model.hidden_size: 32 -> 64",
                                 args=["--resume"], prepare="done"),
    "resume-without-config": Case("resume", ["name=noconfig"], "has a checkpoint but no config.yaml",
                                  args=["--resume"], prepare="noconfig"),
    "resume-two-ways": Case("resume", needle="--resume-or-start: not allowed with argument --resume",
                            args=["--resume", "--resume-or-start"]),
    # -- launch arguments -----------------------------------------------------------
    "one-rank": Case("launch", needle="at least 2 ranks (1 server + clients), got -n 1", args=["-n", "1"]),
    "zero-ranks": Case("launch", needle="at least 2 ranks", args=["-n", "0"]),
    "ranks-not-a-number": Case("launch", needle="argument -n/--ranks: invalid int value: 'abc'", args=["-n", "abc"]),
    "mpiexec-missing": Case("launch", needle="--mpiexec /nonexistent/mpiexec: no such executable",
                            args=["--mpiexec", "/nonexistent/mpiexec"]),
    "unknown-flag": Case("launch", needle="unrecognized arguments: --bogus", args=["--bogus"]),
    "no-config-argument": Case("launch", config="", needle="the following arguments are required: config"),
    # -- methods, algorithms, plug-ins, placement -----------------------------------
    "unknown-method": Case("combinations", ["method.name=lorra"], "unknown method.name 'lorra' (did you mean 'lora'?)"),
    "unknown-algorithm": Case("combinations", ["algorithm=fedavgg"], "unknown algorithm 'fedavgg'"),
    "splitfed-with-lora": Case("combinations", ["algorithm=splitfed"] + LORA, "leave method.name at 'full'"),
    "unknown-task": Case("combinations", ["task=regression"], "unknown task 'regression'"),
    "unknown-strategy": Case("combinations", ["strategy.server.name=bogus"], "unknown strategy.server.name 'bogus'"),
    "unknown-codec": Case("combinations", ["transport.up=int9"], "unknown transport codec 'int9'"),
    "nccl-without-gpus": Case("combinations", ["runtime.backend=nccl"], "runtime.backend=nccl needs a GPU for every"),
    "cuda-without-gpus": Case("combinations", ["runtime.device=cuda"], "runtime.device=cuda but ranks 0-2 see no GPU"),
    # -- the same rules on the real paths: the console script, and ranks started by
    #    mpiexec / directly without fedmpi launch (errors found by rank 0) ----------
    "launch-process-bad-key": Case("launch", ["federation.bogus=1"], "unknown config key 'federation.bogus'",
                                   how="launch"),
    "run-without-launcher": Case("launch", needle="fedmpi needs at least 2 ranks", how="run"),
    "batch-script-without-srun": Case("launch", needle="start the ranks with 'srun", how="run",
                                      env={"SLURM_PROCID": "0", "SLURM_NTASKS": "3", "SLURM_JOB_ID": "42"}),
    "mpiexec-one-rank": Case("launch", needle="at least 2 ranks (1 server + clients), got 1", how="mpiexec",
                             ranks=1),
    "mpiexec-locked-run-folder": Case("output", ["name=locked"], "run folder {out}/locked is in use", how="mpiexec",
                                      prepare="locked"),
    "mpiexec-resume-without-checkpoint": Case("resume", needle="--resume: no checkpoint to resume", how="mpiexec",
                                              args=["--resume"]),
}
GPU_DEPENDENT = {"nccl-without-gpus", "cuda-without-gpus"}


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def _dataset(folder: Path, train: str, test: str | None = None, labels: list[str] | None = None) -> None:
    _write(folder / "train.csv", train)
    if test is not None:
        _write(folder / "test.csv", test)
    if labels is not None:
        _write(folder / "labels.json", json.dumps({"label": labels}))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad_input")
    _write(d / "broken.yaml", "federation: [1, 2\n")
    _write(d / "list.yaml", "- 1\n- 2\n")
    _write(d / "binary.yaml", b"\xff\xfe\x00\x81garbage")
    ok = "text,label\n" + "".join(f"sample {i},{i % 2}\n" for i in range(40))
    _dataset(d / "nolabel", "text,target\na,1\nb,0\n", "text,target\na,1\n")
    _dataset(d / "notext", "words,label\na,1\nb,0\n", "words,label\na,1\n")
    _dataset(d / "garbage", b"\x00\xff\xfe\x81" * 64, ok)
    _dataset(d / "emptytrain", "text,label\n", ok)
    _dataset(d / "notest", ok)
    _dataset(d / "strlabels", "text,label\na,pos\nb,neg\n", "text,label\na,pos\n")
    _dataset(d / "floatlabels", "text,label\na,1.5\nb,0\n", "text,label\na,1\n")
    _dataset(d / "outside", ok + "odd,3\n", ok, labels=["neg", "pos"])
    _dataset(d / "negative", ok + "odd,-1\n", ok)
    _write(d / "nan.csv", "client,up_mbps,down_mbps\n0,10,50\n1,nan,50\n")
    _write(d / "negbw.csv", "client,up_mbps,down_mbps\n0,-10,50\n")
    _write(d / "neglat.csv", "client,up_mbps,down_mbps,latency_ms\n0,10,50,-3\n")
    _write(d / "nocol.csv", "client,up_mbps\n0,10\n")
    _write(d / "badclient.csv", "client,up_mbps,down_mbps\nfirst,10,50\n")
    _write(d / "word.csv", "client,up_mbps,down_mbps\n0,fast,50\n")
    _write(d / "header.csv", "client,up_mbps,down_mbps\n")
    (d / "emptymodel").mkdir()
    _write(d / "afile", "not a folder\n")
    return d


def _unwritable(tmp: Path) -> str:
    if os.geteuid() == 0:
        return "/sys/fedmpi-test-output"  # root may write anywhere but sysfs
    ro = tmp / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    return str(ro / "runs")


def _prepare(kind: str, out: Path) -> Path:
    """A run folder in the state a case needs; returns it."""
    from fedmpi.config import dump_config, load_config
    from fedmpi.runfolder.lock import LOCK_NAME, Owner

    folder = out / kind
    folder.mkdir(parents=True)
    if kind == "locked":  # held by a live job: this test process
        owner = Owner.me("someone-else")
        (folder / LOCK_NAME).write_text(json.dumps(owner.__dict__))
    if kind in ("done", "noconfig"):
        (folder / "checkpoint.pt").write_bytes(b"checkpoint")
    if kind == "done":
        cfg = load_config(TINY, [f"output.dir={out}", "name=done", "output.progress=false"])
        (folder / "config.yaml").write_text(dump_config(cfg))
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _argv(case: Case, out: Path, fmt) -> list[str]:
    sets = [f"output.dir={out}", "name=bad", "output.progress=false"] + [fmt(s) for s in case.sets]
    config = [fmt(case.config)] if case.config else []
    return ["launch", "-n", "3", *config, *case.args, *[x for s in sets for x in ("--set", s)]]


def _subprocess(case: Case, out: Path, fmt) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "SLURM_"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **case.env)
    argv = _argv(case, out, fmt)
    if case.how == "launch":
        cmd = [sys.executable, "-m", "fedmpi", *argv]
    else:
        cmd = [sys.executable, "-m", "fedmpi", "run", *argv[3:]]  # argv[3:]: without "launch -n 3"
        if case.how == "mpiexec":
            from fedmpi.cli import find_mpiexec

            cmd = [find_mpiexec(), "-n", str(case.ranks)] + cmd
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[pytest.mark.mpi] if CASES[n].how != "inproc" else []) for n in CASES])
def test_bad_input(name, files, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    if name in GPU_DEPENDENT and HAS_CUDA:
        pytest.skip("this machine has a GPU: the request may be honoured")
    out = tmp_path / "runs"
    prepared = _prepare(case.prepare, out) if case.prepare else None
    before = _snapshot(prepared) if prepared else None
    fields = {"{d}": str(files), "{out}": str(out), "{pid}": str(os.getpid())}
    if any("{unwritable}" in s for s in case.sets):
        fields["{unwritable}"] = _unwritable(tmp_path)

    def fmt(text: str) -> str:
        for k, v in fields.items():
            text = text.replace(k, v)
        return text

    t0 = time.monotonic()
    if case.how == "inproc":
        import fedmpi.supervise
        from fedmpi.cli import main

        def tripwire(*a, **k):
            raise AssertionError("the job started: this input passed every pre-flight check")

        monkeypatch.setattr(fedmpi.supervise, "run_job", tripwire)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        code = main(_argv(case, out, fmt))
        captured = capsys.readouterr()
        text = captured.out + captured.err
    else:
        code, text = _subprocess(case, out, fmt)
    took = time.monotonic() - t0
    errors = [line for line in text.splitlines() if line.startswith("fedmpi: error:")]
    report = f"[{case.category}] exit {code} in {took:.1f} s\n{text[-3000:]}"
    assert code == 2, report
    assert len(errors) == 1, report
    assert fmt(case.needle) in errors[0], report
    assert "Traceback" not in text, report
    assert not (out / "bad").exists(), "a run folder was left behind"
    if prepared is not None:
        assert _snapshot(prepared) == before, "the existing run folder was changed"
    _TABLE.append((case.category, name, code, took, errors[0]))


_TABLE: list[tuple] = []


def test_the_table_covers_enough():
    """>= 40 cases in >= 10 categories (the report's table comes from these)."""
    assert len(CASES) >= 40 and len({c.category for c in CASES.values()}) >= 10


@pytest.fixture(scope="module", autouse=True)
def _print_table():
    yield
    if _TABLE and os.environ.get("FEDMPI_BAD_INPUT_TABLE"):
        with open(os.environ["FEDMPI_BAD_INPUT_TABLE"], "w") as fh:
            for row in _TABLE:
                fh.write(json.dumps(row) + "\n")
