"""Whether a run may continue from its folder, decided before anything is written.

A resumed run must be the same experiment: a changed lr or model would be
trained on top of the old checkpoint while config.yaml claimed the whole run
used the new values. What may change is declared on the options themselves
(`option(..., resume=True)`: rounds, evaluation cadence, output, threads);
`fedmpi.config.resume_changes` lists every other difference, and any is one
error naming old and new values. ``--resume`` without a checkpoint is an
error too; ``--resume-or-start`` starts fresh then, and says so.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from fedmpi.config import ExperimentConfig, config_from_dict, dotted_keys, resume_changes
from fedmpi.engine.outputs import CHECKPOINT
from fedmpi.errors import ConfigError

MODES = ("no", "yes", "auto")  # no --resume / --resume / --resume-or-start
# The folder is found by these two, so by construction they name the same run
# (one may be written relative, the other absolute).
_WHERE = ("name", "output.dir")


def previous_config(run_dir: Path) -> ExperimentConfig:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume: {run_dir} has a checkpoint but no config.yaml to check the experiment "
                          "against; start a new run instead")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
        return config_from_dict(tree)
    except (yaml.YAMLError, ConfigError) as exc:
        raise ConfigError(f"--resume: the run's {path} does not load any more ({exc}); start a new run "
                          "instead") from None


def should_resume(cfg: ExperimentConfig, mode: str, announce: bool = True) -> bool:
    """True: continue from the checkpoint; False: start fresh. ConfigError when the
    request cannot be honoured (before anything is written)."""
    if mode not in MODES:
        raise ValueError(f"resume mode {mode!r} not in {MODES}")
    if mode == "no":
        return False
    run_dir = cfg.run_dir
    if not (run_dir / CHECKPOINT).is_file():
        if mode == "yes":
            why = "the folder does not exist" if not run_dir.exists() else "no round was checkpointed there"
            raise ConfigError(f"--resume: no checkpoint to resume in {run_dir} ({why}); run without --resume "
                              "to start it fresh, or use --resume-or-start")
        if announce:
            print(f"fedmpi: notice: --resume-or-start: no checkpoint in {run_dir}; starting the run fresh",
                  file=sys.stderr, flush=True)
        return False
    old = previous_config(run_dir)
    changed = [k for k in resume_changes(old, cfg) if k not in _WHERE]
    if changed:
        before, after = dotted_keys(old.to_dict()), dotted_keys(cfg.to_dict())
        diffs = "; ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed[:8])
        more = f" (and {len(changed) - 8} more)" if len(changed) > 8 else ""
        raise ConfigError(f"--resume: {run_dir} was run with a different experiment: {diffs}{more}. Only keys "
                          "declared resumable may change (federation.rounds, federation.eval_every, output.*, "
                          "runtime.threads/timeout_s, ...); start a new run (another name) for a different one")
    return True
