"""The first five minutes: the design card's commands verbatim from inside a checkpoint, defaults for CKPT and
--out, help that reads like a polished CLI, --version, completion and the list forms of --set."""

from __future__ import annotations

import shutil
from importlib.metadata import version
from pathlib import Path

import pytest
import tomllib
import typer

from conftest import run_cli, tree_hash
from elastic_slice import api, defaults
from elastic_slice.checkpoint import HubOrigin, open_checkpoint
from elastic_slice.cli import app
from elastic_slice.errors import InputError
from elastic_slice.nesting import parse_set

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tiny-elastic"


@pytest.fixture
def ckpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the example parent named as on the design card (`ckpt/`); the current folder is the one above."""
    folder = tmp_path / "ckpt"
    shutil.copytree(EXAMPLE, folder)
    monkeypatch.chdir(tmp_path)
    return folder


def test_design_card_extract_from_inside_the_checkpoint(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent_before = tree_hash(ckpt)
    monkeypatch.chdir(ckpt)
    result = run_cli("extract", "--size", "12B")
    assert result.code == 0, result.stderr
    out = ckpt.parent / "ckpt-12B"
    assert f"CKPT not given: using the current folder {ckpt}" in result.stderr
    assert f"--out not given: the output goes to {out}" in result.stderr
    assert f"wrote {out}: budget 12B" in result.stdout
    assert not out.resolve().is_relative_to(ckpt.resolve())
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ckpt", "ckpt-12B"]
    assert api.verify(out, parent=ckpt).ok
    assert tree_hash(ckpt) == parent_before
    output_before = tree_hash(out)
    again = run_cli("extract", "--size", "12B")
    assert again.code == 2 and "--overwrite" in again.stderr and str(out) in again.stderr, again.stderr
    assert tree_hash(out) == output_before and tree_hash(ckpt) == parent_before
    assert run_cli("extract", "--size", "12B", "--overwrite").code == 0
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ckpt", "ckpt-12B"]


def test_design_card_inspect(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named = run_cli("inspect", "ckpt/")
    assert named.code == 0, named.stderr
    assert "12B" in named.stdout and "23B" in named.stdout and "not given" not in named.stderr
    monkeypatch.chdir(ckpt)
    bare = run_cli("inspect")
    assert bare.code == 0 and bare.stdout.startswith(f"checkpoint {ckpt}\n") and "12B" in bare.stdout
    here = run_cli("inspect", "--json")
    assert here.code == 0 and f"CKPT not given: using the current folder {ckpt}" in here.stderr
    assert here.json()["checkpoint"] == str(ckpt)
    named_json = run_cli("inspect", ckpt, "--json").json()
    assert here.json()["budgets"] == named_json["budgets"]


def test_several_budgets_default_to_one_folder_beside_the_parent(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ckpt)
    result = run_cli("extract", "--size", "23B", "--size", "12B", "--json")
    assert result.code == 0, result.stderr
    folder = ckpt.parent / "ckpt-budgets"
    assert [r["out"] for r in result.json()] == [str(folder / "23B"), str(folder / "12B")]
    assert sorted(p.name for p in folder.iterdir()) == ["12B", "23B"]
    assert run_cli("extract", "--all").code == 2  # ckpt-budgets is there now: refused, nothing changed
    assert sorted(p.name for p in folder.iterdir()) == ["12B", "23B"]


def test_quantize_verify_and_index_take_the_current_folder(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ckpt)
    quantized = run_cli("quantize", "--quantize", "fp8", "--quant-format", "compressed-tensors", "--json")
    assert quantized.code == 0, quantized.stderr
    assert quantized.json()["out"] == str(ckpt.parent / "ckpt-fp8")
    assert "--out not given: the output goes to" in quantized.stderr
    assert run_cli("extract", "--size", "12B").code == 0
    monkeypatch.chdir(ckpt.parent / "ckpt-12B")
    verified = run_cli("verify", "--json")
    assert verified.code == 0 and verified.json()["folder"] == str(ckpt.parent / "ckpt-12B")
    assert "OUT not given" in verified.stderr
    monkeypatch.chdir(ckpt)
    index = run_cli("index", "--from-config", "12B=../ckpt-12B", "--parent-name", "30B", "--json")
    assert index.code == 0, index.stderr
    assert index.json()["written"] == [] and set(index.json()["index"]["budgets"]) == {"30B", "12B"}


def test_no_checkpoint_here_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for command in (["inspect"], ["extract", "--size", "12B"], ["quantize", "--quantize", "fp8"], ["verify"]):
        result = run_cli(*command)
        assert result.code == 2 and f"{tmp_path} has no config.json" in result.stderr, (command, result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_default_out_for_a_hub_parent_is_in_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    parent = open_checkpoint(EXAMPLE)
    parent.hub = HubOrigin("org/tiny-elastic", "0" * 40, "org/tiny-elastic", {}, frozenset())
    assert defaults.output_folder(parent, "12B") == tmp_path / "tiny-elastic-12B"


def test_default_out_is_never_inside_a_hugging_face_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(EXAMPLE, snapshot)
    parent = open_checkpoint(snapshot)
    monkeypatch.chdir(tmp_path)
    assert defaults.output_folder(parent, "12B") == tmp_path / f"{'a' * 40}-12B"  # not beside it, in the cache
    monkeypatch.chdir(snapshot.parent)
    with pytest.raises(InputError, match="give --out"):
        defaults.output_folder(parent, "12B")


def _helps() -> dict[str, str]:
    commands = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert commands == ["extract", "index", "inspect", "quantize", "verify"]
    texts = {"": run_cli("--help").stdout}
    for name in commands:
        result = run_cli(name, "--help")
        assert result.code == 0
        texts[name] = result.stdout
    return texts


def test_help_reads_like_a_polished_cli() -> None:
    helps = _helps()
    for name, text in helps.items():
        usage = next(line for line in text.splitlines() if "Usage:" in line)
        assert "<bool>" not in text and "{" not in usage, name
        assert "--help" in text and "-h" in text, name
    assert "--version" in helps[""] and "--install-completion" in helps[""] and "--show-completion" in helps[""]
    for name in ("inspect", "extract", "quantize"):
        assert f"elastic-slice {name} [OPTIONS] [CKPT]" in helps[name]
    assert "elastic-slice verify [OPTIONS] [OUT]" in helps["verify"]
    assert "elastic-slice index [OPTIONS] [PARENT]" in helps["index"]
    for name, text in helps.items():
        if name:
            assert "Examples" in text and f"elastic-slice {name} " in text.split("Examples")[1], name
            assert "--json" in text, name
    assert "--quantize" in helps["quantize"] and "--to" not in helps["quantize"]
    assert "18B" in helps["extract"] and "18e9" in helps["extract"]
    assert "--tolerance" in helps["verify"] and "--parent-name" in helps["index"]
    assert run_cli("extract", "-h").stdout == helps["extract"]


def test_flags_take_no_value() -> None:
    result = run_cli("inspect", str(EXAMPLE), "--json", "true")
    assert result.code == 2 and "true" in result.stderr


def test_version() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    result = run_cli("--version")
    assert result.code == 0
    first, kernels = result.stdout.splitlines()
    assert first == f"elastic-slice {version('elastic-slice')}"
    from elastic_slice.quant.kernels import describe

    assert kernels == f"quantization kernels: {describe()}"  # compiled where built: test_compiled_kernels.py
    assert version("elastic-slice") == pyproject["project"]["version"]


def test_version_names_forced_torch_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELASTIC_SLICE_KERNELS", "torch")
    from elastic_slice.quant import kernels

    shown = run_cli("--version").stdout
    assert "quantization kernels: torch (" in shown
    assert ("ELASTIC_SLICE_KERNELS=torch" in shown) == (kernels._extension() is not None), shown


def test_a_mistyped_kernels_setting_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ELASTIC_SLICE_KERNELS", "pytorch")
    assert "none chosen: ELASTIC_SLICE_KERNELS='pytorch' is not understood" in run_cli("--version").stdout
    result = run_cli("extract", str(ROOT / "examples" / "tiny-elastic"), "--size", "12B", "--quantize", "fp8",
                     "--quant-format", "compressed-tensors", "--out", str(tmp_path / "out"))
    assert result.code == 2 and "ELASTIC_SLICE_KERNELS='pytorch' is not understood" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_version_says_when_the_compiled_kernels_were_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from elastic_slice.quant import kernels

    monkeypatch.setattr(kernels, "_extension", lambda: None)
    assert "quantization kernels: torch (the compiled kernels were not built: reinstall with a C compiler" in (
        run_cli("--version").stdout)


def test_shell_completion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    script = run_cli("--show-completion", "bash")
    assert script.code == 0 and "_ELASTIC_SLICE_COMPLETE=complete_bash" in script.stdout
    monkeypatch.setenv("_ELASTIC_SLICE_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "elastic-slice extract --qu")
    monkeypatch.setenv("COMP_CWORD", "2")
    assert run_cli().stdout.split() == ["--quantize", "--quant-format"]


def test_quantize_spells_the_scheme_like_extract(ckpt: Path, tmp_path: Path) -> None:
    bad = run_cli("quantize", ckpt, "--quantize", "int3", "--quant-format", "compressed-tensors")
    assert bad.code == 2 and "--quantize 'int3' is not supported" in bad.stderr
    missing = run_cli("quantize", ckpt)
    assert missing.code == 2 and "--quantize fp8" in missing.stderr
    clash = run_cli("quantize", ckpt, "--quantize", "fp8", "--to", "nvfp4")
    assert clash.code == 2 and "disagree" in clash.stderr
    old = run_cli("quantize", ckpt, "--to", "fp8", "--quant-format", "compressed-tensors", "--out", tmp_path / "q")
    assert old.code == 0, old.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "q"]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("layers=0,1,2", [0, 1, 2]),
        ("layers=[0,1,2]", [0, 1, 2]),
        ("layers=[0, 1, 2]", [0, 1, 2]),
        ("layers= 0, 1 ,2 ", [0, 1, 2]),
        ("layers=0-3,5", [0, 1, 2, 3, 5]),
        ("layers=[0-2, 7]", [0, 1, 2, 7]),
        ("layers=4", [4]),
        ("hidden_size=2048", 2048),
        ("n_routed_experts=[8]", [8]),
    ],
)
def test_set_list_forms(value: str, expected: object) -> None:
    assert parse_set([value]) == {value.partition("=")[0]: expected}


@pytest.mark.parametrize("value", ["layers=", "layers=[]", "layers=3-1", "layers=a", "layers=0-70000", "layers=[0,1"])
def test_set_refuses_what_is_no_list(value: str) -> None:
    with pytest.raises(InputError, match="--set"):
        parse_set([value])


def test_set_list_forms_plan_the_same_budget() -> None:
    plans = [
        run_cli("extract", EXAMPLE, "--set", f"layers={value}", "--dry-run", "--json").json()
        for value in ("0,1,2,3,5,6,7", "[0, 1, 2, 3, 5, 6, 7]", "0-3,5-7")
    ]
    assert plans[0]["sizes"]["layers"] == [0, 1, 2, 3, 5, 6, 7]
    assert plans[1] == plans[0] and plans[2] == plans[0]
