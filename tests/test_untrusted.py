"""Untrusted text, JSON, names and claimed sizes: every case ends in a clear sentence and its exit code, never a
traceback, and whatever the files name is printed literally (no Rich markup, no terminal control characters)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import run_cli
from elastic_slice import api
from elastic_slice.errors import InputError
from elastic_slice.nesting import check_budget_name
from elastic_slice.quant.calibrate import MAX_PARAGRAPH_CHARS, MAX_PARAGRAPHS, calibration_texts
from elastic_slice.quant.formats import glob_regex
from elastic_slice.text import literal

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tiny-elastic"
FIRST_SHARD = "model-00001-of-00003.safetensors"
LAST_SHARD = "model-00003-of-00003.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
MANIFEST = "elastic_slice_manifest.json"
#: what must never reach the terminal raw: C0 controls but newline, DEL, C1, bidi overrides and isolates
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

Edit = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    id: str
    edit: Edit
    words: tuple[str, ...]
    #: commands to run ({ckpt}: the broken folder, {out}: a fresh output path) and the exit code each must give
    commands: tuple[tuple[tuple[str, ...], int], ...] = ((("inspect", "{ckpt}"), 2),
                                                          (("extract", "{ckpt}", "--size", "12B", "--out", "{out}"), 2))


# ----- editing a copy of the example parent ---------------------------------------------------------------------------
def _json_edit(name: str, change: Callable[[dict], object]) -> Edit:
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))

    return edit


def _config(**fields: object) -> Edit:
    return _json_edit("config.json", lambda config: config.update(fields))


def _index_budgets(budgets: dict) -> Edit:
    return _json_edit("nesting_index.json", lambda index: index["budgets"].update(budgets))


def _raw_field(name: str, fragment: str) -> Edit:
    """Add `"zz_extra": <fragment>` to a JSON object file, as text (for what json.dumps cannot write)."""

    def edit(folder: Path) -> None:
        text = (folder / name).read_text().rstrip()
        (folder / name).write_text(text[:-1] + f', "zz_extra": {fragment}}}')

    return edit


def _raw_bytes(name: str, content: bytes) -> Edit:
    return lambda folder: (folder / name).write_bytes(content)


def _read_shard(path: Path) -> tuple[bytes, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return raw[8 : 8 + length], raw[8 + length :]


def _write_shard(path: Path, header: bytes, data: bytes) -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def _header_text(change: Callable[[str], str]) -> Edit:
    def edit(folder: Path) -> None:
        header, data = _read_shard(folder / FIRST_SHARD)
        _write_shard(folder / FIRST_SHARD, change(header.decode()).encode("utf-8", "surrogatepass"), data)

    return edit


def _header_fragment(fragment: str) -> Edit:
    return _header_text(lambda text: text.rstrip()[:-1] + f', "zz_extra": {fragment}}}')


def _duplicate_header_key(text: str) -> str:
    header = json.loads(text)
    name = next(k for k in header if k != "__metadata__")
    return text.rstrip()[:-1] + f", {json.dumps(name)}: {json.dumps(header[name])}}}"


def _extra_tensor(name: str) -> Edit:
    """A 4-byte F32 tensor called `name` appended to the last shard and listed in the weights index."""

    def edit(folder: Path) -> None:
        header, data = _read_shard(folder / LAST_SHARD)
        entries = json.loads(header)
        entries[name] = {"dtype": "F32", "shape": [1], "data_offsets": [len(data), len(data) + 4]}
        _write_shard(folder / LAST_SHARD, json.dumps(entries).encode(), data + b"\0" * 4)
        _json_edit(WEIGHTS_INDEX, lambda index: index["weight_map"].update({name: LAST_SHARD}))(folder)

    return edit


def _shard_name(name: str) -> Edit:
    def change(index: dict) -> None:
        index["weight_map"][min(index["weight_map"])] = name

    return _json_edit(WEIGHTS_INDEX, change)


def _many_budgets(count: int) -> Edit:
    return _index_budgets({f"b{i}": {"hidden_size": 96} for i in range(count)})


def _write_quant_config(fragment: str) -> Edit:
    return lambda folder: (folder / "hf_quant_config.json").write_text(f'{{"quantization": {fragment}}}')


# ----- the cases --------------------------------------------------------------------------------------------------
HOSTILE_NAMES = {
    "markup close": "[/bold]x",
    "markup open": "[red]",
    "ansi color": "\x1b[31mred",
    "osc title": "\x1b]0;title\x07",
    "carriage return": "ok\rEVIL",
    "bidi override": "abc\u202edcba",
    "backspace and nul": "a\b\0b",
}
BAD_BUDGET_NAMES = {
    "parent escape": "../../victim",
    "absolute": "/abs",
    "slash": "a/b",
    "dot": ".",
    "dot dot": "..",
    "newline yaml": "name\nbase_model: evil",
    "empty": "",
    "300 chars": "x" * 300,
    "leading dash": "-rf",
    "leading dot": ".hidden",
    "space": "12 B",
    "non-ascii": "zwölf",
    "plus sign": "12B+x",
    **{f"hostile {key}": value for key, value in HOSTILE_NAMES.items()},
}
DEEP = "[" * 100 + "]" * 100
JSON_LIMITS = {
    "deep": (DEEP, "more than 64 deep"),
    "deep past the decoder": ("[" * 50000 + "]" * 50000, "more than 64 deep"),
    "5000-digit integer": ("1" * 5000, "5000 digits"),
    "NaN": ("NaN", "NaN"),
    "Infinity": ("-Infinity", "Infinity"),
    "float overflow": ("1e999", "too large"),
    "lone surrogate": ('"\\ud800"', "surrogate"),
}
JSON_FILES = {
    "config": ("config.json", "config.json"),
    "nesting index": ("nesting_index.json", "nesting_index.json"),
    "weights index": (WEIGHTS_INDEX, WEIGHTS_INDEX),
}


def _cases() -> list[Case]:
    cases: list[Case] = []
    # 1. names printed literally: tensor names, axis names, the model type
    for key, name in HOSTILE_NAMES.items():
        cases.append(Case(f"tensor name: {key}", _extra_tensor(name), (literal(repr(name)), "not a known")))
        cases.append(Case(f"axis name: {key}", _index_budgets({"12B": {name: 64}}), (literal(repr(name)), "unknown axis")))
    cases.append(Case("model_type markup", _config(model_type="[/bold]\x1b[31mx"), ("'[/bold]\\x1b[31mx'", "not supported")))
    # 2. budget names: one safe path component, refused by name, shown literally
    for key, name in BAD_BUDGET_NAMES.items():
        cases.append(Case(f"budget name: {key}", _index_budgets({name: {"hidden_size": 96}}),
                          ("nesting_index.json", "names budget", literal(repr(name)), "not allowed")))
    cases.append(Case("too many budgets", _many_budgets(300), ("303 budgets", "at most 256")))
    # 3. JSON limits, in every kind of file
    for file_key, (file, label) in JSON_FILES.items():
        for limit_key, (fragment, words) in JSON_LIMITS.items():
            cases.append(Case(f"{file_key}: {limit_key}", _raw_field(file, fragment), (label, words)))
        cases.append(Case(f"{file_key}: not UTF-8", _raw_bytes(file, b'{"a": "\xff\xfe"}'), (label, "not UTF-8")))
        cases.append(Case(f"{file_key}: byte-order mark", lambda f, file=file: (f / file).write_bytes(
            b"\xef\xbb\xbf" + (f / file).read_bytes()), (label, "byte-order mark")))
    for limit_key, (fragment, words) in JSON_LIMITS.items():
        if limit_key != "deep past the decoder":
            cases.append(Case(f"safetensors header: {limit_key}", _header_fragment(fragment), (FIRST_SHARD, words)))
    cases.append(Case("safetensors header: not UTF-8", _header_text(lambda t: t.replace('"pt"', '"\udcff"')),
                      (FIRST_SHARD, "not UTF-8")))
    cases.append(Case("safetensors header: duplicate tensor", _header_text(_duplicate_header_key),
                      (FIRST_SHARD, "twice in one object")))
    cases.append(Case("weights index: duplicate key", _raw_field(WEIGHTS_INDEX, '1, "zz_extra": 2'),
                      (WEIGHTS_INDEX, "'zz_extra' twice")))
    cases.append(Case("nesting index: duplicate budget", _raw_field("nesting_index.json", '1, "budgets": {}'),
                      ("nesting_index.json", "'budgets' twice")))
    for key, fragment, words in (("deep", DEEP, "more than 64 deep"), ("NaN", "NaN", "NaN"),
                                 ("5000-digit integer", "1" * 5000, "5000 digits")):
        cases.append(Case(f"hf_quant_config: {key}", _write_quant_config(fragment), ("hf_quant_config.json", words),
                          commands=((("extract", "{ckpt}", "--size", "12B", "--out", "{out}"), 2),)))
    # 4. config fields of the wrong type, one sentence naming config.json and the field
    for field, value in (("n_groups", "2"), ("n_groups", 2.0), ("hidden_size", True), ("hidden_size", 0),
                         ("num_attention_heads", -8), ("mamba_num_heads", [16]), ("vocab_size", None),
                         ("head_dim", "16"), ("conv_kernel", 4.5), ("n_group", "1"), ("num_experts_per_tok", False),
                         ("moe_latent_size", "x"), ("num_hidden_layers", "8")):
        cases.append(Case(f"config {field}={value!r}", _config(**{field: value}),
                          ("config.json", f"'{field}'", "positive integer")))
    for field, value, words in (("architectures", [1], "list of class names"),
                                ("architectures", "NemotronH", "must be a list"),
                                ("tie_word_embeddings", "false", "true or false"),
                                ("quantization_config", "fp8", "must be an object"),
                                ("layers_block_type", "moe", "list of strings"),
                                ("layers_block_type", [1, 2, 3, 4, 5, 6, 7, 8], "list of strings"),
                                ("layers_block_type", ["mamba"] * 8 + ["bogus"], "describes 9 layers")):
        cases.append(Case(f"config {field}={value!r}", _config(**{field: value}), ("config.json", f"'{field}'", words)))
    # 5. broken nesting index values and shard names
    cases.append(Case("all-null per-layer list", _index_budgets({"12B": {"intermediate_size": [None] * 8}}),
                      ("'12B'", "'intermediate_size'", "layer 3 needs an integer")))
    cases.append(Case("per-layer list too long", _index_budgets({"12B": {"n_routed_experts": [None] * 9}}),
                      ("'12B'", "needs 8 entries")))
    for key, name in (("NUL", "model\0.safetensors"), ("slash", "sub/model.safetensors"), ("dot dot", ".."),
                      ("parent", "../model.safetensors"), ("absolute", "/etc/passwd"), ("empty", ""),
                      ("backslash", "..\\model.safetensors")):
        cases.append(Case(f"shard name: {key}", _shard_name(name), (WEIGHTS_INDEX, literal(repr(name)), "escapes")))
    return cases


CASES = _cases()


def _check_output(text: str) -> None:
    assert "Traceback" not in text
    assert RAW_CONTROL.search(text) is None, repr(text)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_untrusted_input(case: Case, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(EXAMPLE, ckpt)
    case.edit(ckpt)
    for command, code in case.commands:
        out = tmp_path / "out"
        args = [part.format(ckpt=ckpt, out=out) for part in command]
        result = run_cli(*args)
        text = result.stdout + result.stderr
        assert result.code == code, (case.id, args[0], result.code, text)
        _check_output(text)
        message = " ".join(text.split())
        for word in case.words:
            assert " ".join(word.split()) in message, (case.id, args[0], word, message)
        assert not out.exists()


def test_cases_cover_the_classes() -> None:
    assert len(CASES) >= 70


# ----- names shown literally in successful output -----------------------------------------------------------------
@pytest.mark.parametrize("name", list(HOSTILE_NAMES.values())[:5], ids=list(HOSTILE_NAMES)[:5])
def test_names_in_tables_and_results_are_literal(name: str, tmp_path: Path) -> None:
    ckpt = tmp_path / f"p{name.replace('/', '_').replace(chr(0), '_')}"
    shutil.copytree(EXAMPLE, ckpt)
    _config(architectures=[name])(ckpt)
    inspected = run_cli("inspect", ckpt)
    assert inspected.code == 0, inspected.stdout + inspected.stderr
    _check_output(inspected.stdout + inspected.stderr)
    assert literal(name) in inspected.stdout
    planned = run_cli("extract", ckpt, "--size", "12B", "--dry-run")
    assert planned.code == 0 and literal(str(ckpt)) in planned.stdout
    _check_output(planned.stdout + planned.stderr)
    out = tmp_path / "out"
    done = run_cli("extract", ckpt, "--size", "12B", "--out", out)
    assert done.code == 0, done.stdout + done.stderr
    assert f"wrote {literal(out)}" in done.stdout
    _check_output(done.stdout + done.stderr)
    as_json = run_cli("inspect", ckpt, "--json")
    assert as_json.code == 0 and as_json.json()["architectures"] == [name]
    assert RAW_CONTROL.search(as_json.stdout) is None


def test_markup_in_paths_is_literal(tmp_path: Path) -> None:
    ckpt = tmp_path / "[/bold]p"
    shutil.copytree(EXAMPLE, ckpt)
    out = tmp_path / "[red]out\x1b[0m"
    done = run_cli("extract", ckpt, "--size", "12B", "--out", out)
    assert done.code == 0, done.stdout + done.stderr
    assert "[red]out\\x1b[0m" in done.stdout
    verified = run_cli("verify", out, "--parent", ckpt)
    assert verified.code == 0 and "[/bold]p" in verified.stdout
    _check_output(verified.stdout)


def test_literal_escapes_what_terminals_act_on() -> None:
    assert literal("a\x1b[31mb\rc\bd\0e\x7f\x9b\u202e\u2066\u200f\ud800") == (
        "a\\x1b[31mb\\rc\\x08d\\x00e\\x7f\\x9b\\u202e\\u2066\\u200f\\ud800"
    )
    assert literal("[/bold]x ü 日本 😀") == "[/bold]x ü 日本 😀"


# ----- budget names on the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../victim", "/abs", "a/b", "..", "x\ny", "[/bold]x", "\x1b[31m", ""])
def test_index_command_refuses_bad_names(name: str, tmp_path: Path) -> None:
    child = tmp_path / "child"
    out = tmp_path / "index.json"
    api.extract(EXAMPLE, "12B", child)
    for args in (["index", EXAMPLE, "--from-config", f"{name}={child}", "--out", out],
                 ["index", EXAMPLE, "--from-config", f"12B={child}", "--parent-name", name, "--out", out]):
        result = run_cli(*args)
        text = result.stdout + result.stderr
        if name == "" and "--parent-name" not in args:
            assert result.code == 2 and "NAME=PATH" in text
            continue
        assert result.code == 2, text
        _check_output(text)
        assert "not allowed" in text and literal(repr(name)) in text
        assert not out.exists()


# ----- manifests and output folders (verify) ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "child"
    api.extract(EXAMPLE, "12B", out)
    return out


def _manifest(change: Callable[[dict], object]) -> Edit:
    return _json_edit(MANIFEST, change)


def _first_file_entry(manifest: dict) -> dict:
    return manifest["files"][min(manifest["files"])]


VERIFY_CASES: list[tuple[str, Edit, tuple[str, ...]]] = [
    ("files is a list", _manifest(lambda m: m.update(files=list(m["files"]))), ("'files' must be an object",)),
    ("budget is a string", _manifest(lambda m: m.update(budget="12B")), ("'budget' must be an object",)),
    ("entry is not an object", _manifest(lambda m: m["files"].update({"config.json": "abc"})), ("'config.json'",)),
    ("size is a string", _manifest(lambda m: _first_file_entry(m).update(size="12")), ("integer `size`",)),
    ("size is a bool", _manifest(lambda m: _first_file_entry(m).update(size=True)), ("integer `size`",)),
    ("options is a list", _manifest(lambda m: m.update(options=[])), ("'options'",)),
    ("dtype is a number", _manifest(lambda m: m.update(options={"dtype": 5})), ("'options'",)),
    ("entry escapes", _manifest(lambda m: m["files"].update({"../../../etc/passwd": {"size": 1, "sha256": "x"}})),
     ("'../../../etc/passwd'", "not a plain file name")),
    ("entry with a slash", _manifest(lambda m: m["files"].update({"a/b": {"size": 1, "sha256": "x"}})),
     ("'a/b'", "not a plain file name")),
    ("entry with NUL", _manifest(lambda m: m["files"].update({"a\0b": {"size": 1, "sha256": "x"}})),
     ("'a\\x00b'", "not a plain file name")),
    ("entry with ESC", _manifest(lambda m: m["files"].update({"\x1b[2J": {"size": 1, "sha256": "x"}})),
     ("'\\x1b[2J' is listed in the manifest but missing",)),
    ("manifest is deep JSON", _raw_field(MANIFEST, DEEP), ("more than 64 deep",)),
    ("manifest holds NaN", _raw_field(MANIFEST, "NaN"), ("NaN",)),
    ("manifest duplicate key", _raw_field(MANIFEST, '1, "zz_extra": 2'), ("twice",)),
    ("manifest not UTF-8", _raw_bytes(MANIFEST, b"\xff"), ("not UTF-8",)),
    ("manifest is a list", _raw_bytes(MANIFEST, b"[]"), ("JSON object",)),
    ("unlisted file with markup name", lambda f: (f / "[bold]\x1b[31m").write_text("x"),
     ("'[bold]\\x1b[31m' is not listed",)),
    ("listed file is a link outside", lambda f: (f / "config.json").unlink() or os.symlink("/etc/hostname", f / "config.json"),
     ("'config.json' is a link",)),
    ("index shard name with NUL", _shard_name("a\0b"), ("'a\\x00b'", "escapes")),
]


@pytest.mark.parametrize("case, edit, words", VERIFY_CASES, ids=[c[0] for c in VERIFY_CASES])
def test_verify_untrusted_output(extracted: Path, tmp_path: Path, case: str, edit: Edit, words: tuple[str, ...]) -> None:
    folder = tmp_path / "child"
    shutil.copytree(extracted, folder, symlinks=True)
    if case == "index shard name with NUL":
        folder = tmp_path / "sharded"
        api.extract(EXAMPLE, "12B", folder, max_shard_size="200KB")
    edit(folder)
    for args in (["verify", folder], ["verify", folder, "--parent", EXAMPLE], ["verify", folder, "--json"]):
        result = run_cli(*args)
        text = result.stdout + result.stderr
        assert result.code in (1, 2), (case, text)
        _check_output(text)
        if "--json" in args:
            continue
        message = " ".join(text.split())
        for word in words:
            assert word in message, (case, word, message)


# ----- claimed sizes bounded by the tensors -------------------------------------------------------------------------
def _huge_layers(folder: Path) -> None:
    _config(layers_block_type=["moe"] * 3_000_000)(folder)


FAST_CASES: list[tuple[str, Edit, tuple[str, ...]]] = [
    ("300M experts", _config(n_routed_experts=300_000_000), ("'n_routed_experts' is 300000000", "hold 16 experts")),
    ("3M-entry layers_block_type", _huge_layers, ("'layers_block_type' describes 3000000 layers", "hold 8")),
    ("hybrid pattern of 3M layers", _config(layers_block_type=None, hybrid_override_pattern="E" * 3_000_000),
     ("'hybrid_override_pattern' describes 3000000 layers",)),
    ("num_hidden_layers 10^9", _config(num_hidden_layers=10**9), ("'num_hidden_layers' describes 1000000000",)),
    ("10^8 Mamba heads", _config(mamba_num_heads=10**8, n_groups=10**8), ("mamba_num_heads = 100000000", "A_log")),
    ("10^8 attention heads", _config(num_attention_heads=10**8, num_key_value_heads=10**8, head_dim=1),
     ("num_attention_heads x head_dim = 100000000", "q_proj")),
    ("20,000 budgets", _many_budgets(20_000), ("20003 budgets", "at most 256")),
    ("3M-entry layers in a budget", _index_budgets({"12B": {"layers": list(range(3_000_000))}}),
     ("'layers'", "lists 3000000 layers")),
    ("3M-entry per-layer list", _index_budgets({"12B": {"n_routed_experts": [4] * 3_000_000}}),
     ("needs 8 entries",)),
]


@pytest.mark.parametrize("case, edit, words", FAST_CASES, ids=[c[0] for c in FAST_CASES])
def test_claimed_sizes_fail_fast(tmp_path: Path, case: str, edit: Edit, words: tuple[str, ...]) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(EXAMPLE, ckpt)
    edit(ckpt)
    for args in (["inspect", ckpt], ["extract", ckpt, "--size", "12B", "--out", tmp_path / "out"]):
        started = time.perf_counter()
        result = run_cli(*args)
        seconds = time.perf_counter() - started
        text = result.stdout + result.stderr
        assert result.code == 2, (case, text)
        _check_output(text)
        message = " ".join(text.split())
        for word in words:
            assert word in message, (case, word, message)
        assert seconds < 60, (case, args[0], seconds)  # a regression guard, not a speed target: these took 88-284 s before


def test_child_config_with_millions_of_layers_fails_fast(tmp_path: Path) -> None:
    child = tmp_path / "child"
    child.mkdir()
    config = json.loads((EXAMPLE / "config.json").read_text())
    config["layers_block_type"] = ["moe"] * 3_000_000
    (child / "config.json").write_text(json.dumps(config))
    started = time.perf_counter()
    result = run_cli("index", EXAMPLE, "--from-config", f"12B={child}")
    assert result.code == 2 and "has 3000000 layers, more than the parent's 8" in " ".join(result.stderr.split())
    assert time.perf_counter() - started < 60  # regression guard (minutes before), not a speed target


# ----- presets and calibration text -------------------------------------------------------------------------------
@pytest.mark.parametrize("content, words", [
    (DEEP.encode(), "more than 64 deep"), (b'{"a": NaN}', "NaN"), (b"\xff\xfe", "not UTF-8"),
    (b'{"a": 1, "a": 2}', "twice"), (b"[1]", "not a valid preset"), (b'{"fingerprint": {"a": 1}}', "not a valid preset"),
])
def test_bad_presets_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, words: str) -> None:
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "bad.json").write_bytes(content)
    monkeypatch.setenv("ELASTIC_SLICE_PRESETS", str(presets))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(EXAMPLE, ckpt)
    (ckpt / "nesting_index.json").unlink()
    result = run_cli("extract", ckpt, "--size", "12B", "--dry-run")
    assert result.code == 2 and "bad.json" in result.stderr and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_calibration_text_is_cut_before_tokenizing(tmp_path: Path) -> None:
    one_line = tmp_path / "one-line.txt"
    one_line.write_bytes(b"word " * 4_000_000)  # 20 MB without a paragraph break
    started = time.perf_counter()
    texts = calibration_texts(str(one_line))
    assert len(texts) == 1 and len(texts[0]) == MAX_PARAGRAPH_CHARS
    many = tmp_path / "many.txt"
    many.write_text("a paragraph\n\n" * 100_000)
    assert len(calibration_texts(str(many))) == MAX_PARAGRAPHS
    assert time.perf_counter() - started < 60  # regression guard (minutes before), not a speed target
    with pytest.raises(InputError, match="holds no text"):
        calibration_texts(str(_write(tmp_path / "blank.txt", "\n\n  \n")))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_progress_descriptions_on_a_terminal_are_literal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from elastic_slice import cli

    buffer = io.StringIO()
    monkeypatch.setattr(cli, "stderr", Console(file=buffer, force_terminal=True, width=200))
    result = run_cli("quantize", EXAMPLE, "--quantize", "[/bold]x\x1b[2J", "--out", tmp_path / "q",
                     "--quant-format", "compressed-tensors")
    shown = buffer.getvalue()
    assert result.code == 2 and "Traceback" not in result.stderr + shown
    assert "'[/bold]x\\x1b[2J'" in shown and "\x1b[2J" not in shown
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("name", ["12B", "12b", "_x", "a.b-c_d", "x" * 64, "30B.v2"])
def test_budget_names_the_spec_allows(name: str) -> None:
    assert check_budget_name(name, "the index") == name


@pytest.mark.parametrize("name", ["x" * 65, "12B+x", ".x", "-x", "a b", "a/b", ""])
def test_budget_names_the_spec_refuses(name: str) -> None:
    with pytest.raises(InputError, match="not allowed"):
        check_budget_name(name, "the index")


QUANT_DECLARATIONS = {
    "section not an object": ("hf_quant_config.json", {"quantization": "fp8"}, "'quantization' must be an object"),
    "producer not an object": ("hf_quant_config.json", {"producer": 3}, "'producer' must be an object"),
    "algo a list": ("hf_quant_config.json", {"quantization": {"quant_algo": ["x"]}}, "'quant_algo' must be a string"),
    "exclusions of numbers": ("hf_quant_config.json", {"quantization": {"quant_algo": "NVFP4", "exclude_modules": [1]}},
                              "'exclude_modules' must be a list of module names"),
    "config method a number": ("config.json", {"quant_method": 7}, "'quant_method' must be a string"),
    "config ignore a string": ("config.json", {"quant_method": "compressed-tensors", "ignore": "lm_head"},
                               "'ignore' must be a list"),
    "config unknown method": ("config.json", {"quant_method": "gptq", "bits": 4}, "quantization method 'gptq'"),
}


@pytest.mark.parametrize("case", QUANT_DECLARATIONS, ids=list(QUANT_DECLARATIONS))
def test_quantization_declarations_of_the_wrong_shape(case: str, tmp_path: Path) -> None:
    file, document, expected = QUANT_DECLARATIONS[case]
    ckpt = tmp_path / "ckpt"
    shutil.copytree(EXAMPLE, ckpt)
    if file == "config.json":
        config = json.loads((ckpt / file).read_text())
        document = {**config, "quantization_config": document}
    (ckpt / file).write_text(json.dumps(document))
    for args in (["inspect", ckpt], ["extract", ckpt, "--size", "12B", "--out", tmp_path / "out"]):
        result = run_cli(*args)
        assert result.code == 2 and "Traceback" not in result.stderr, result.stderr
        assert expected in result.stderr and file in result.stderr
    assert not (tmp_path / "out").exists()


def test_published_files_name_no_local_folder(tmp_path: Path) -> None:
    """The manifest and card go to the Hub with --push-to-hub: no absolute path of the user's machine in them."""
    ckpt = tmp_path / "deep" / "private" / "tiny"
    shutil.copytree(EXAMPLE, ckpt)
    (tmp_path / "cal.txt").write_text("One paragraph of text.\n\nAnother paragraph.\n")
    out = tmp_path / "out"
    result = run_cli("extract", ckpt, "--size", "12B", "--quantize", "fp8", "--calibration", tmp_path / "cal.txt",
                     "--index", ckpt / "nesting_index.json", "--out", out)
    assert result.code == 0, result.stderr
    for name in ("elastic_slice_manifest.json", "README.md"):
        text = (out / name).read_text()
        assert str(tmp_path) not in text and "private" not in text, name
    manifest = json.loads((out / "elastic_slice_manifest.json").read_text())
    assert manifest["parent"]["path"] == "tiny" and manifest["options"]["quantize"]["calibration"] == "cal.txt"
    assert manifest["command"].startswith("elastic-slice extract tiny --size 12B")


@pytest.mark.parametrize("glob", ["", " ", "\x1b[31m", "*.experts*\n", " *.experts*"])
def test_exclude_globs_that_name_no_module_pattern_are_refused(glob: str, tmp_path: Path) -> None:
    result = run_cli("extract", EXAMPLE, "--size", "12B", "--quantize", "fp8", "--quant-format", "compressed-tensors",
                     "--exclude", glob, "--out", tmp_path / "out")
    assert result.code == 2 and "--exclude" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "\x1b" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("glob", ["*.experts*", "*.experts.[0-3].*", "*.experts.[!0-3].*", "*.experts.?.*",
                                  "backbone.layers.1.*", "*[]a]*", "*.experts.[1-", "*q_pro[j]"])
def test_compressed_tensors_ignore_patterns_match_what_the_glob_matches(glob: str) -> None:
    """The `re:` pattern written for compressed-tensors selects exactly the modules fnmatch selected when
    quantizing (a character class written as a literal would declare bf16 experts quantized)."""
    names = [f"backbone.layers.{layer}.mixer.experts.{expert}.up_proj" for layer in range(3) for expert in range(12)]
    names += ["backbone.layers.1.mixer.q_proj", "backbone.layers.11.mixer.q_proj", "backbone.layers.2.mixer.a]b"]
    pattern = glob_regex(glob)
    assert pattern.startswith("re:")
    for name in names:
        assert (re.match(pattern[3:], name) is not None) == fnmatch.fnmatchcase(name, glob), (glob, pattern, name)
