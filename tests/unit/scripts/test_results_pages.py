"""The campaign's learning-rate rule (scripts/results_pages.py): ties go to the grid's middle,
and a choice at the grid's edge is flagged, since the best rate may lie beyond it."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("results_pages", ROOT / "scripts" / "results_pages.py")
results_pages = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_pages)


def test_a_tie_within_one_point_goes_to_the_middle_rate():
    assert results_pages.choose_lr([(3e-5, 0.6362), (1e-4, 0.8475), (3e-4, 0.84875)]) == 1e-4


def test_exactly_one_point_below_the_best_is_a_tie():
    # FeDeRA's grid: 659 and 667 of 800 validation sentences, 8 apart (the rule is inclusive)
    assert results_pages.choose_lr([(6e-4, 0.54875), (2e-3, 0.82375), (6e-3, 0.83375)]) == 2e-3


def test_a_clear_best_is_chosen_even_at_the_edge():
    assert results_pages.choose_lr([(6e-4, 0.549), (2e-3, 0.8275), (6e-3, 0.854)]) == 6e-3


def _run(folder: Path, lr: float, acc: float) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"train:\n  lr: {lr}\n")
    (folder / "summary.json").write_text(json.dumps({"final_accuracy": acc, "wall_seconds": 100.0}))


def test_the_table_flags_a_choice_at_the_grid_edge(tmp_path):
    for lr, acc in [(6e-4, 0.549), (2e-3, 0.8275), (6e-3, 0.854)]:
        _run(tmp_path / f"lrgrid-lora-lr{lr:g}", lr, acc)
    for lr, acc in [(3e-5, 0.6362), (1e-4, 0.8475), (3e-4, 0.84875)]:
        _run(tmp_path / f"lrgrid-full-lr{lr:g}", lr, acc)
    rows = {line.split(" | ")[0].strip("| "): line for line in results_pages.lr_grid(tmp_path).splitlines()}
    assert "| 0.006 (at the grid's edge: extend) |" in rows["lora"]
    assert "| 0.0001 |" in rows["full"]
