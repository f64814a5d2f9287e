"""fedmpi vs Flower simulation (flwr[simulation] + Ray; the optional `bench`
extra: pip install -c constraints.txt -e ".[bench]"). The same workloads in
both, side by side with the plain loop:

- compute-bound (bench.common.COMPUTE_BOUND): target closer to the plain loop than Flower is;
- overhead-bound (bench.common.OVERHEAD_BOUND, 1000 clients, short rounds): target >= 5x Flower's rounds/s.

Flower runs the very same client computation: a strategy picks fedmpi's
sampled clients each round (bench/plain_loop.py's `train_client`, same seeds,
batches, optimizer) and Flower's FedAvg averages them by sample count.

  python -m bench.flower CONFIG OUT.json [KEY=VALUE ...]   # one Flower run
  python -m bench.flower --bench [--reps N] [--compute-rounds R] [--overhead-rounds R]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

_STATE: dict = {}


def flower_available() -> str | None:
    """None if Flower simulation can run here, else why not."""
    try:
        import flwr  # noqa: F401
        import ray  # noqa: F401
        from flwr.simulation import start_simulation  # noqa: F401
    except Exception as exc:  # ImportError and friends
        return f"flwr[simulation] is not installed ({type(exc).__name__}: {exc}); " \
               "pip install -c constraints.txt -e '.[bench]'"
    return None


def _worker_state(config: str, overrides: list[str]) -> dict:
    """Model and data, built once per Ray worker process (like fedmpi's ranks)."""
    key = (config, tuple(overrides))
    if _STATE.get("key") != key:
        from fedmpi.config import load_config
        from fedmpi.data.federated import FederatedData
        from fedmpi.experiment import prepare
        from fedmpi.models.methods import trainable

        cfg = load_config(config, overrides)
        prep = prepare(cfg)
        data = FederatedData(prep.dataset, prep.parts, prep.task.encoder(prep.tokenizer), cfg.seed)
        params = [p for _, p in trainable(prep.model)]
        _STATE.update(key=key, cfg=cfg, model=prep.model, data=data, params=params, task=prep.task)
    return _STATE


def run_flower(config: str, out: str, overrides: list[str]) -> None:
    import flwr as fl
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg

    from bench.plain_loop import train_client
    from fedmpi.engine.sampling import sample_clients
    from fedmpi.net.flat import flatten, unflatten_into

    import psutil

    born = psutil.Process().create_time()
    st = _worker_state(config, overrides)
    cfg = st["cfg"]
    fed = cfg.federation
    init = flatten(st["params"]).numpy().copy()

    class Client(fl.client.NumPyClient):
        def fit(self, parameters, conf):
            s = _worker_state(config, overrides)
            torch.set_num_threads(1)
            unflatten_into(torch.from_numpy(parameters[0]), s["params"])
            c, rnd = int(conf["client"]), int(conf["round"])
            n, loss_sum = train_client(s["model"], s["params"], s["data"], s["cfg"], rnd, c)
            w = s["data"].client_size(c)
            return [flatten(s["params"]).numpy()], w, {"loss": loss_sum / max(1, n)}

    def client_fn(context):
        return Client().to_client()

    round_start: list[float] = []
    final: dict = {}

    class SameClients(FedAvg):
        """FedAvg whose round r trains fedmpi's sampled clients of round r-1."""

        def configure_fit(self, server_round, parameters, client_manager):
            round_start.append(time.time())
            sampled = sample_clients(fed.num_clients, fed.clients_per_round, cfg.seed, server_round - 1,
                                     fed.over_selection)
            client_manager.wait_for(fed.num_clients)
            proxies = sorted(client_manager.all().values(), key=lambda p: p.cid)
            return [(proxies[c], FitIns(parameters, {"client": c, "round": server_round - 1})) for c in sampled]

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

    def evaluate_fn(server_round, ndarrays, conf):
        if server_round != fed.rounds:
            return None
        flat = torch.from_numpy(ndarrays[0].copy())
        final["state"] = flat
        final["last_round_end"] = time.time()  # the round loop's end, before Ray's teardown
        unflatten_into(flat, st["params"])
        ev = st["task"].evaluate(st["model"], st["data"].test_batches(cfg.train.eval_batch_size), torch.device("cpu"))
        return ev["test_loss"], {"accuracy": ev["accuracy"]}

    def fit_metrics(results):
        total = sum(n for n, _ in results)
        return {"loss": sum(n * m["loss"] for n, m in results) / max(1, total)}

    strategy = SameClients(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=fed.clients_per_round,
                           min_available_clients=fed.num_clients, evaluate_fn=evaluate_fn,
                           initial_parameters=ndarrays_to_parameters([init]),
                           fit_metrics_aggregation_fn=fit_metrics)
    cores = len(os.sched_getaffinity(0))
    t0 = time.time()
    hist = fl.simulation.start_simulation(
        client_fn=client_fn, num_clients=fed.num_clients, config=fl.server.ServerConfig(num_rounds=fed.rounds),
        strategy=strategy, client_resources={"num_cpus": 1, "num_gpus": 0.0},
        ray_init_args={"num_cpus": cores, "include_dashboard": False, "ignore_reinit_error": True,
                       "log_to_driver": False, "object_store_memory": 256 * 2**20})
    t_end = time.time()
    loop_end = final.get("last_round_end", t_end)
    loss = hist.metrics_distributed_fit.get("loss", [(0, float("nan"))])[-1][1]
    acc = hist.metrics_centralized.get("accuracy", [(0, None)])[-1][1]
    torch.save(final.get("state"), out + ".pt")
    Path(out).write_text(json.dumps({
        "startup_s": round_start[0] - born, "sim_s": t_end - t0,
        "rounds_s": loop_end - round_start[0], "per_round_s": (loop_end - round_start[0]) / fed.rounds,
        "final_loss": loss, "final_accuracy": acc}))


def _fedmpi_once(ranks: int, tmp: Path, name: str, sets: tuple[str, ...]):
    from bench.common import fedmpi_cmd, read_run, run_measured

    cmd = fedmpi_cmd(ranks, tmp, name, *sets)
    m = run_measured(cmd).check()
    run = read_run(tmp / name)
    loop = sum(r["wall_seconds"] for r in run["metrics"])
    s = run["summary"]
    state = torch.load(tmp / name / "checkpoint.pt", weights_only=False)["state"]["trainable"]
    return cmd, {"wall": m.wall, "peak": m.peak_rss, "loop": loop, "startup": m.wall - loop,
                 "loss": s["final_loss"], "acc": s["final_accuracy"], "state": state}


def _flower_once(tmp: Path, name: str, sets: tuple[str, ...]):
    from bench.common import PY, run_measured

    out = tmp / f"{name}.json"
    cmd = [PY, "-m", "bench.flower", "configs/tiny.yaml", str(out), *sets]
    m = run_measured(cmd, timeout=1500, extra_env={"RAY_DEDUP_LOGS": "0"}).check()
    r = json.loads(out.read_text())
    state = torch.load(str(out) + ".pt", weights_only=False)
    return cmd, {"wall": m.wall, "peak": m.peak_rss, "loop": r["rounds_s"], "startup": r["startup_s"],
                 "loss": r["final_loss"], "acc": r["final_accuracy"], "state": state}


def _plain_once(tmp: Path, name: str, sets: tuple[str, ...]):
    from bench.common import PY, run_measured

    out = tmp / f"{name}.pt"
    cmd = [PY, "-m", "bench.plain_loop", "configs/tiny.yaml", str(out), *sets]
    m = run_measured(cmd).check()
    r = torch.load(out, weights_only=False)
    return cmd, {"wall": m.wall, "peak": m.peak_rss, "loop": float("nan"), "startup": float("nan"),
                 "loss": r["final_loss"], "acc": r["accuracy"], "state": r["state"]}


def bench(reps: int = 1, compute_rounds: int = 10, overhead_rounds: int = 10, ranks: int = 3,
          with_plain: bool = True):
    """Both workloads; returns a Section (the compute-bound one also times the plain loop)."""
    from bench.common import COMPUTE_BOUND, OVERHEAD_BOUND, Section, median, mib, shown, table
    from bench.plain_loop import compare_states

    why = flower_available()
    tmp = Path(tempfile.mkdtemp(prefix="bench_flower_"))
    workloads = {
        "compute-bound": (*COMPUTE_BOUND, f"federation.rounds={compute_rounds}"),
        "overhead-bound": (*OVERHEAD_BOUND, f"federation.rounds={overhead_rounds}"),
    }
    body, figures, cmds = [], {}, []
    if why:
        body.append(f"**Flower part skipped: {why}.**")
    for wl, sets in workloads.items():
        res: dict[str, list[dict]] = {"fedmpi": [], "Flower": [], "plain loop": []}
        for rep in range(reps):
            order = ["fedmpi", "Flower", "plain loop"] if rep % 2 == 0 else ["plain loop", "Flower", "fedmpi"]
            for who in order:
                if who == "Flower" and why:
                    continue
                if who == "plain loop" and not (with_plain and wl == "compute-bound"):
                    continue
                if who == "fedmpi":
                    cmd, r = _fedmpi_once(ranks, tmp, f"{wl}-fed{rep}", sets)
                elif who == "Flower":
                    try:
                        cmd, r = _flower_once(tmp, f"{wl}-flwr{rep}", sets)
                    except RuntimeError as exc:
                        why = f"Flower simulation failed here: {str(exc)[-600:]}"
                        body.append(f"**{why}**")
                        continue
                else:
                    cmd, r = _plain_once(tmp, f"{wl}-plain{rep}", sets)
                res[who].append(r)
                if rep == 0:
                    cmds.append(shown(cmd))
        rounds = compute_rounds if wl == "compute-bound" else overhead_rounds
        rows = []
        for who, rs in res.items():
            if not rs:
                continue
            loop = median([r["loop"] for r in rs])
            rows.append([who, median([r["wall"] for r in rs]), loop / rounds, rounds / loop,
                         median([r["startup"] for r in rs]), mib(median([r["peak"] for r in rs])),
                         rs[-1]["loss"], rs[-1]["acc"]])
        text = f"### {wl} ({rounds} rounds, median of {reps})\n\n" + table(
            ["run", "wall s", "s / round", "rounds / s", "start-up s", "peak RSS all processes",
             "final train loss", "final accuracy"], rows)
        fed = res["fedmpi"]
        if res["Flower"]:
            fl_wall = median([r["wall"] for r in res["Flower"]])
            wall_ratio = fl_wall / median([r["wall"] for r in fed])
            rps_ratio = median([r["loop"] for r in res["Flower"]]) / median([r["loop"] for r in fed])
            cmp = compare_states(fed[-1]["state"], res["Flower"][-1]["state"])
            figures[f"{wl}_flower_wall_over_fedmpi"] = wall_ratio
            figures[f"{wl}_fedmpi_rps_over_flower"] = rps_ratio
            text += (f"\n\nFlower wall / fedmpi wall = **{wall_ratio:.2f}×**; fedmpi rounds/s ÷ Flower's = "
                     f"**{rps_ratio:.2f}×**. Final weights fedmpi vs Flower: max |diff| {cmp['max_abs_diff']:.3g} "
                     "(Flower averages in float32 numpy, fedmpi in float64).")
        if res["plain loop"]:
            plain = median([r["wall"] for r in res["plain loop"]])
            figures["plain_ratio"] = median([r["wall"] for r in fed]) / plain
            cmp = compare_states(fed[-1]["state"], res["plain loop"][-1]["state"])
            figures.update({f"plain_{k}": v for k, v in cmp.items()})
            text += (f"\n\nfedmpi wall / plain loop wall = **{figures['plain_ratio']:.3f}×** (target ≤ 1.25×)")
            if res["Flower"]:
                fr = median([r["wall"] for r in res["Flower"]]) / plain
                figures["flower_plain_ratio"] = fr
                text += f"; Flower wall / plain loop wall = **{fr:.3f}×**"
            text += (f". Final weights fedmpi vs plain loop: identical={cmp['identical']}, max |diff| "
                     f"{cmp['max_abs_diff']:.3g} ({cmp['differing_elements']} of {cmp['numel']} differ).")
        body.append(text)
    intro = ("Compute-bound: tiny BERT (hidden 128, 4 layers, max_length 48, all parameters trained), "
             "100 clients, 10 per round, 5 local steps of 16. Overhead-bound: tiny BERT (hidden 32, 2 layers), "
             "1000 clients, 20 per round, 1 local step. fedmpi on %d ranks (1 thread each); Flower simulation "
             "with Ray, 1 CPU per client actor; the plain loop is one process with one thread (the faster "
             "setting for these small matrices here, and a rank's kernels, so weights can match bitwise). Wall includes "
             "start-up (process start to exit); s/round is the round loop alone; fedmpi's start-up = wall − "
             "round loop, Flower's = process start → first round. Runs interleaved." % ranks)
    return Section("fedmpi vs Flower simulation vs the plain loop", intro + "\n\n" + "\n\n".join(body),
                   figures, cmds)


def main(argv: list[str]) -> None:
    from bench.common import usage

    if usage(argv, __doc__):
        return
    if argv[0] == "--bench":
        ap = argparse.ArgumentParser()
        ap.add_argument("--bench", action="store_true")
        ap.add_argument("--reps", type=int, default=1)
        ap.add_argument("--compute-rounds", type=int, default=10)
        ap.add_argument("--overhead-rounds", type=int, default=10)
        a = ap.parse_args(argv)
        print(bench(a.reps, a.compute_rounds, a.overhead_rounds).markdown())
        return
    why = flower_available()
    if why:
        raise SystemExit(why)
    run_flower(argv[0], argv[1], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
