"""Federated LLM fine-tuning cost: a SmolLM2 LoRA round in fedmpi vs a plain
single-process PyTorch loop doing the same computation (same model, sampled
clients, per-client batches, seeds, a fresh AdamW per client per round, the
sample-weighted float64 average), training tokens/s, and the peak memory of a
client rank hosting 1 vs 20 virtual clients.

  python -m bench.llm --bench [--reps N] [--rounds R]     # the comparison, as markdown
  python -m bench.llm plain CONFIG OUT.json [KEY=VALUE ...]  # one plain-loop run
  python -m bench.llm zeroshot CONFIG [KEY=VALUE ...]      # metrics of the untrained model

fedmpi runs on 2 ranks (server + one client rank, 1 thread each), the plain loop
on 1 thread. Start-up (imports, data, model load, process group) is excluded
from the ratios and reported apart; rounds are timed from the run's own
records (metrics.jsonl `wall_seconds`; the plain loop's per-round clock).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

CONFIG = "configs/llm-chitchat.yaml"
# 10 participants, 2 per round, 4 local steps of 4 sequences (<= 96 tokens); the final
# round evaluates 8 held-out replies; no generations.
ROUND = ("federation.num_clients=10", "federation.clients_per_round=2", "federation.eval_every=1000",
         "data.max_test_samples=8", "task_options.generations=0", "output.checkpoint=true")


def plain_rounds(config: str, overrides: list[str]) -> dict:
    """The FedAvg rounds of `config` in one process, no framework: what fedmpi must compute."""
    from fedmpi.config import load_config
    from fedmpi.data.federated import FederatedData
    from fedmpi.engine.sampling import sample_clients
    from fedmpi.engine.training import make_optimizer, to_device
    from fedmpi.experiment import prepare
    from fedmpi.models.methods import trainable
    from fedmpi.net.flat import flatten, unflatten_into
    from fedmpi.seeding import seed_torch

    t0 = time.perf_counter()
    cfg = load_config(config, overrides)
    prep = prepare(cfg)
    task, model, fed, t = prep.task, prep.model, cfg.federation, cfg.train
    data = FederatedData(prep.dataset, prep.parts, task.encoder(prep.tokenizer), cfg.seed)
    params = [p for _, p in trainable(model)]
    startup = time.perf_counter() - t0
    cpu = torch.device("cpu")
    glob = flatten(params).clone()
    rounds, tokens = [], 0
    for rnd in range(fed.rounds):
        r0 = time.perf_counter()
        sampled = sample_clients(fed.num_clients, fed.clients_per_round, cfg.seed, rnd, fed.over_selection)
        acc = torch.zeros(glob.numel(), dtype=torch.float64)
        weight = 0
        for c in sampled:
            unflatten_into(glob, params)
            seed_torch(cfg.seed, rnd, c)
            opt = make_optimizer(params, t)
            model.train()
            for batch in data.client_batches(c, rnd, t.local_steps, t.batch_size):
                batch = to_device(batch, cpu)
                tokens += int(batch["attention_mask"].sum())
                opt.zero_grad(set_to_none=True)
                task.loss(model, batch).backward()
                opt.step()
            w = data.client_size(c)
            acc.add_(flatten(params), alpha=w)
            weight += w
        glob = (acc / weight).to(glob.dtype)
        rounds.append(time.perf_counter() - r0)
    unflatten_into(glob, params)
    e0 = time.perf_counter()
    metrics = task.evaluate(model, data.test_batches(t.eval_batch_size), cpu)
    rounds[-1] += time.perf_counter() - e0  # fedmpi's last round evaluates too
    return {"state": glob.tolist(), "startup_s": startup, "round_s": rounds, "train_tokens": tokens, **metrics}


def zeroshot(config: str, overrides: list[str]) -> dict:
    """The task's metrics of the model before any training (the baseline a run must beat)."""
    from fedmpi.config import load_config
    from fedmpi.data.federated import FederatedData
    from fedmpi.experiment import prepare

    cfg = load_config(config, overrides)
    prep = prepare(cfg)
    data = FederatedData(prep.dataset, prep.parts, prep.task.encoder(prep.tokenizer), cfg.seed)
    return prep.task.evaluate(prep.model, data.test_batches(cfg.train.eval_batch_size), torch.device("cpu"))


def memory(tmp: Path, config: Path) -> tuple[dict[int, list[int]], list[str]]:
    """Peak RSS per rank, one client rank hosting 1 vs 20 virtual clients (one local step each)."""
    from bench.common import fedmpi_cmd, run_measured, shown

    peaks, cmds = {}, []
    for k in (1, 20):
        # max_length 32: every batch is 4 x 32 tokens, so peaks differ only by what each client adds
        # (at 96, more clients meet more of the 32/64/96 widths, and the widest batch sets the peak)
        cmd = fedmpi_cmd(2, tmp, f"mem{k}", *ROUND, "federation.rounds=1", f"federation.num_clients={k}",
                         f"federation.clients_per_round={k}", "train.local_steps=1", "output.checkpoint=false",
                         "model.max_length=32", config=config)
        run_measured(cmd, timeout=900).check()
        peaks[k] = json.loads((tmp / f"mem{k}" / "summary.json").read_text())["peak_memory_bytes"]
        cmds.append(shown(cmd))
    return peaks, cmds


def bench(reps: int = 2, rounds: int = 3) -> "Section":
    from bench.common import PY, ROOT, Section, fedmpi_cmd, median, mib, run_measured, shown, table, verdict

    tmp = Path(tempfile.mkdtemp(prefix="bench_llm_"))
    config = ROOT / CONFIG
    sets = (*ROUND, f"federation.rounds={rounds}")
    fed_round, plain_round, fed_start, plain_start, fed_run, plain_run = [], [], [], [], [], []
    fed_cmd = plain_cmd = None
    same = None
    plain = {}
    for rep in range(reps):  # interleaved: fedmpi, plain, fedmpi, plain, ...
        fed_cmd = fedmpi_cmd(2, tmp, f"fed{rep}", *sets, config=config)
        m = run_measured(fed_cmd, timeout=900).check()
        run = tmp / f"fed{rep}"
        summary = json.loads((run / "summary.json").read_text())
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        fed_round.append(median([r["wall_seconds"] for r in rows[:-1]]))
        fed_run.append(sum(r["wall_seconds"] for r in rows))
        fed_start.append(m.wall - summary["wall_seconds"])
        fed_state = torch.load(run / "checkpoint.pt", weights_only=False)["state"]["trainable"]
        out = tmp / f"plain{rep}.json"
        plain_cmd = [PY, "-m", "bench.llm", "plain", str(config), str(out), *sets]
        m = run_measured(plain_cmd, timeout=900, extra_env={"OMP_NUM_THREADS": "1"}).check()
        plain = json.loads(out.read_text())
        plain_round.append(median(plain["round_s"][:-1]))
        plain_run.append(sum(plain["round_s"]))
        plain_start.append(plain["startup_s"])
        same = torch.equal(fed_state, torch.tensor(plain.pop("state"), dtype=fed_state.dtype))
    tokens_per_round = plain["train_tokens"] / rounds
    ratio_round = median(fed_round) / median(plain_round)
    ratio_run = median(fed_run) / median(plain_run)

    peaks, mem_cmds = memory(tmp, config)
    mem_ratio = peaks[20][1] / peaks[1][1]

    rows = [["fedmpi launch -n 2", median(fed_round), median(fed_run), tokens_per_round / median(fed_round),
             median(fed_start)],
            ["plain loop (1 process)", median(plain_round), median(plain_run), tokens_per_round / median(plain_round),
             median(plain_start)]]
    body = (f"SmolLM2-135M-Instruct (float32, dequantised from Q4_1) + LoRA r=8 on q/v (460,800 parameters), "
            f"Chit Chat participants as clients: 2 clients per round, 4 local steps of 4 sequences padded to "
            f"32-token buckets (<= 96), {rounds} rounds, the final one evaluating 8 held-out replies; "
            f"{tokens_per_round:.0f} training tokens per round (padding excluded). 1 thread per process; "
            f"median of {reps} interleaved repetitions.\n\n"
            + table(["run", "round s (no eval)", "all rounds s", "train tokens/s", "start-up s"], rows)
            + f"\n\n**fedmpi / plain loop = {ratio_round:.3f}× per round** ({verdict(ratio_round, 1.15)} ≤ 1.15×); "
              f"{ratio_run:.3f}× over all rounds including the final evaluation. Final LoRA state bitwise "
              f"identical to the plain loop's: {same}. Start-up (imports, chitchat JSON, cached SmolLM2 load; "
              f"fedmpi also the process group and per-rank imports) is excluded above.\n\n"
            + "Memory: one round of one local step per client, model.max_length 32 so every batch is 4 x 32 "
              "tokens (at 96 more clients meet more of the 32/64/96 widths and the widest batch sets the peak, "
              "which is not a per-client cost).\n\n"
            + table(["virtual clients on the client rank", "peak RSS server", "peak RSS client rank"],
                    [[k, mib(peaks[k][0]), mib(peaks[k][1])] for k in (1, 20)])
            + f"\n\n**peak memory, 20 vs 1 virtual clients = {mem_ratio:.3f}×** ({verdict(mem_ratio, 1.1)} ≤ 1.1×): "
              "clients share one model; a client adds its encoded examples and a LoRA-sized AdamW state "
              "that is freed after its turn.")
    figures = {"round_ratio": ratio_round, "run_ratio": ratio_run, "fed_round_s": median(fed_round),
               "plain_round_s": median(plain_round), "tokens_per_round": tokens_per_round,
               "fed_startup_s": median(fed_start), "plain_startup_s": median(plain_start), "identical": same,
               "peak_client_rank_1": peaks[1][1], "peak_client_rank_20": peaks[20][1], "memory_ratio": mem_ratio}
    return Section("Federated LLM (SmolLM2 LoRA) vs a plain loop; memory per virtual client", body, figures,
                   [shown(fed_cmd), shown(plain_cmd), *mem_cmds])


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    if argv[0] == "--bench":
        ap = argparse.ArgumentParser()
        ap.add_argument("--bench", action="store_true")
        ap.add_argument("--reps", type=int, default=2)
        ap.add_argument("--rounds", type=int, default=3)
        ap.add_argument("--memory-only", action="store_true")
        a = ap.parse_args(argv)
        if a.memory_only:
            from bench.common import ROOT

            peaks, cmds = memory(Path(tempfile.mkdtemp(prefix="bench_llm_")), ROOT / CONFIG)
            print(json.dumps({"peaks": peaks, "ratio": peaks[20][1] / peaks[1][1], "commands": cmds}, indent=1))
            return
        section = bench(a.reps, a.rounds)
        print(section.markdown())
        print(json.dumps(section.figures, indent=1))
        return
    if argv[0] == "plain" and len(argv) >= 3:
        torch.set_num_threads(1)  # as a 2-rank fedmpi client on 2 cores: the same kernels
        Path(argv[2]).write_text(json.dumps(plain_rounds(argv[1], argv[3:])))
        return
    if argv[0] == "zeroshot" and len(argv) >= 2:
        print(json.dumps(zeroshot(argv[1], argv[2:])))
        return
    raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
