"""Codecs under real mpiexec: every ledger row charges the codec's encoded size, and a lossy
codec with error feedback gives the same metrics on 3 and 2 ranks (all clients on one client
rank), and differs from the same run in fp32."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_ok, launch
from fedmpi.net.codec import CodecKey
from fedmpi.net.codecs.half import FP16
from fedmpi.net.codecs.integer import Int8

pytestmark = pytest.mark.mpi
SETS = ("federation.rounds=3", "federation.num_clients=7", "federation.clients_per_round=4",
        "transport.up.name=int8", "transport.up.block_size=64", "transport.up.error_feedback=true",
        "transport.down.name=fp16", "data.partition=dirichlet")


def encoded(codec, numel: int) -> int:
    return int(codec.encode(torch.zeros(numel), CodecKey(0, 0, 0, "update")).numel())


def test_ledger_charges_encoded_bytes_and_packing_does_not_matter(tmp_path):
    three, two = launch(tmp_path, 3, *SETS, name="r3"), launch(tmp_path, 2, *SETS, name="r2")
    assert_ok(three)
    assert_ok(two)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("wall_seconds", "transport_bytes")}  # noqa: E731
                          for r in rows]
    assert strip(three.metrics) == strip(two.metrics) and three.ledger == two.ledger
    n = three.summary["trainable_params"]
    up = {r["bytes"] for r in three.ledger if r["kind"] == "update"}
    down = {r["bytes"] for r in three.ledger if r["kind"] == "model"}
    assert up == {encoded(Int8(Int8.Options(block_size=64)), n)}
    assert down == {encoded(FP16(), n)}
    assert up.pop() < n * 4 / 3.7 and down.pop() < n * 4 / 1.99
    assert three.summary["client_state"]["clients"] > 0  # the error-feedback residuals live in the store
    plain = launch(tmp_path, 2, *[s for s in SETS if not s.startswith("transport.")], name="fp32")
    assert_ok(plain)  # the numerics are the codec's: the same run in fp32 learns a (slightly) different model
    assert [m["loss"] for m in plain.metrics][1:] != [m["loss"] for m in three.metrics][1:]
    assert abs(plain.metrics[-1]["loss"] - three.metrics[-1]["loss"]) < 0.1
