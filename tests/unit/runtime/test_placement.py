"""The placement plan: which rank computes where and which backend carries its
tensors, from what each rank sees (mocked device counts; no GPU needed)."""
from __future__ import annotations

import pytest

from fedmpi.errors import ConfigError
from fedmpi.runtime.placement import Plan, Seat, plan


def one_host(ranks: int, gpus: int, host: str = "box") -> list[Seat]:
    ids = tuple(f"GPU-{i}" for i in range(gpus))
    return [Seat(r, host, r, ids) for r in range(ranks)]


def devices(p: Plan) -> list[str]:
    return [x.device for x in p.placements]


def test_no_gpu_is_gloo_on_cpu():
    p = plan(one_host(3, 0))
    assert p.backend == "gloo" and devices(p) == ["cpu"] * 3 and {x.transport for x in p.placements} == {"cpu"}


def test_one_gpu_three_ranks_share_it_through_cpu_staging():
    """The most common researcher machine: NCCL would refuse two ranks on one GPU."""
    p = plan(one_host(3, 1))
    assert p.backend == "gloo"
    assert devices(p) == ["cuda:0"] * 3  # compute on the GPU
    assert {x.transport for x in p.placements} == {"cpu"}  # the Link stages through host memory
    assert "ranks outnumber GPUs" in p.reason and "box: 3 ranks, 1 GPU" in p.reason


def test_four_gpus_five_ranks_spread_clients_first_server_shares():
    p = plan(one_host(5, 4))
    assert p.backend == "gloo"
    # clients 1-4 on GPUs 0-3, the server on the least loaded one (GPU 0)
    assert devices(p) == ["cuda:0", "cuda:0", "cuda:1", "cuda:2", "cuda:3"]


def test_four_gpus_four_ranks_is_nccl_with_the_server_on_the_spare_gpu():
    p = plan(one_host(4, 4))
    assert p.backend == "nccl"
    assert devices(p) == ["cuda:3", "cuda:0", "cuda:1", "cuda:2"]
    assert [x.transport for x in p.placements] == devices(p)


def test_more_gpus_than_ranks():
    p = plan(one_host(3, 8))
    assert p.backend == "nccl" and devices(p) == ["cuda:2", "cuda:0", "cuda:1"]


def test_explicit_nccl_that_cannot_work_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"runtime.backend=nccl needs one GPU per rank, but on box ranks 0-2 "
                                          r"would share GPU GPU-0 \(box: 3 ranks, 1 GPU\)"):
        plan(one_host(3, 1), backend="nccl")
    with pytest.raises(ConfigError, match="runtime.backend=nccl needs a GPU for every rank, but no rank sees"):
        plan(one_host(3, 0), backend="nccl")


def test_explicit_gloo_keeps_compute_on_the_gpus():
    p = plan(one_host(4, 4), backend="gloo")
    assert p.backend == "gloo" and devices(p) == ["cuda:3", "cuda:0", "cuda:1", "cuda:2"]
    assert {x.transport for x in p.placements} == {"cpu"} and "runtime.backend=gloo" in p.reason


def test_device_cpu_ignores_the_gpus_and_device_cuda_requires_them():
    assert devices(plan(one_host(3, 2), device="cpu")) == ["cpu"] * 3
    with pytest.raises(ConfigError, match="runtime.device=cuda but ranks 0-2 see no GPU"):
        plan(one_host(3, 0), device="cuda")


def test_a_rank_without_gpu_forces_staging_and_computes_on_cpu():
    seats = one_host(2, 1) + [Seat(2, "cpu-node", 0, ())]
    p = plan(seats)
    assert p.backend == "gloo" and devices(p) == ["cuda:0", "cuda:0", "cpu"] and "rank 2 see no GPU" in p.reason


def test_visible_order_is_respected():
    """CUDA_VISIBLE_DEVICES=2,3 on both ranks: indices are into the rank's own list."""
    seats = [Seat(0, "h", 0, ("GPU-c", "GPU-d")), Seat(1, "h", 1, ("GPU-c", "GPU-d"))]
    p = plan(seats)
    assert p.backend == "nccl" and [(x.device, x.gpu) for x in p.placements] == [("cuda:1", "GPU-d"),
                                                                                 ("cuda:0", "GPU-c")]


def test_plan_round_trips_through_json_and_describes_itself():
    p = plan(one_host(5, 4))
    assert Plan.from_json(p.to_json()) == p
    text = p.describe()
    assert text.splitlines()[0] == "fedmpi: placement: backend gloo (CPU staging: ranks outnumber GPUs, box: 5 ranks, 4 GPUs)"
    assert "cuda:0 [GPU-0]: ranks 0-1" in text and "cuda:3 [GPU-3]: rank 4" in text
