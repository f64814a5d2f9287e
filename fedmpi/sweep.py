"""Parameter sweeps: expand a grid file into experiments and run one of them.

A grid file names a base config, fixed overrides and per-key value lists::

    base: ../configs/tiny.yaml          # relative to this file
    set: {federation.rounds: 2}         # applied to every entry
    grid:                               # cartesian product, last key fastest
      method.name: [lora, full]
      seed: [0, 1]
    name: "{method.name}-s{seed}"       # optional; each entry's run folder name

``cases`` (optional) are named configurations crossed with the grid, each with
its own fixed overrides and its own grid (e.g. each method with its learning
rate, or its own learning-rate range)::

    cases:
      full: {set: {method.name: full, train.lr: 5.0e-5}}
      lora: {set: {method.name: lora}, grid: {train.lr: [3.0e-4, 1.0e-3, 3.0e-3]}}
    grid: {seed: [0, 1, 2]}
    name: "{case}-lr{train.lr}-s{seed}"  # {case} is the case's name

Every entry is validated with the real config loader before anything runs, so
a typo fails the whole sweep up front instead of in array task 17 an hour in.
Each entry gets its own ``name`` and hence its own run folder.

``--run-index I`` runs entry I. Where the ranks come from depends on where we
are (``--launcher auto``):

* inside an ``srun`` step with several tasks (SLURM_STEP_ID set): this process
  is already one rank, so run in-process (``none``);
* in a Slurm batch script whose allocation has several tasks: start the ranks
  with ``srun`` (``srun``);
* anywhere else: ``fedmpi launch -n RANKS`` (``mpirun``), which finds the
  bundled mpiexec.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from fedmpi.config import load_config
from fedmpi.errors import ConfigError

GRID_KEYS = ("base", "set", "grid", "name", "cases")
LAUNCHERS = ("auto", "srun", "mpirun", "none")
DEFAULT_RANKS = 3  # one server + two client ranks: enough for any client count
_FIELD = re.compile(r"\{([^{}]+)\}")


class SweepError(ConfigError):
    """A user error in the grid file: printed as one line, exit status 2."""


@dataclass(frozen=True)
class Entry:
    index: int
    name: str
    overrides: list[str]  # "key=value", in the order they are applied (name last)
    run_dir: Path
    varied: list[str]  # the grid point alone, for listings


@dataclass(frozen=True)
class Sweep:
    grid_file: Path
    base: Path
    fixed: list[str]  # overrides shared by every entry
    entries: list[Entry]


def format_value(value: Any) -> str:
    """Render a YAML value so that ``--set key=<text>`` loads it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)  # YAML 1.1 reads "1e-05" as a string: give it a dot
        return text if "." in text or "e" not in text else text.replace("e", ".0e", 1)
    if isinstance(value, str):
        try:
            same = yaml.safe_load(value) == value
        except yaml.YAMLError:
            same = False
        return value if same and value != "" else json.dumps(value)
    return json.dumps(value)  # lists and mappings: JSON is YAML flow style


def sanitize(name: str, limit: int = 120) -> str:
    """Make a run name safe as a folder name (no slashes, spaces or quotes)."""
    clean = re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("._")
    return clean[:limit] or "run"


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def render_name(template: str, resolved: dict[str, Any], case: str | None = None) -> str:
    """Fill ``{dotted.key}`` / ``{dotted.key:spec}`` from the resolved config (``{case}``: the case's name)."""

    def field(match: re.Match[str]) -> str:
        key, _, spec = match.group(1).partition(":")
        if key.strip() == "case" and case is not None:
            return case
        try:
            value = _lookup(resolved, key.strip())
        except KeyError:
            raise SweepError(f"name template field '{{{match.group(1)}}}' is not a config key") from None
        if spec:
            try:
                return format(value, spec)
            except (TypeError, ValueError) as exc:
                raise SweepError(f"name template field '{{{match.group(1)}}}': {exc}") from None
        return format_value(value) if isinstance(value, (list, dict)) else str(value)

    return sanitize(_FIELD.sub(field, template))


def default_name(base_name: str, index: int, point: dict[str, Any]) -> str:
    """``<base>-<index>-<leaf>=<value>...``: the index keeps names unique, the rest readable."""

    def short(value: Any) -> str:
        return "+".join(map(str, value)) if isinstance(value, list) else format_value(value)

    parts = [f"{key.rsplit('.', 1)[-1]}={short(value)}" for key, value in point.items()]
    return sanitize("-".join([base_name, f"{index:03d}", *parts]))


def _read_grid(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SweepError(f"grid file not found: {path}")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SweepError(f"grid file {path} is not valid YAML: {exc}") from None
    if not isinstance(spec, dict):
        raise SweepError(f"grid file {path} must be a mapping with keys: {', '.join(GRID_KEYS)}")
    unknown = [k for k in spec if k not in GRID_KEYS]
    if unknown:
        raise SweepError(f"grid file {path}: unknown key '{unknown[0]}' (allowed: {', '.join(GRID_KEYS)})")
    if "base" not in spec or not isinstance(spec["base"], str):
        raise SweepError(f"grid file {path}: 'base' (path of the base config) is required")
    for section in ("set", "grid"):
        if not isinstance(spec.get(section) or {}, dict):
            raise SweepError(f"grid file {path}: '{section}' must be a mapping of dotted.key: value")
    for key, values in (spec.get("grid") or {}).items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"grid file {path}: grid.{key} must be a non-empty list of values")
    if "name" in (spec.get("grid") or {}):
        raise SweepError(f"grid file {path}: give per-entry names with the top-level 'name:' template, "
                         "not in grid")
    if "name" in spec and not isinstance(spec["name"], str):
        raise SweepError(f"grid file {path}: 'name' must be a template string like \"{{method.name}}-s{{seed}}\"")
    return spec


def expand(grid_file: str | Path, extra: list[str] | None = None) -> Sweep:
    """Expand and validate every entry; raises ConfigError/SweepError on bad input.

    ``extra`` are ``key=value`` overrides from the command line, applied to
    every entry after the grid file's own ``set``.
    """
    path = Path(grid_file)
    spec = _read_grid(path)
    base = path.parent / spec["base"]
    fixed = [f"{k}={format_value(v)}" for k, v in (spec.get("set") or {}).items()] + list(extra or [])
    entries: list[Entry] = []
    for case, case_set, grid in _cases(spec, path):
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            index = len(entries)
            point = dict(zip(keys, combo))
            varied = [f"{k}={format_value(v)}" for k, v in point.items()]
            overrides = fixed[:len(fixed) - len(extra or [])] + case_set + varied + list(extra or [])
            try:
                cfg = load_config(base, overrides)
            except ConfigError as exc:
                where = ", ".join([f"case {case}"] * (case is not None)
                                  + [f"{k}={format_value(v)}" for k, v in point.items()]) or "no grid keys"
                raise type(exc)(f"{exc} [grid entry {index}: {where}]") from None
            if "name" in spec:
                name = render_name(spec["name"], cfg.to_dict(), case)
            else:
                name = default_name(cfg.name if case is None else f"{cfg.name}-{case}", index, point)
            overrides.append(f"name={format_value(name)}")
            shown_point = ([f"case={case}"] if case is not None else []) + varied
            entries.append(Entry(index, name, overrides, Path(cfg.output.dir) / name, shown_point))
    seen: dict[Path, int] = {}
    for entry in entries:
        if entry.run_dir in seen:
            raise SweepError(f"entries {seen[entry.run_dir]} and {entry.index} would share the run folder "
                             f"{entry.run_dir}; put a grid key that tells them apart in the 'name' template")
        seen[entry.run_dir] = entry.index
    return Sweep(path, base, fixed, entries)


def _cases(spec: dict[str, Any], path: Path) -> list[tuple[str | None, list[str], dict[str, list[Any]]]]:
    """(case name, its fixed overrides, its grid) for each case; one unnamed case without `cases`."""
    top = spec.get("grid") or {}
    if not spec.get("cases"):
        return [(None, [], top)]
    if not isinstance(spec["cases"], dict):
        raise SweepError(f"grid file {path}: 'cases' must map case names to {{set: ..., grid: ...}}")
    out = []
    for name, body in spec["cases"].items():
        body = body or {}
        if not isinstance(body, dict) or set(body) - {"set", "grid"}:
            raise SweepError(f"grid file {path}: case '{name}' takes 'set' and 'grid' only")
        own = body.get("grid") or {}
        for key, values in own.items():
            if not isinstance(values, list) or not values:
                raise SweepError(f"grid file {path}: case '{name}' grid.{key} must be a non-empty list of values")
        clash = set(own) & set(top)
        if clash:
            raise SweepError(f"grid file {path}: case '{name}' and the top-level grid both vary {sorted(clash)[0]}")
        case_set = [f"{k}={format_value(v)}" for k, v in (body.get("set") or {}).items()]
        out.append((str(name), case_set, {**own, **top}))
    return out


def resolve_launcher(requested: str, env: dict[str, str] | None = None) -> str:
    """Pick how entry's ranks are started (see the module docstring)."""
    if requested != "auto":
        return requested
    env = dict(os.environ if env is None else env)

    def tasks(*names: str) -> int:
        for name in names:
            try:
                return int(env[name])
            except (KeyError, ValueError):
                continue
        return 1

    if "SLURM_STEP_ID" in env and tasks("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") > 1:
        return "none"
    if "SLURM_JOB_ID" in env and tasks("SLURM_NTASKS") > 1:
        return "srun"
    return "mpirun"


def command_for(entry: Entry, base: Path, launcher: str, ranks: int | None, resume: bool = False) -> list[str]:
    """The argv that runs ``entry``; for launcher ``none`` the in-process argv."""
    # Re-run array tasks: entries that had checkpointed continue, the others start (with a notice).
    sets = [arg for item in entry.overrides for arg in ("--set", item)] + (["--resume-or-start"] if resume else [])
    if launcher == "none":
        return ["run", str(base), *sets]
    if launcher == "srun":
        n = ["-n", str(ranks)] if ranks else []
        return ["srun", "--kill-on-bad-exit=1", *n, sys.executable, "-m", "fedmpi", "run", str(base), *sets]
    if launcher == "mpirun":
        return [sys.executable, "-m", "fedmpi", "launch", "-n", str(ranks or DEFAULT_RANKS), str(base), *sets]
    raise SweepError(f"unknown launcher '{launcher}'; choose one of: {', '.join(LAUNCHERS)}")


def format_table(sweep: Sweep) -> str:
    rows = [(str(e.index), e.name, " ".join(e.varied) or "-") for e in sweep.entries]
    head = ("#", "name", "overrides")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(2)]
    lines = [f"{len(rows)} entries from {sweep.grid_file} (base: {sweep.base})",
             f"every entry: {' '.join(sweep.fixed) or '-'}",
             f"{head[0]:>{widths[0]}}  {head[1]:<{widths[1]}}  {head[2]}"]
    lines += [f"{i:>{widths[0]}}  {n:<{widths[1]}}  {o}" for i, n, o in rows]
    return "\n".join(lines)


def _in_process(argv: list[str]) -> int:
    from fedmpi.runner import main as run_main  # imported only when needed

    return int(run_main(argv[1:]) or 0)


def state_of(entry: Entry) -> str:
    """'done' (summary written), 'cut' (a checkpoint without a summary) or 'new'."""
    if (entry.run_dir / "summary.json").is_file():
        return "done"
    return "cut" if (entry.run_dir / "checkpoint.pt").is_file() else "new"


def run_all(sweep: Sweep, launcher: str, ranks: int | None, resume: bool,
            run_in_process: Callable[[list[str]], int]) -> int:
    """Every entry in order, one job at a time (parallel jobs on a few cores only slow
    each other and spoil wall-clock figures). Stops at the first failure; run again
    with --resume to go on from there."""
    import time

    t0 = time.perf_counter()
    for entry in sweep.entries:
        state = state_of(entry)
        if resume and state == "done":
            print(f"fedmpi sweep: entry {entry.index}: '{entry.name}' done, skipped", file=sys.stderr, flush=True)
            continue
        cmd = command_for(entry, sweep.base, launcher, ranks, resume and state == "cut")
        print(f"fedmpi sweep: entry {entry.index} of {len(sweep.entries)}: '{entry.name}' "
              f"({'continued' if resume and state == 'cut' else 'started'}) via {launcher}",
              file=sys.stderr, flush=True)
        rc = run_in_process(cmd) if launcher == "none" else subprocess.call(cmd)
        if rc != 0:
            print(f"fedmpi sweep: entry {entry.index} failed ({rc}); fix it and re-run with --all --resume",
                  file=sys.stderr)
            return rc
    print(f"fedmpi sweep: {len(sweep.entries)} entries done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedmpi sweep", description="Expand a grid of experiments; list, count or run one.")
    p.add_argument("grid", help="grid YAML file (keys: base, set, grid, name)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true", help="print the numbered entries and exit")
    what.add_argument("--count", action="store_true", help="print the number of entries and exit")
    what.add_argument("--run-index", type=int, metavar="I", help="run entry I (e.g. $SLURM_ARRAY_TASK_ID)")
    what.add_argument("--all", action="store_true",
                      help="run every entry, one after another (with --resume: skip finished ones, continue "
                           "a cut one from its checkpoint)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="auto",
                   help="how to start the ranks of the entry (default: auto, see docs)")
    p.add_argument("-n", "--ranks", type=int, default=None,
                   help=f"ranks per entry (mpirun default {DEFAULT_RANKS}; srun default: the allocation)")
    p.add_argument("--resume", action="store_true",
                   help="continue the entry from its run folder's checkpoint, or start it if it has none "
                        "(re-run array tasks); with --all, entries whose summary.json exists are done")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra override for every entry (repeatable)")
    return p


def main(argv: list[str], run_in_process: Callable[[list[str]], int] = _in_process) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.ranks is not None and args.ranks < 2:
            raise SweepError(f"-n must be >= 2 (one server + clients), got {args.ranks}")
        sweep = expand(args.grid, args.overrides)
        if args.count:
            print(len(sweep.entries))
            return 0
        if args.all:
            return run_all(sweep, resolve_launcher(args.launcher), args.ranks, args.resume, run_in_process)
        if args.run_index is None:
            print(format_table(sweep))
            return 0
        if not 0 <= args.run_index < len(sweep.entries):
            raise SweepError(f"--run-index {args.run_index} out of range: the sweep has "
                             f"{len(sweep.entries)} entries (0..{len(sweep.entries) - 1})")
        entry = sweep.entries[args.run_index]
        launcher = resolve_launcher(args.launcher)
        cmd = command_for(entry, sweep.base, launcher, args.ranks, args.resume)
    except ConfigError as exc:
        print(f"fedmpi sweep: {exc}", file=sys.stderr)
        return 2
    print(f"fedmpi sweep: entry {entry.index} of {len(sweep.entries)}: '{entry.name}' via {launcher}",
          file=sys.stderr, flush=True)
    if launcher == "none":
        return run_in_process(cmd)
    try:
        return subprocess.call(cmd)
    except FileNotFoundError:
        print(f"fedmpi sweep: cannot start '{cmd[0]}' (launcher {launcher}); is it installed?", file=sys.stderr)
        return 2
