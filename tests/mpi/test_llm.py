"""Federated LoRA on a causal LM under real mpiexec: tiny-llama on Chit Chat with
participants as clients (configs/llm-tiny.yaml).

The ledger must charge exactly the LoRA state per client per round (fp32), the
metrics must not depend on how the clients are packed into ranks, and the
held-out loss must fall.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, assert_ok, launch

pytest.importorskip("chitchat_dataset", reason="the packaged Chit Chat conversations are not installed")
pytest.importorskip("gguf", reason="SmolLM2's tokenizer is read from its GGUF file: pip install gguf")

pytestmark = pytest.mark.mpi

CONFIG = ROOT / "configs" / "llm-tiny.yaml"
LAYERS, HIDDEN, R, ROUNDS, PER_ROUND = 2, 32, 4, 3, 4
# q_proj and v_proj are HIDDEN x HIDDEN (2 heads of 16, as many KV heads): A is r x in, B is out x r
LORA_NUMEL = LAYERS * 2 * R * (HIDDEN + HIDDEN)
SETS = (f"model.num_layers={LAYERS}", f"model.hidden_size={HIDDEN}", f"method.r={R}", f"federation.rounds={ROUNDS}",
        f"federation.clients_per_round={PER_ROUND}", "train.lr=0.05", "output.checkpoint=false")
VOLATILE = {"wall_seconds", "transport_bytes"}  # depend on the machine / the rank count


def _stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def test_lora_bytes_rank_invariance_and_falling_loss(tmp_path: Path) -> None:
    three = launch(tmp_path, 3, *SETS, config=CONFIG, name="r3", timeout=120)
    assert_ok(three)
    two = launch(tmp_path, 2, *SETS, config=CONFIG, name="r2", timeout=120)
    assert_ok(two)

    s = three.summary
    assert s["trainable_params"] == LORA_NUMEL == 1024
    rows = [r for r in three.ledger if r["kind"] in ("model", "update")]
    assert len(rows) == ROUNDS * PER_ROUND * 2
    assert {r["bytes"] for r in rows} == {LORA_NUMEL * 4}
    assert s["communication"]["total"] == pytest.approx(ROUNDS * PER_ROUND * 2 * LORA_NUMEL * 4 / 1e6)
    assert s["communication"]["per_round"] == [pytest.approx(PER_ROUND * 2 * LORA_NUMEL * 4 / 1e6)] * ROUNDS

    assert _stable(three.metrics) == _stable(two.metrics)  # clients packed on 2 / 1 client ranks: same numbers
    assert three.ledger == two.ledger
    losses = [m["eval_loss"] for m in three.metrics]
    assert losses[-1] < losses[0]
    assert s["best_eval_loss"] == min(losses)  # a loss: best is the minimum
    assert [m["perplexity"] for m in three.metrics] == pytest.approx([2.718281828459045 ** x for x in losses])

    lines = [json.loads(x) for x in (three.dir / "generations.jsonl").read_text().splitlines()]
    assert [g["round"] for g in lines] == list(range(ROUNDS))
    assert all(len(g["generations"]) == 1 for g in lines)


def test_classification_only_algorithm_refused_before_ranks_start(tmp_path: Path) -> None:
    tree = yaml.safe_load(CONFIG.read_text())
    tree.update(algorithm="splitfed", method={"name": "full"})  # splitfed's own check wants method full
    config = tmp_path / "split.yaml"
    config.write_text(yaml.safe_dump(tree))
    run = launch(tmp_path, 3, config=config, timeout=60)
    assert run.proc.returncode == 2
    assert "fedmpi: error: algorithm 'splitfed' cannot run task causal_lm" in run.proc.stderr
    assert not (tmp_path / "run").exists()  # no rank ever started a run


@pytest.mark.parametrize("method, trainable, extra", [
    ("prompt", 4 * HIDDEN, ("method.num_virtual_tokens=4",)),  # the soft prompt only
    ("federa", LORA_NUMEL, ()),  # LoRA from the SVD; the q/v residuals go out once (kind init)
    ("full", None, ()),  # every parameter (a tiny model)
])
def test_other_methods_train_and_travel_exactly_their_state(tmp_path: Path, method: str, trainable, extra) -> None:
    tree = yaml.safe_load(CONFIG.read_text())
    tree["method"] = {"name": method, **({"r": R} if method == "federa" else {})}
    config = tmp_path / f"{method}.yaml"
    config.write_text(yaml.safe_dump(tree))
    run = launch(tmp_path, 3, "federation.rounds=1", "train.lr=0.01", "output.checkpoint=false", *extra,
                 config=config, timeout=90)
    assert_ok(run)
    s = run.summary
    if trainable is None:
        trainable = s["total_params"]
    assert s["trainable_params"] == trainable
    rows = [r for r in run.ledger if r["kind"] in ("model", "update")]
    assert {r["bytes"] for r in rows} == {trainable * 4} and len(rows) == 2 * 4
    init = [r for r in run.ledger if r["kind"] == "init" and r["direction"] == "down"]
    assert not init  # FeDeRA's default client_svd: each client derives its residual, nothing downloaded
    svd = [r for r in run.ledger if r["kind"] == "init" and r["direction"] == "local"]
    if method == "federa":  # each of the 8 clients pays its SVDs once, on its own device, at the start
        assert len(svd) == 8 and len({r["flops"] for r in svd}) == 1 and svd[0]["flops"] > 0
    else:
        assert not svd
    assert s["final_eval_loss"] == s["best_eval_loss"] and s["final_eval_loss"] < 11.0


def test_ranks_share_one_conversion_through_the_cache_lock(tmp_path: Path) -> None:
    """An empty cache: each of 3 ranks builds the model in `prepare`, so each asks for
    SmolLM2's tokenizer at once; one converts it from the GGUF while the others wait."""
    cache = tmp_path / "cache"
    run = launch(tmp_path, 3, "federation.rounds=1", "output.checkpoint=false", config=CONFIG, timeout=90,
                 env={"FEDMPI_CACHE": str(cache)})
    assert_ok(run)
    folders = [p for p in cache.iterdir() if p.is_dir()]
    assert len(folders) == 1 and folders[0].name.endswith("-tokenizer")
    assert (folders[0] / "tokenizer.json").is_file()
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]  # nothing half-written left behind
