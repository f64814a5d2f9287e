"""Re-pricing a finished run under other links or devices, without re-running it.

`fedmpi report RUNS --recost network.profile=mobile --recost compute.client_gflops=10`
rebuilds each client's link profile and device speed from the run's own config
with the overrides applied (same seed, so heterogeneity draws the same factors),
re-times every ledger row — a message by latency + bytes·8/bandwidth, local work
by FLOPs / device speed, the server's work by FLOPs / server speed — and recomputes
each round's emulated time as the engine does: the slowest arrived client's sum,
plus the server's work.

Exact when who took part did not depend on time: a run with a deadline or with
over-selection (keep the first k to finish) is refused, since under other links
other clients would have made the cut. Only network.* and compute.* may change.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

from fedmpi.report.runs import ReportError, Run

ALLOWED = ("network.", "compute.")


def parse(pairs: list[str]) -> list[str]:
    for item in pairs:
        key = item.split("=", 1)[0].strip()
        if "=" not in item or not key.startswith(ALLOWED):
            raise ReportError(f"--recost {item!r}: give network.* or compute.* keys as key=value "
                              f"(e.g. network.profile=mobile, compute.client_gflops=10)")
    return list(pairs)


def _config(run: Run, overrides: list[str]) -> Any:
    from fedmpi.config import config_from_dict, parse_overrides
    from fedmpi.errors import ConfigError

    tree = copy.deepcopy(run.config)
    if not tree:
        raise ReportError(f"{run.path}: no config.yaml to re-price from")
    import yaml

    for key, raw in parse_overrides(overrides):
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    if any(k.startswith("network.profile=") for k in overrides):  # the preset fills what is not given
        for k in ("up_mbps", "down_mbps", "latency_ms"):
            if not any(o.startswith(f"network.{k}=") for o in overrides):
                tree["network"][k] = None
    try:
        return config_from_dict(tree)
    except ConfigError as exc:
        raise ReportError(f"{run.path}: --recost gives an invalid config: {exc}") from None


def recost(run: Run, overrides: list[str]) -> Run:
    """A copy of `run` whose ledger seconds, per-round emulated time and summary time
    are what the same traffic and work cost under `overrides`."""
    from fedmpi.net.profiles import client_profiles, client_speeds

    cfg = _config(run, overrides)
    fed = cfg.federation
    if fed.deadline_s is not None or fed.over_selection > 1:
        raise ReportError(f"{run.name}: cannot re-price exactly: with "
                          f"{'federation.deadline_s' if fed.deadline_s is not None else 'federation.over_selection'}"
                          f" who took part depended on the emulated times, which --recost changes")
    n = fed.num_clients
    profiles = client_profiles(cfg.network, n, cfg.seed)
    speeds = client_speeds(cfg.compute.client_gflops, cfg.compute.heterogeneity, n, cfg.seed)
    server_speed = cfg.compute.server_gflops * 1e9
    ledger = []
    for row in run.ledger:
        row = dict(row)
        d, c = row.get("direction"), int(row.get("client", -1))
        if d in ("up", "down"):
            row["seconds"] = profiles[c].seconds(int(row["bytes"]), d)
        elif d == "local":
            row["seconds"] = int(row["flops"]) / speeds[c]
        elif d == "server":
            row["seconds"] = int(row["flops"]) / server_speed
        ledger.append(row)
    from fedmpi.engine.sampling import sample_clients

    sampled = lambda rnd: sample_clients(fed.num_clients, fed.clients_per_round, cfg.seed, rnd,  # noqa: E731
                                         fed.over_selection, fed.sampling)
    per_round = round_times(ledger, sampled)
    metrics = []
    for m in run.metrics:
        m = dict(m)
        if m.get("round") in per_round:
            t = per_round[m["round"]]
            m["emulated_seconds"] = t
        metrics.append(m)
    summary = dict(run.summary)
    summary["emulated_seconds"] = sum(m.get("emulated_seconds") or 0 for m in metrics)
    summary["recost"] = list(overrides)
    return Run(run.path, summary, run.config, metrics, ledger)


def round_times(ledger: list[dict[str, Any]], sampled) -> dict[int, float]:
    """Each round's emulated time, as the Ledger computes it: the slowest client not
    left out (a sampled client with no upload dropped out), plus the server's work."""
    by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in ledger:
        by_round[int(row["round"])].append(row)
    out = {}
    for rnd, rows in by_round.items():
        uploaded = {int(r["client"]) for r in rows if r.get("direction") == "up"}
        dropped = set(sampled(rnd)) - uploaded
        per_client: dict[int, float] = defaultdict(float)
        server = 0.0
        for r in rows:
            if r["direction"] == "server":
                server += float(r["seconds"])
            else:
                per_client[int(r["client"])] += float(r["seconds"])
        live = [s for c, s in per_client.items() if c not in dropped]
        out[rnd] = (max(live) if live else 0.0) + server
    return out
