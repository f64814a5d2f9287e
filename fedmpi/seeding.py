"""Seeds derived from (seed, round, client, ...): never from the rank, so the
same experiment gives the same numbers however clients are packed."""
from __future__ import annotations

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def seed_torch(*parts: int) -> None:
    torch.manual_seed(derive_seed(*parts))
