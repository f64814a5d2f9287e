"""The limit: a single-process plain PyTorch loop doing exactly what a fedmpi
FedAvg run computes (same model init, client sampling, per-client batches,
seeds, optimizer per client per round, sample-weighted float64 average), with
no framework, no MPI, no metering. fedmpi's wall time / this loop's (start-up
included) says how close fedmpi is to the limit; the final weights must match.

  python -m bench.plain_loop CONFIG OUT.pt [KEY=VALUE ...]   # one plain run
  python -m bench.plain_loop --bench [--reps N] [--rounds R]  # side by side with fedmpi
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from bench.common import Section


def train_client(model, params, data, cfg, rnd: int, client: int) -> tuple[int, float]:
    """One client's local steps from the parameters now loaded: (samples, loss sum)."""
    from fedmpi.engine.training import make_optimizer, to_device
    from fedmpi.seeding import seed_torch

    seed_torch(cfg.seed, rnd, client)
    opt = make_optimizer(params, cfg.train)
    model.train()
    n = 0
    loss_sum = 0.0
    for batch in data.client_batches(client, rnd, cfg.train.local_steps, cfg.train.batch_size):
        batch = to_device(batch, torch.device("cpu"))
        opt.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        k = int(batch["labels"].shape[0])
        n += k
        loss_sum += float(loss.detach()) * k
    return n, loss_sum


def plain_fedavg(config: str, overrides: list[str]) -> dict:
    """The FedAvg loop, evaluating the global model every `federation.eval_every` rounds
    (and after the last), as fedmpi does; `startup_s` is process start -> first round."""
    import psutil

    from fedmpi.engine.sampling import sample_clients
    from fedmpi.config import load_config
    from fedmpi.experiment import prepare
    from fedmpi.models.methods import trainable
    from fedmpi.net.flat import flatten, unflatten_into

    cfg = load_config(config, overrides)
    prep = prepare(cfg)
    data = prep.federated_data(cfg.seed)
    model = prep.model
    params = [p for _, p in trainable(model)]
    fed = cfg.federation
    glob = flatten(params)
    loss = float("nan")
    ev: dict = {}
    evals = []
    first_round = time.time()
    startup = first_round - psutil.Process().create_time()
    for rnd in range(fed.rounds):
        sampled = sample_clients(fed.num_clients, fed.clients_per_round, cfg.seed, rnd, fed.over_selection)
        acc = torch.zeros(glob.numel(), dtype=torch.float64)
        weight, loss_w = 0, 0.0
        for c in sampled:
            unflatten_into(glob, params)
            processed, loss_sum = train_client(model, params, data, cfg, rnd, c)
            w = data.client_size(c)
            acc.add_(flatten(params), alpha=w)
            weight += w
            loss_w += loss_sum / max(1, processed) * w
        glob = (acc / weight).to(glob.dtype)
        loss = loss_w / weight
        if (rnd + 1) % fed.eval_every == 0 or rnd == fed.rounds - 1:
            unflatten_into(glob, params)
            ev = prep.task.evaluate(model, data.test_batches(cfg.train.eval_batch_size), torch.device("cpu"))
            evals.append({"round": rnd, **ev})
    loop = time.time() - first_round
    return {"state": glob, "final_loss": loss, **ev, "evals": evals, "startup_s": startup, "rounds_s": loop,
            "per_round_s": loop / fed.rounds}


def compare_states(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    diff = (a.double() - b.double()).abs()
    return {"max_abs_diff": float(diff.max()), "identical": bool(torch.equal(a, b)),
            "differing_elements": int((diff > 0).sum()), "numel": a.numel()}


def bench(reps: int = 2, rounds: int = 20, ranks: int = 3) -> "Section":
    from bench.common import COMPUTE_BOUND, PY, Section, fedmpi_cmd, median, run_measured, shown, table

    sets = (*COMPUTE_BOUND, f"federation.rounds={rounds}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_plain_"))
    fed_w, plain_w, fed_cmd, plain_cmd = [], [], None, None
    fed_state = plain = fed_summary = None
    for rep in range(reps):  # interleaved: fedmpi, plain, fedmpi, plain, ...
        fed_cmd = fedmpi_cmd(ranks, tmp, f"fed{rep}", *sets)
        m = run_measured(fed_cmd).check()
        fed_w.append(m.wall)
        fed_state = torch.load(tmp / f"fed{rep}" / "checkpoint.pt", weights_only=False)["state"]["trainable"]
        fed_summary = json.loads((tmp / f"fed{rep}" / "summary.json").read_text())
        out = tmp / f"plain{rep}.pt"
        plain_cmd = [PY, "-m", "bench.plain_loop", "configs/tiny.yaml", str(out), *sets]
        m = run_measured(plain_cmd).check()
        plain_w.append(m.wall)
        plain = torch.load(out, weights_only=False)
    cmp = compare_states(fed_state, plain["state"])
    ratio = median(fed_w) / median(plain_w)
    rows = [["fedmpi launch -n %d" % ranks, median(fed_w), fed_summary["final_loss"], fed_summary["final_accuracy"]],
            ["plain loop (1 process)", median(plain_w), plain["final_loss"], plain["accuracy"]]]
    body = (f"Compute-bound workload: tiny BERT (hidden 128, 4 layers, {fed_summary['trainable_params']:,} "
            f"parameters, all trained; max_length 48), "
            f"100 clients, 10 per round, 5 local steps of batch 16, {rounds} rounds, AdamW. "
            f"Wall includes start-up; median of {reps} interleaved repetitions.\n\n"
            + table(["run", "wall s", "final train loss", "final accuracy"], rows)
            + f"\n\n**fedmpi / plain loop = {ratio:.3f}×** (target ≤ 1.25×). "
            f"Final weights: identical={cmp['identical']}, max |diff| = {cmp['max_abs_diff']:.3g} "
            f"over {cmp['numel']} parameters ({cmp['differing_elements']} differ).")
    return Section("fedmpi vs a plain PyTorch loop (the limit)", body,
                   {"plain_ratio": ratio, "fed_wall": median(fed_w), "plain_wall": median(plain_w), **cmp},
                   [shown(fed_cmd), shown(plain_cmd)])


def main(argv: list[str]) -> None:
    from bench.common import usage

    if usage(argv, __doc__):
        return
    if argv[0] == "--bench":
        ap = argparse.ArgumentParser()
        ap.add_argument("--bench", action="store_true")
        ap.add_argument("--reps", type=int, default=2)
        ap.add_argument("--rounds", type=int, default=20)
        a = ap.parse_args(argv)
        print(bench(a.reps, a.rounds).markdown())
        return
    config, out, overrides = argv[0], argv[1], argv[2:]
    # One thread by default: the same kernels as a 1-thread fedmpi rank (so the final weights
    # can match bitwise), and the faster setting for these small matrices (compute-bound
    # workload, 20 rounds, 2 cores: 104.5 s at 1 thread, 160 s at 2). BENCH_PLAIN_THREADS=N overrides.
    torch.set_num_threads(int(os.environ.get("BENCH_PLAIN_THREADS", 1)))
    t0 = time.perf_counter()
    res = plain_fedavg(config, overrides)
    res["seconds"] = time.perf_counter() - t0
    torch.save(res, out)


if __name__ == "__main__":
    main(sys.argv[1:])
