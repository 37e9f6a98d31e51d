"""Any-size budgets between two trained budgets: counts in between, monotone in the target, loadable, warned."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from conftest import run_cli
from elastic_slice import api


@pytest.mark.slow
def test_sweep_between_neighbours(tiny_parent: Path, tmp_path: Path) -> None:
    report = {b.name: b.params_total for b in api.inspect(tiny_parent).budgets}
    low, high = report["12B"], report["23B"]
    counts = []
    for step in range(1, 11):
        target = low + (high - low) * step / 11
        out = tmp_path / f"t{step}"
        result = api.extract(tiny_parent, f"{target:.0f}", out)
        assert low < result.params_total < high and result.params_total <= target
        counts.append(result.params_total)
        model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
        assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
        assert sum(p.numel() for p in model.parameters()) <= result.params_total
    assert counts == sorted(counts) and counts[-1] > counts[0]


def test_nominal_size_warns_and_records(tiny_parent: Path, tmp_path: Path) -> None:
    result = run_cli("extract", tiny_parent, "--size", "18B", "--out", tmp_path / "o")
    assert result.code == 0, result.stderr
    message = " ".join(result.stderr.split())
    assert "warning:" in message and "interpolated between the trained budgets '12B' and '23B'" in message
    assert "not trained as a nested budget" in (tmp_path / "o" / "README.md").read_text()
    outside = run_cli("extract", tiny_parent, "--size", "40B", "--out", tmp_path / "x")
    assert outside.code == 2 and "not between two of its budgets" in outside.stderr
    unknown = run_cli("extract", tiny_parent, "--size", "huge", "--out", tmp_path / "y")
    assert unknown.code == 2 and "known budgets: 30B, 23B, 12B" in unknown.stderr


def test_target_and_active_params_options(tiny_parent: Path, tmp_path: Path) -> None:
    budgets = {b.name: b for b in api.inspect(tiny_parent).budgets}
    middle = (budgets["12B"].params_active + budgets["23B"].params_active) / 2
    result = run_cli("extract", tiny_parent, "--active-params", f"{middle:.0f}", "--out", tmp_path / "a", "--json")
    assert result.code == 0, result.stderr
    data = result.json()
    assert budgets["12B"].params_active < data["params_active"] <= middle and data["budget"].endswith("-active")
    total = (budgets["12B"].params_total + budgets["23B"].params_total) / 2
    result = run_cli("extract", tiny_parent, "--target-params", f"{total:.0f}", "--out", tmp_path / "t", "--json")
    assert result.code == 0 and budgets["12B"].params_total < result.json()["params_total"] <= total
    both = run_cli("extract", tiny_parent, "--target-params", "1", "--active-params", "1", "--out", tmp_path / "x")
    assert both.code == 2 and "one parameter target" in both.stderr


@pytest.mark.parametrize("option", ["--target-params", "--active-params"])
def test_a_parameter_target_with_set_is_refused(tiny_parent: Path, tmp_path: Path, option: str) -> None:
    """--set fixes sizes a target would choose: the combination is refused instead of ignoring the target."""
    result = run_cli("extract", tiny_parent, option, "8e5", "--set", "hidden_size=96", "--out", tmp_path / "o")
    assert result.code == 2 and "give either --set or a parameter target" in " ".join(result.stderr.split())
    assert not (tmp_path / "o").exists()
