"""Hostile and broken checkpoints: each ends in one clear sentence naming the culprit, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import run_cli

SHARD = "model-00001-of-00003.safetensors"
INDEX = "model.safetensors.index.json"


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _write_shard(path: Path, header: dict | bytes, data: bytes) -> None:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _edit_header(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(parent: Path) -> None:
        header, data = _header(parent / SHARD)
        edit(header)
        _write_shard(parent / SHARD, header, data)

    return apply


def _first_tensor(header: dict) -> dict:
    return header[min(k for k in header if k != "__metadata__")]


def _edit_index(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(parent: Path) -> None:
        index = json.loads((parent / INDEX).read_text())
        edit(index)
        (parent / INDEX).write_text(json.dumps(index))

    return apply


def _first_mapped(index: dict) -> str:
    return min(index["weight_map"])


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda parent: (parent / name).write_bytes(content)


def _symlink_outside(parent: Path) -> None:
    outside = parent.parent / "outside.safetensors"
    shutil.move(parent / SHARD, outside)
    os.symlink(outside, parent / SHARD)


def _truncate(parent: Path) -> None:
    data = (parent / SHARD).read_bytes()
    (parent / SHARD).write_bytes(data[: len(data) // 2])


def _oversized_header(parent: Path) -> None:
    data = (parent / SHARD).read_bytes()
    (parent / SHARD).write_bytes(struct.pack("<Q", 2**40) + data[8:])


def _overlap(header: dict) -> None:
    names = sorted(k for k in header if k != "__metadata__")
    a, b = header[names[0]], header[names[1]]
    if a["data_offsets"][0] < b["data_offsets"][0]:
        b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + b["data_offsets"][1] - b["data_offsets"][0]]
    else:
        a["data_offsets"] = [b["data_offsets"][0], b["data_offsets"][0] + a["data_offsets"][1] - a["data_offsets"][0]]


def _duplicate_tensor(parent: Path) -> None:
    header, data = _header(parent / SHARD)
    name = min(k for k in header if k != "__metadata__")
    other = parent / "model-00002-of-00003.safetensors"
    header2, data2 = _header(other)
    entry = dict(header[name])
    size = entry["data_offsets"][1] - entry["data_offsets"][0]
    start = entry["data_offsets"][0]
    entry["data_offsets"] = [len(data2), len(data2) + size]
    header2[name] = entry
    _write_shard(other, header2, data2 + data[start : start + size])


HOSTILE: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    ("shard name escapes with ../", _edit_index(lambda i: i["weight_map"].update({_first_mapped(i): "../evil.safetensors"})),
     ("'../evil.safetensors'", "escapes")),
    ("absolute shard path", _edit_index(lambda i: i["weight_map"].update({_first_mapped(i): "/etc/passwd"})),
     ("'/etc/passwd'", "escapes")),
    ("symlink pointing outside", _symlink_outside, (SHARD, "points outside")),
    ("offsets out of range", _edit_header(lambda h: _first_tensor(h).update(data_offsets=[10**9, 10**9 + 512])),
     (SHARD, "occupies", "need")),
    ("offsets past the end", _edit_header(lambda h: _first_tensor(h).update(
        data_offsets=[10**7, 10**7 + _first_tensor(h)["data_offsets"][1] - _first_tensor(h)["data_offsets"][0]])),
     (SHARD, "ends at byte", "truncated")),
    ("overlapping tensors", _edit_header(_overlap), (SHARD, "overlap")),
    ("size does not match dtype x shape", _edit_header(lambda h: _first_tensor(h).update(shape=[3, 3])),
     (SHARD, "occupies", "[3, 3]")),
    ("truncated file", _truncate, (SHARD, "truncated")),
    ("oversized header", _oversized_header, (SHARD, "header", "corrupt or hostile")),
    ("header is not JSON", lambda p: _write_shard(p / SHARD, b"{not json", b""), (SHARD, "not valid JSON")),
    ("header is a list", lambda p: _write_shard(p / SHARD, b"[1, 2]", b""), (SHARD, "not a JSON object")),
    ("unknown dtype", _edit_header(lambda h: _first_tensor(h).update(dtype="Q7")), (SHARD, "unsupported dtype 'Q7'")),
    ("negative shape", _edit_header(lambda h: _first_tensor(h).update(shape=[-1, 4])), (SHARD, "invalid shape")),
    ("file shorter than 8 bytes", _write(SHARD, b"\x01\x02"), (SHARD, "not a safetensors file")),
    ("missing shard", lambda p: (p / SHARD).unlink(), (SHARD, "missing")),
    ("index lists a tensor no shard holds", _edit_index(lambda i: i["weight_map"].update({"ghost.weight": SHARD})),
     ("'ghost.weight'", "no shard holds it")),
    ("tensor missing from the index", _edit_index(lambda i: i["weight_map"].pop(_first_mapped(i))),
     ("missing from", INDEX)),
    ("index without weight_map", _write(INDEX, b'{"metadata": {}}'), (INDEX, "weight_map")),
    ("index is not JSON", _write(INDEX, b"{"), (INDEX, "not valid JSON")),
    ("config is not JSON", _write("config.json", b"{'model_type': 1"), ("config.json", "not valid JSON")),
    ("config is a list", _write("config.json", b"[]"), ("config.json", "JSON object")),
    ("config without model_type", _write("config.json", b"{}"), ("config.json", "model_type")),
    ("nesting index is not JSON", _write("nesting_index.json", b"nope"), ("nesting_index.json", "not valid JSON")),
    ("tensor in two shards", _duplicate_tensor, ("appears in both",)),
    ("required tensor removed", _edit_header(lambda h: h.pop("backbone.embeddings.weight", None) or h.pop(
        min(k for k in h if k != "__metadata__"))), ("tensor",)),
]


@pytest.mark.parametrize("case, break_it, words", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_checkpoint(tiny_parent: Path, tmp_path: Path, case: str, break_it, words) -> None:
    parent = tmp_path / "parent"
    shutil.copytree(tiny_parent, parent)
    break_it(parent)
    out = tmp_path / "out"
    for args in (["extract", parent, "--size", "12B", "--out", out], ["inspect", parent]):
        result = run_cli(*args)
        assert result.code == 2, (case, args[0], result.code, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        message = " ".join((result.stderr + result.stdout).split())
        for word in words:
            assert word in message, (case, word, message)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_custom_code_is_copied_never_run(tiny_parent: Path, tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    shutil.copytree(tiny_parent, parent)
    marker = tmp_path / "pwned"
    (parent / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((parent / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (parent / "config.json").write_text(json.dumps(config))
    for args in (["inspect", parent], ["extract", parent, "--size", "12B", "--out", tmp_path / "out"],
                 ["verify", tmp_path / "out", "--parent", parent]):
        assert run_cli(*args).code == 0
    assert (tmp_path / "out" / "modeling_evil.py").exists() and not marker.exists()


def test_not_enough_disk_space(tiny_parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    result = run_cli("extract", tiny_parent, "--size", "12B", "--out", tmp_path / "out")
    assert result.code == 1 and "not enough disk space" in result.stderr and "1.00 KB is free" in result.stderr
    assert "0.00" not in result.stderr
    assert not (tmp_path / "out").exists()
