"""Transport codecs: exact wire sizes, error bounds, keyed randomness, error feedback, config."""
from __future__ import annotations

import math

import pytest
import torch

from fedmpi.config import load_config
from fedmpi.errors import ConfigError
from fedmpi.net.codec import CodecKey, Transport
from fedmpi.net.codecs import wire as W
from fedmpi.net.codecs.base import residual_key
from fedmpi.net.codecs.nf4 import NF4_LEVELS
from fedmpi.net.codecs.sparse import top_indices
from fedmpi.registry import CODECS

KEY = CodecKey(seed=7, round=3, client=5, kind="update")
SHAPES = [(1,), (7,), (3, 5, 11), (1000003,)]
LOSSY = ["fp16", "bf16", "int8", "int4", "nf4", "topk", "randk"]


def make(name: str, **opts):
    cls = CODECS.get(name)
    return cls(cls.Options(name=name, **opts))


def sample(shape, seed=0, scale=1e-3):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def block_steps(x: torch.Tensor, block: int, level: float) -> torch.Tensor:
    """Per-element step absmax_block / level, computed independently of the codec (pad + reshape)."""
    flat = x.reshape(-1).float()
    n = flat.numel()
    nb = -(-n // block)
    padded = torch.zeros(nb * block)
    padded[:n] = flat.abs()
    absmax = padded.view(nb, block).amax(1)
    return (absmax / level).repeat_interleave(block)[:n]


# -- exact sizes -----------------------------------------------------------------------------
def expected_size(name: str, shape, opts: dict) -> int:
    """The size formulas of the codecs' docstrings, written out again by hand."""
    n, head = math.prod(shape), 5 + 8 * len(shape)
    block = opts.get("block_size", 64)
    if name in ("fp16", "bf16"):
        return head + 2 * n
    if name == "int8":
        return head + 4 + 4 * math.ceil(n / block) + n
    if name in ("int4", "nf4"):
        return head + 4 + 4 * math.ceil(n / block) + math.ceil(n / 2)
    k = min(opts["k"], n) if "k" in opts else min(n, max(1, math.floor(opts.get("fraction", 0.01) * n + 0.5)))
    value = 2 if opts.get("values") == "fp16" else 4
    if name == "topk":
        return head + 8 + min(4 * k, math.ceil(n / 8)) + value * k
    return head + 16 + value * k  # randk: k, seed, values


SIZE_CASES = [("fp16", {}), ("bf16", {}), ("int8", {}), ("int8", {"block_size": 1}), ("int8", {"block_size": 5}),
              ("int8", {"block_size": 10 ** 7}), ("int4", {}), ("int4", {"block_size": 3}), ("nf4", {}),
              ("nf4", {"block_size": 128}), ("topk", {}), ("topk", {"fraction": 0.3}), ("topk", {"k": 3}),
              ("topk", {"fraction": 0.5, "values": "fp16"}), ("randk", {}), ("randk", {"k": 4, "values": "fp16"}),
              ("randk", {"fraction": 0.9})]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name, opts", SIZE_CASES, ids=lambda v: str(v))
def test_wire_length_is_the_documented_formula(name, opts, shape):
    x = sample(shape)
    wire = make(name, **opts).encode(x, KEY)
    assert wire.dtype == torch.uint8 and wire.dim() == 1
    assert wire.numel() == expected_size(name, shape, opts)


def test_hand_computed_sizes():
    # int8, 165 values, B=64: header 5+3*8=29, block 4, 3 fp32 steps 12, 165 codes
    assert make("int8").encode(sample((3, 5, 11)), KEY).numel() == 29 + 4 + 12 + 165 == 210
    # int4, 7 values: header 13, block 4, one step 4, 4 bytes of nibbles
    assert make("int4").encode(sample((7,)), KEY).numel() == 25
    # topk 10% of 1000003: 100000 int32 indices (400000 B) lose to a 125001-byte bitmap
    wire = make("topk", fraction=0.1).encode(sample((1000003,)), KEY)
    assert wire.numel() == 13 + 8 + 125001 + 400000
    assert W.parse_header(wire).flags & W.FLAG_BITMAP
    # topk 1%: 10000 int32 indices (40000 B) beat the bitmap
    wire = make("topk", fraction=0.01).encode(sample((1000003,)), KEY)
    assert wire.numel() == 13 + 8 + 40000 + 40000 and not W.parse_header(wire).flags & W.FLAG_BITMAP


# -- self-describing wire ----------------------------------------------------------------------
@pytest.mark.parametrize("name", LOSSY)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_header_alone_decodes_the_message(name, dtype):
    x = sample((3, 5, 11)).to(dtype)
    codec = make(name)
    wire = codec.encode(x, KEY)
    header = W.parse_header(wire)
    assert wire[0] == 0xF1 and header.codec == W.CODEC_IDS[name]
    assert header.shape == (3, 5, 11) and header.dtype == dtype
    alone = W.decode_any(wire.clone())  # no codec options, no key, no `like`
    decoded = codec.decode(wire, x)
    assert decoded.dtype == dtype and decoded.shape == x.shape
    assert torch.equal(alone, decoded)


def test_decode_rejects_a_message_that_does_not_match():
    x = sample((7,))
    wire = make("int8").encode(x, KEY)
    with pytest.raises(ValueError, match="expected"):
        make("int8").decode(wire, sample((8,)))
    with pytest.raises(ValueError, match="codec id"):
        make("int4").decode(wire, x)
    with pytest.raises(ValueError, match="bytes"):
        make("int8").decode(wire[:-1], x)
    bad = wire.clone()
    bad[0] = 0
    with pytest.raises(ValueError, match="magic"):
        W.decode_any(bad)


# -- error bounds ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_half_casts_relative_bounds(shape):
    x = sample(shape, scale=1.0)
    x.view(-1)[0] = 1e-6  # an fp16 subnormal
    err16 = (make("fp16").decode(make("fp16").encode(x, KEY), x) - x).abs()
    assert torch.all(err16 <= torch.maximum(x.abs() * 2 ** -11, torch.tensor(2 ** -25)))
    err_bf = (make("bf16").decode(make("bf16").encode(x, KEY), x) - x).abs()
    assert torch.all(err_bf <= x.abs() * 2 ** -8)


def test_fp16_clamps_instead_of_overflowing():
    x = torch.tensor([1e5, -7e4, 3.0])
    assert make("fp16").transmit(x, KEY).received.tolist() == [65504.0, -65504.0, 3.0]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name, level", [("int8", 127), ("int4", 7)])
@pytest.mark.parametrize("block", [64, 5])
def test_integer_round_to_nearest_bound(name, level, block, shape):
    x = sample(shape)
    decoded = make(name, block_size=block).transmit(x, KEY).received
    step = block_steps(x, block, level)
    err = (decoded - x).reshape(-1).abs()
    assert torch.all(err <= step / 2 * (1 + 1e-5) + 1e-12)
    if x.numel() > 1:  # a lone value is its block's absmax, sent exactly
        assert err.max() > step.max() / 20  # really quantised, not passed through


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name, opts", [("int8", {}), ("int8", {"stochastic_rounding": True}), ("int4", {}),
                                        ("int4", {"stochastic_rounding": True}), ("nf4", {}),
                                        ("int8", {"block_size": 5})], ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fused_encode_decoded_equals_the_receivers_decode(name, opts, shape, dtype):
    """transmit rebuilds the decoded values while encoding: they must be what a
    receiver decodes from the same bytes, bit for bit, and the bytes the same."""
    x = sample(shape).to(dtype)
    codec = make(name, **opts)
    wire, decoded = codec.encode_decoded(x, KEY)
    assert torch.equal(wire, codec.encode(x, KEY))
    receiver = codec.decode(wire, x)
    assert decoded.dtype == receiver.dtype and torch.equal(decoded, receiver)


def test_partial_last_block_has_its_own_scale():
    # blocks of 3: [1, 2, 3], [4, 5, 6], [0.01] -- the last block alone must come back exact
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.01])
    out = make("int8", block_size=3).transmit(x, KEY).received
    assert out[-1].item() == pytest.approx(0.01, rel=1e-6)
    assert torch.allclose(out[:6], x[:6], atol=6 / 127 / 2)
    int4 = make("int4", block_size=3).transmit(x, KEY).received
    assert int4[-1].item() == pytest.approx(0.01, rel=1e-6)
    assert int4[:3].tolist() == pytest.approx([3 / 7 * 2, 3 / 7 * 5, 3.0], rel=1e-6)  # 1 -> 2 steps, 2 -> 5 steps


def test_zero_block_decodes_to_zero():
    x = torch.zeros(130)
    x[70] = 1.0
    for name in ("int8", "int4", "nf4"):
        out = make(name).transmit(x, KEY).received
        assert torch.equal(out, x)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_nf4_picks_the_nearest_level(shape):
    x = sample(shape)
    levels = torch.tensor(NF4_LEVELS)
    decoded = make("nf4", block_size=64).transmit(x, KEY).received.reshape(-1)
    absmax = block_steps(x, 64, 1.0)
    y = x.reshape(-1) / absmax
    nearest = (y[:, None] - levels[None, :]).abs().min(1).values
    got = (decoded / absmax - y).abs()
    assert torch.all(got <= nearest + 1e-6)
    assert torch.all((decoded - x.reshape(-1)).abs() <= absmax * 0.3039 / 2 * (1 + 1e-6))


def test_nf4_grid_tables_match_brute_force_everywhere():
    y = torch.cat([torch.linspace(-1, 1, 200001), torch.tensor(NF4_LEVELS)])
    levels = torch.tensor(NF4_LEVELS)
    decoded = make("nf4", block_size=len(y)).transmit(torch.cat([y, torch.tensor([1.0])]), KEY).received[:-1]
    nearest = (y[:, None] - levels[None, :]).abs().min(1).values
    assert torch.all((decoded - y).abs() <= nearest + 1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("values", ["fp32", "fp16"])
def test_topk_exact_on_kept_zero_elsewhere(shape, values):
    x = sample(shape)
    codec = make("topk", fraction=0.1, values=values)
    decoded = codec.transmit(x, KEY).received.reshape(-1)
    flat = x.reshape(-1)
    k = codec.options.count(flat.numel())
    kept = decoded != 0
    assert int(kept.sum()) == k
    if values == "fp32":
        assert torch.equal(decoded[kept], flat[kept])
    else:
        assert torch.all((decoded[kept] - flat[kept]).abs() <= flat[kept].abs() * 2 ** -11)
    if k < flat.numel():
        assert flat[kept].abs().min() >= flat[~kept].abs().max()


def test_top_indices_fast_path_equals_full_topk():
    x = sample((1000003,), seed=4)
    k = 10000
    fast = top_indices(x, k)
    assert torch.equal(fast, torch.topk(x.abs(), k).indices.sort().values)


def test_top_indices_fallback_when_the_sample_misjudges():
    # every sampled position (stride n >> 16 = 15) is large, the rest tiny: the
    # threshold from the sample admits fewer than k candidates, so the full topk runs
    n, k = 1000003, 100000
    x = sample((n,), seed=5)
    x[:: n >> 16] = 100 + torch.arange(len(x[:: n >> 16]), dtype=torch.float32)
    assert torch.equal(top_indices(x, k), torch.topk(x.abs(), k).indices.sort().values)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("fraction", [0.01, 0.9])
def test_randk_exact_values_on_k_random_coordinates(shape, fraction):
    x = sample(shape)
    codec = make("randk", fraction=fraction)
    k = codec.options.count(x.numel())
    a = codec.transmit(x, KEY).received.reshape(-1)
    kept = a != 0
    assert int(kept.sum()) == k
    assert torch.equal(a[kept], x.reshape(-1)[kept])
    b = codec.transmit(x, CodecKey(7, 4, 5, "update")).received.reshape(-1)
    if 0 < k < x.numel() - 1:
        assert not torch.equal(kept, b != 0)


def test_randk_coordinates_are_uniform():
    n, k, reps = 50, 10, 2000
    hits = torch.zeros(n)
    codec = make("randk", k=k)
    x = torch.ones(n)
    for r in range(reps):
        hits += codec.transmit(x, CodecKey(1, r, 0, "update")).received
    expected = reps * k / n  # 400 each; binomial std 17.9
    assert (hits - expected).abs().max() < 5 * math.sqrt(expected * (1 - k / n))


def test_randk_rescale_is_unbiased():
    x = torch.linspace(-1, 1, 40)
    codec = make("randk", k=8, rescale=True)
    mean = sum(codec.transmit(x, CodecKey(2, r, 0, "update")).received for r in range(3000)) / 3000
    # each coordinate: (n/k) x w.p. k/n -> mean x, std |x| sqrt(n/k - 1) / sqrt(3000) <= 0.037
    assert (mean - x).abs().max() < 0.2
    assert (mean - x).abs().mean() < 0.05


# -- stochastic rounding -------------------------------------------------------------------------
@pytest.mark.parametrize("name, level", [("int8", 127), ("int4", 7)])
def test_stochastic_rounding_is_unbiased_where_nearest_is_not(name, level):
    # one block of 64: x = (m + 0.3) steps, with one value at the full scale
    step = 1e-3
    m = torch.arange(64) % (level - 1) - (level - 1) // 2
    x = (m + 0.3) * step
    x[0] = level * step
    nearest = make(name).transmit(x, KEY).received
    assert (nearest - x)[1:].mean().item() == pytest.approx(-0.3 * step, rel=1e-4)  # biased
    codec = make(name, stochastic_rounding=True)
    reps = 1000
    total = torch.zeros(64)
    for r in range(reps):
        out = codec.transmit(x, CodecKey(7, r, 5, "update")).received
        assert torch.all((out - x).abs() < step * (1 + 1e-5))
        total += out - x
    mean_err = total[1:] / reps
    # per element error has std <= step/2; its mean over 1000 keys std <= step/63
    assert mean_err.abs().max() < 5 * step / 2 / math.sqrt(reps)
    assert abs(mean_err.mean().item()) < 5 * step / 2 / math.sqrt(reps * 63)


@pytest.mark.parametrize("name, opts", [("int8", {"stochastic_rounding": True}),
                                        ("int4", {"stochastic_rounding": True}), ("randk", {"fraction": 0.1})])
def test_randomness_depends_on_the_key_only(name, opts):
    x = sample((3000,))
    first = make(name, **opts).encode(x, KEY)
    torch.manual_seed(12345)  # global RNG state, thread count, a fresh instance: no effect
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = make(name, **opts).encode(x.clone(), CodecKey(7, 3, 5, "update"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, again)
    for other in (CodecKey(8, 3, 5, "update"), CodecKey(7, 4, 5, "update"), CodecKey(7, 3, 6, "update"),
                  CodecKey(7, 3, 5, "model"), CodecKey(7, 3, -1, "update")):
        assert not torch.equal(first, make(name, **opts).encode(x, other))


# -- error feedback --------------------------------------------------------------------------------
EF_CASES = [("fp16", {}), ("bf16", {}), ("int8", {}), ("int4", {"stochastic_rounding": True}), ("nf4", {}),
            ("topk", {"fraction": 0.05}), ("randk", {"fraction": 0.1})]


@pytest.mark.parametrize("name, opts", EF_CASES, ids=lambda v: str(v))
def test_error_feedback_sum_of_messages_tracks_sum_of_inputs(name, opts):
    n = 2000
    codec, plain = make(name, error_feedback=True, **opts), make(name, **opts)
    state: dict = {}
    sent = torch.zeros(n, dtype=torch.float64)
    got_ef = torch.zeros(n, dtype=torch.float64)
    got_plain = torch.zeros(n, dtype=torch.float64)
    gaps = {}
    for r in range(1, 81):
        x = sample((n,), seed=r) + 2e-4  # a drift that plain sparsification keeps dropping
        key = CodecKey(7, r, 5, "update")
        got_ef += codec.transmit(x, key, state=state).received.double()
        got_plain += plain.transmit(x, key).received.double()
        sent += x.double()
        if r in (40, 80):
            gaps[r] = ((sent - got_ef).norm().item(), (sent - got_plain).norm().item())
            residual = state[residual_key("update")].double()
            # the receiver's total misses exactly the one residual the sender still holds
            assert torch.allclose(sent - got_ef, residual, atol=1e-9 * r, rtol=1e-4)
            assert residual.abs().max() <= 0.04  # a few inputs' worth (|x| <~ 5e-3)
    # with error feedback the gap stays put; without it, it grows with the rounds
    assert gaps[80][0] <= 1.3 * gaps[40][0]
    assert gaps[80][0] <= gaps[80][1] * (1.0 if name in ("fp16", "bf16") else 0.5)
    if name in ("topk", "randk"):
        assert gaps[80][1] > 1.5 * gaps[40][1] and gaps[80][0] < gaps[80][1] / 3


def test_error_feedback_off_without_state_and_keyed_by_kind():
    x = sample((500,))
    codec = make("int4", error_feedback=True)
    assert torch.equal(codec.transmit(x, KEY).received, make("int4").transmit(x, KEY).received)
    state: dict = {}
    codec.transmit(x, KEY, state=state)
    codec.transmit(sample((9,)), CodecKey(7, 3, 5, "embeddings"), state=state)
    assert set(state) == {residual_key("update"), residual_key("embeddings")}
    assert state[residual_key("update")].shape == (500,)
    plain_state: dict = {}
    make("int4").transmit(x, KEY, state=plain_state)
    assert plain_state == {}
    with pytest.raises(ValueError, match="layout"):
        codec.transmit(sample((501,)), KEY, state=state)


def test_error_feedback_adds_the_previous_residual():
    prev = torch.tensor([0.5, 0.0, 0.0, 0.0])
    state = {residual_key("update"): prev.clone()}
    x = torch.tensor([0.0, 1.0, -1.0, 2.0])
    out = make("int8", error_feedback=True, block_size=4).transmit(x, KEY, state=state).received
    assert torch.equal(out, make("int8", block_size=4).transmit(x + prev, KEY).received)
    assert torch.equal(state[residual_key("update")], x + prev - out)


# -- transmit semantics ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LOSSY)
def test_reference_sends_the_difference(name):
    x, ref = sample((3, 5, 11), seed=1), sample((3, 5, 11), seed=2, scale=1.0)
    codec = make(name)
    out = codec.transmit(x, KEY, reference=ref)
    wire = codec.encode(x - ref, KEY)
    assert out.nbytes == wire.numel()
    assert torch.equal(out.received, ref + codec.decode(wire, x - ref))


@pytest.mark.parametrize("name", LOSSY)
def test_integer_and_bool_messages_pass_through(name):
    codec = make(name)
    for t in (torch.arange(10), torch.tensor([True, False, True]), torch.arange(6, dtype=torch.int32)):
        out = codec.transmit(t, KEY)
        assert out.received is t and out.nbytes == t.numel() * t.element_size()


# -- configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LOSSY)
def test_every_codec_is_configurable_by_name(name):
    cfg = load_config(None, [f"transport.up.name={name}", f"transport.down.name={name}",
                             "transport.up.error_feedback=true"])
    transport = Transport.from_config(cfg.transport)
    assert type(transport.up) is CODECS.get(name) and transport.up.options.error_feedback is True
    assert transport.down.options.error_feedback is False


def test_yaml_section_with_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("transport:\n  up: {name: int8, block_size: 128, stochastic_rounding: true}\n  down: topk\n")
    cfg = load_config(path, ["transport.down.k=1000"])
    transport = Transport.from_config(cfg.transport)
    assert transport.up.options.block_size == 128 and transport.up.options.stochastic_rounding
    assert transport.down.options.k == 1000
    assert transport.down.encode(sample((5000,)), KEY).numel() == 13 + 8 + 625 + 4000  # bitmap beats 4000 B


@pytest.mark.parametrize("overrides, needle", [
    (["transport.up.name=int8", "transport.up.block_size=0"], "transport.up.block_size must be >= 1, got 0"),
    (["transport.down.name=nf4", "transport.down.block_size=-3"], "transport.down.block_size must be >= 1"),
    (["transport.up.name=topk", "transport.up.fraction=0"], "transport.up.fraction must be in (0, 1], got 0.0"),
    (["transport.up.name=randk", "transport.up.fraction=1.5"], "transport.up.fraction must be in (0, 1]"),
    (["transport.up.name=topk", "transport.up.k=0"], "transport.up.k must be >= 1, got 0"),
    (["transport.up.name=topk", "transport.up.k=5", "transport.up.fraction=0.1"],
     "transport.up.fraction and transport.up.k are exclusive"),
    (["transport.down.name=randk", "transport.down.k=5", "transport.down.fraction=0.1"],
     "transport.down.fraction and transport.down.k are exclusive"),
    (["transport.up.name=topk", "transport.up.values=fp8"], "unknown transport.up.values 'fp8'"),
    (["transport.up.name=nf4", "transport.up.stochastic_rounding=true"],
     "config key 'transport.up.stochastic_rounding' does not apply to transport codec 'nf4': it is an option of 'int8' and 'int4'"),
    (["transport.up.name=int9"], "unknown transport codec 'int9' (did you mean 'int8'?)"),
])
def test_bad_codec_options_give_one_clear_error(overrides, needle):
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides)
    assert needle in str(exc.value)


def test_exclusive_options_also_checked_when_built_in_code():
    with pytest.raises(ConfigError, match="fraction and k are exclusive"):
        make("topk", fraction=0.1, k=3)
