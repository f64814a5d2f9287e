"""The local-only baseline: one client of a federation trains alone on exactly its part."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY
from fedmpi.config import load_config
from fedmpi.errors import ConfigError
from fedmpi.experiment import preflight

SKEW = ["data.partition=dirichlet", "data.alpha=0.3"]


@pytest.mark.parametrize("client", [0, 3])
def test_only_client_trains_on_the_part_its_federation_gives_it(client):
    _, _, federation = preflight(load_config(TINY, SKEW + ["federation.num_clients=5", "federation.clients_per_round=2"]))
    alone = load_config(TINY, SKEW + [f"data.only_client={client}", "data.partition_clients=5",
                                      "federation.num_clients=1", "federation.clients_per_round=1"])
    _, _, parts = preflight(alone)
    assert len(parts) == 1 and np.array_equal(parts[0], federation[client])
    assert len(parts[0]) < sum(len(p) for p in federation)  # a part, not the pooled data (centralised)


@pytest.mark.parametrize("sets, needle", [
    (["data.only_client=1"], "data.only_client and data.partition_clients go together"),
    (["data.only_client=5", "data.partition_clients=5", "federation.num_clients=1",
      "federation.clients_per_round=1"], "is not a client of a federation of data.partition_clients 5 (0..4)"),
    (["data.only_client=1", "data.partition_clients=5"], "set federation.num_clients 1 (it is 6)"),
])
def test_bad_local_only_options_are_refused(sets, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_config(TINY, sets)
