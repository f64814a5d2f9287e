"""The job's runtime: bootstrap (MPI / Slurm / torchrun -> torch.distributed),
placement (which rank computes on which device, over which backend) and the
Runtime every rank carries."""
from __future__ import annotations

from fedmpi.runtime.bootstrap import detect_launcher, first_slurm_host, init_runtime, shutdown
from fedmpi.runtime.placement import Placement, Plan, Seat, plan
from fedmpi.runtime.runtime import Runtime

__all__ = ["Runtime", "init_runtime", "shutdown", "detect_launcher", "first_slurm_host", "Plan", "Placement",
           "Seat", "plan"]
