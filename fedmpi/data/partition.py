"""Client partitions of the training set: iid, Dirichlet label skew, label
shards, quantity skew. Deterministic in the seed."""
from __future__ import annotations

import numpy as np

from fedmpi.errors import ConfigError


def _check(n: int, num_clients: int) -> None:
    if num_clients > n:
        raise ConfigError(f"more clients ({num_clients}) than training samples ({n}); "
                          "lower federation.num_clients or use more data")


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_clients)]


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator,
              min_size: int = 1, tries: int = 100) -> list[np.ndarray]:
    """Per class, split its samples over clients in Dir(alpha) proportions;
    small alpha = strong label skew. Redraw until every client has min_size."""
    classes = np.unique(labels)
    for _ in range(tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for k in classes:
            idx = rng.permutation(np.flatnonzero(labels == k))
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for c, chunk in enumerate(np.split(idx, cuts)):
                parts[c].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(f"dirichlet partition with alpha={alpha} left a client without data after {tries} draws; "
                      "raise data.alpha or lower federation.num_clients")


def shards(labels: np.ndarray, num_clients: int, per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Sort by label, cut into num_clients*per_client shards, deal per_client to each."""
    n_shards = num_clients * per_client
    if n_shards > len(labels):
        raise ConfigError(f"{n_shards} shards requested but only {len(labels)} samples")
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, n_shards)
    deal = rng.permutation(n_shards).reshape(num_clients, per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in deal]


def quantity(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """IID labels, Dirichlet(alpha) client sizes (each client at least one sample)."""
    n = len(labels)
    props = rng.dirichlet(np.full(num_clients, alpha))
    sizes = 1 + np.floor(props * (n - num_clients)).astype(int)
    sizes[np.argmax(sizes)] += n - sizes.sum()
    perm = rng.permutation(n)
    return [np.sort(p) for p in np.split(perm, np.cumsum(sizes)[:-1])]


def partition(labels: np.ndarray, num_clients: int, scheme: str, *, alpha: float = 0.5,
              shards_per_client: int = 2, seed: int = 0) -> list[np.ndarray]:
    labels = np.asarray(labels)
    _check(len(labels), num_clients)
    rng = np.random.default_rng([seed, 0xDA7A])
    if scheme == "iid":
        return iid(labels, num_clients, rng)
    if scheme == "dirichlet":
        return dirichlet(labels, num_clients, alpha, rng)
    if scheme == "shards":
        return shards(labels, num_clients, shards_per_client, rng)
    if scheme == "quantity":
        return quantity(labels, num_clients, alpha, rng)
    raise ConfigError(f"unknown data.partition '{scheme}'")
