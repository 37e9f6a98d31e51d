"""The MatFormer slicing-table reader (`index --from-matformer-csv`): names, cells, caps and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli, tree_hash
from elastic_slice.arch.gemma3n_fixture import LAYER_TYPES, SPARSITY
from elastic_slice.arch.matformer import MAX_BYTES, budget_name, read_table, table_budgets
from elastic_slice.errors import InputError

HEADER = "name,# Layers,# Effective Params (B),MMLU PT accuracy,FFN Hidden Dims,Layers Skipped\n"


def _table(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "slicing.csv"
    path.write_text(header + "".join(row + "\n" for row in rows), encoding="utf-8")
    return path


ARABIC_64 = "\u0666\u0664"  # 64 in Arabic-Indic digits, which `\d` would accept


def _dims(*widths: str) -> str:
    return '"[' + ", ".join(widths) + ']"'


@pytest.mark.parametrize(("row_name", "expected"), [
    ("Config for E2.54B (layer-level)", "E2.54B-layer-level"),
    ("Config for official E2B Model", "E2B"),
    ("Config for E1.96B (block-level)", "E1.96B-block-level"),
    ("Small", "Small"),
    ("  my size / v2  ", "my-size-v2"),
    ("..hidden", "hidden"),
])
def test_row_names_become_budget_names(row_name: str, expected: str) -> None:
    assert budget_name(row_name) == expected


def test_table_reads_products_nulls_and_lists(tmp_path: Path) -> None:
    path = _table(
        tmp_path,
        f"Main model,4,3.98,62.30%,{_dims(*['2_048 * 8'] * 4)},null",
        f"Config for official E2B Model,3,1.91,50.90%,{_dims('2_048 * 4', '4096', '2_048*4')},[2]",
        f"Small,4,1,1%,{_dims('64', '2_048 * 8', '64', '64')},",
    )
    rows = read_table(path)
    assert [r.name for r in rows] == ["Main model", "Config for official E2B Model", "Small"]
    assert rows[1].ffn == [8192, 4096, 8192] and rows[1].skipped == [2] and rows[1].layers == 3
    budgets, names = table_budgets(rows, "E4B", [16384] * 4)
    assert names == {"Main model": "E4B", "Config for official E2B Model": "E2B", "Small": "Small"}
    assert budgets == {
        "E4B": {},
        "E2B": {"layers": [0, 1, 3], "intermediate_size": [8192, 4096, None, 8192]},
        "Small": {"intermediate_size": [64, 16384, 64, 64]},
    }


def test_uniform_widths_are_one_integer_and_parent_added(tmp_path: Path) -> None:
    rows = read_table(_table(tmp_path, f"Half,2,1,1%,{_dims('64', '64')},[1]"))
    budgets, _ = table_budgets(rows, "parent", [128, 128, 128])
    assert budgets == {"parent": {}, "Half": {"layers": [0, 2], "intermediate_size": 64}}


@pytest.mark.parametrize(("rows", "message"), [
    ((f"A,2,1,1%,{_dims('64', '64', '64')},null",), "says 2, but 'FFN Hidden Dims' lists 3"),
    ((f"A,,1,1%,{_dims('64', '64')},null",), "2 widths for 3 kept layers"),
    ((f"A,,1,1%,{_dims('64', '64')},[5]",), "layer 5 is not one of the parent's 3"),
    ((f"A,,1,1%,{_dims('64', '64')},\"[1, 1]\"",), "listed twice"),
    ((f"A,,1,1%,{_dims('64', 'x * 2', '64')},null",), "'x * 2' is not an integer"),
    ((f"A,,1,1%,{_dims('64', '2__048', '64')},null",), "is not an integer"),
    ((f"A,,1,1%,{_dims('64', '99999 * 99999', '64')},null",), "is larger than"),
    ((f"A,,1,1%,{_dims('64', '0', '64')},null",), "not a positive width"),
    # 9,001 digits in `_` groups: past Python's 4,300-digit int() limit, refused before int()
    ((f"A,,1,1%,{_dims('64', '1_' * 4500 + '1', '64')},null",), "is larger than"),
    ((f"A,,1,1%,{_dims('0' * 20 + '64', '64')},null",), "2 widths for 3 kept layers"),  # leading zeros fine
    # 5,001 digits, all but one leading zeros: under the digit cap, and converted without int()'s limit
    ((f"A,,1,1%,{_dims('0' * 5000 + '1', '128')},null",), "2 widths for 3 kept layers"),
    ((f"A,,1,1%,{_dims('64', '0' * 5000, '64')},null",), "not a positive width"),
    ((f"A,,1,1%,{_dims('64', ARABIC_64, '64')},null",), "is not an integer"),  # Arabic-Indic digits
    ((f"A,,1,1%,{_dims(*['64'] * 1025)},null",), "the list has 1025 entries; at most 1024"),
    (("A,,1,1%,64,null",), "expected a list"),
    ((f"A,,1,1%,{_dims('64', '64', '64')},null", f"A,,1,1%,{_dims('64', '64', '64')},null"), "both become budget"),
    ((f"Config for E2B,,1,1%,{_dims('64', '64', '64')},null", f"E2B Model,,1,1%,{_dims('64', '64', '64')},null"),
     "both become budget 'E2B'"),
    ((f"Main model,,1,1%,{_dims('64', '64', '64')},null",), "is the main model, but its sizes differ"),
    ((f"(),,1,1%,{_dims('64', '64', '64')},null",), "not allowed"),
])
def test_bad_rows_are_named(tmp_path: Path, rows: tuple[str, ...], message: str) -> None:
    with pytest.raises(InputError, match="line|row") as caught:
        table_budgets(read_table(_table(tmp_path, *rows)), "parent", [128, 128, 128])
    assert message in str(caught.value)


def test_repeated_column_and_directory_refused(tmp_path: Path) -> None:
    header = "name,FFN Hidden Dims,Layers Skipped,FFN Hidden Dims\n"
    with pytest.raises(InputError, match="names column 'FFN Hidden Dims' twice"):
        read_table(_table(tmp_path, f"A,{_dims('64')},null,{_dims('32')}", header=header))
    with pytest.raises(InputError, match="is a directory; give the slicing table's CSV file"):
        read_table(tmp_path)


def test_missing_column_oversize_and_binary_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no column 'Layers Skipped'"):
        read_table(_table(tmp_path, "A,[1]", header="name,FFN Hidden Dims\n"))
    big = tmp_path / "big.csv"
    big.write_bytes(HEADER.encode() + b"x" * MAX_BYTES)
    with pytest.raises(InputError, match="at most"):
        read_table(big)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(HEADER.encode() + b"\xff\xfe,1\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_table(binary)
    with pytest.raises(InputError, match="no rows"):
        read_table(_table(tmp_path))
    with pytest.raises(InputError, match="more cells than columns"):
        read_table(_table(tmp_path, f"A,1,1,1,{_dims('64')},null,extra"))


# ----- the command: CSV -> index -> extract every row -> the child's config is the row ----------------------------
@pytest.fixture(scope="module")
def gemma_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from elastic_slice.arch.gemma3n_fixture import build_tiny_gemma3n

    return build_tiny_gemma3n(tmp_path_factory.mktemp("gemma3n") / "parent")


#: rows in the published format with values made for the tiny parent (10 layers of 128 channels; KV sharing from
#: layer 6 on, reusing layers 4 and 5)
TINY_ROWS = (
    f"Main model,10,0.1,50.00%,{_dims(*['2 * 64'] * 10)},null",
    f"Config for official E2B Model,8,0.05,40.00%,{_dims(*['2_0 * 2'] * 8)},\"[6, 7]\"",
    f"Config for E0.07B (layer-level),10,0.07,45.00%,{_dims('64', '96', '128', '32', '64', '96', '128', '64', '32', '96')},null",
    f"Small,7,0.04,30.00%,{_dims('64', '64', '32', '32', '128', '64', '64')},\"[2, 7, 8]\"",
)


def test_csv_round_trip_every_row_extracts_to_its_config(gemma_parent: Path, tmp_path: Path) -> None:
    table = _table(tmp_path, *TINY_ROWS)
    result = run_cli("index", str(gemma_parent), "--from-matformer-csv", str(table), "--parent-name", "E4",
                     "--out", str(tmp_path / "index.json"), "--json")
    assert result.code == 0, result.stderr
    shown = result.json()
    assert shown["budget_names"] == {
        "Main model": "E4", "Config for official E2B Model": "E2B",
        "Config for E0.07B (layer-level)": "E0.07B-layer-level", "Small": "Small",
    }
    assert "row 'Config for official E2B Model' -> budget E2B" in result.stderr
    for row in read_table(table):
        budget = shown["budget_names"][row.name]
        out = tmp_path / budget
        assert run_cli("extract", str(gemma_parent), "--size", budget, "--index", str(tmp_path / "index.json"),
                       "--out", str(out)).code == 0
        config = json.loads((out / "config.json").read_text())
        kept = [i for i in range(10) if i not in row.skipped]
        assert config["num_hidden_layers"] == len(kept) == len(row.ffn)
        assert config["intermediate_size"] == row.ffn
        assert config["layer_types"] == [LAYER_TYPES[i] for i in kept]
        assert config["activation_sparsity_pattern"] == [SPARSITY[i] for i in kept]
        assert config["num_kv_shared_layers"] == sum(1 for i in kept if i >= 6)


def test_csv_row_breaking_kv_sharing_is_named(gemma_parent: Path, tmp_path: Path) -> None:
    table = _table(tmp_path, f"Config for Bad,9,1,1%,{_dims(*['64'] * 9)},[5]")
    before = tree_hash(gemma_parent)
    result = run_cli("index", str(gemma_parent), "--from-matformer-csv", str(table), "--out", str(tmp_path / "i.json"))
    assert result.code == 2
    assert "row 'Config for Bad'" in result.stderr and "reuses the keys and values of layer 5" in result.stderr
    assert not (tmp_path / "i.json").exists() and tree_hash(gemma_parent) == before


def test_csv_needs_a_gemma3n_parent_and_one_source(tiny_parent: Path, tmp_path: Path) -> None:
    table = _table(tmp_path, f"A,1,1,1%,{_dims('64')},null")
    result = run_cli("index", str(tiny_parent), "--from-matformer-csv", str(table))
    assert result.code == 2 and "needs a Gemma 3n parent" in result.stderr
    both = run_cli("index", str(tiny_parent), "--from-matformer-csv", str(table), "--from-config", "a=b")
    assert both.code == 2 and "either --from-config" in both.stderr
