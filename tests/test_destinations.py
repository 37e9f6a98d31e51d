"""Output destinations never lose or overwrite a user's files: hostile and broken --out paths, --overwrite over
what elastic-slice did not write, Hub ids, index outputs, races and failed swaps.

Every refused case hashes the whole workspace (the parent, the neighbours of --out, an outside folder) before and
after and asserts it is byte-identical, with no staging, lock or `.old-*` path left behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import run_cli, tree_hash
from elastic_slice import api, destination
from elastic_slice.errors import InputError, RunFailure
from elastic_slice.hub import check_repo_id
from elastic_slice.writer import STAGING_MARKER

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = "elastic_slice_manifest.json"
IS_ROOT_WRITABLE = os.access("/", os.W_OK)


@dataclass
class Work:
    """A workspace: work/parent (a copy of the tiny parent), neighbours of the outputs, and an outside folder."""

    root: Path
    work: Path
    parent: Path
    out: Path
    outside: Path

    def words(self, words: tuple[str, ...]) -> list[str]:
        return [w.format(parent=self.parent, work=self.work, out=self.out, outside=self.outside) for w in words]


@pytest.fixture
def ws(tiny_parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Work:
    work = tmp_path / "work"
    parent = work / "parent"
    shutil.copytree(tiny_parent, parent)
    (work / "neighbour.txt").write_text("a neighbour of --out\n")
    (work / "sibling").mkdir()
    (work / "sibling" / "notes.txt").write_text("the user's notes\n")
    os.symlink("parent", work / "link-to-parent")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("outside every output\n")
    monkeypatch.chdir(work)
    return Work(tmp_path, work, parent, work / "out", outside)


def earlier_output(ws: Work, path: Path | None = None) -> Path:
    """An output of budget 12B written by elastic-slice (what --overwrite may replace)."""
    out = path or ws.out
    api.extract(ws.parent, "12B", out)
    return out


def edit(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(data)


def after_earlier(change: Callable[[Path], None]) -> Callable[[Work], list[str]]:
    """An earlier output at --out, changed by `change`, then extract over it with --overwrite."""
    def setup(ws: Work) -> list[str]:
        change(earlier_output(ws))
        return ["extract", str(ws.parent), "--size", "12B", "--out", str(ws.out), "--overwrite"]

    return setup


def extract(out: str | Callable[[Work], str], *extra: str, parent: str = "{parent}") -> Callable[[Work], list[str]]:
    def setup(ws: Work) -> list[str]:
        target = out(ws) if callable(out) else out.format(parent=ws.parent, work=ws.work, out=ws.out)
        return ["extract", parent.format(parent=ws.parent, work=ws.work), "--size", "12B", "--out", target, *extra]

    return setup


def with_setup(prepare: Callable[[Work], object], command: Callable[[Work], list[str]]) -> Callable[[Work], list[str]]:
    def setup(ws: Work) -> list[str]:
        prepare(ws)
        return command(ws)

    return setup


def make_dir(*names: str, files: dict[str, str] | None = None) -> Callable[[Work], None]:
    def prepare(ws: Work) -> None:
        folder = ws.work.joinpath(*names)
        folder.mkdir(parents=True)
        for name, text in (files or {}).items():
            (folder / name).write_text(text)

    return prepare


def link(name: str, target: str) -> Callable[[Work], None]:
    return lambda ws: os.symlink(target, ws.work / name)


def index_args(ws: Work, *extra: str) -> list[str]:
    return ["index", str(ws.parent), "--from-config", f"12B={ws.parent}", "--parent-name", "30B", *extra]


def fake_cache_snapshot(ws: Work) -> Path:
    """The parent laid out as a Hugging Face cache repo: blobs, and a snapshot of links to them."""
    repo = ws.work / "hub" / "models--acme--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in sorted(ws.parent.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / path.name)
    return snapshot


def _set_manifest(folder: Path, change: Callable[[dict], None]) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _shard_cut(folder: Path) -> None:
    shard = next(folder.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-1])


def _as_link(folder: Path) -> None:
    (folder / "generation_config.json").unlink()
    os.symlink("config.json", folder / "generation_config.json")


LONG = "n" * 300
OVERLAP = ("the parent checkpoint {parent}",)

# (case id, setup returning the command line, exit code, words the message must contain)
CASES: list[tuple[str, Callable[[Work], list[str]], int, tuple[str, ...]]] = [
    # --out is, lies inside or contains the parent (after resolving links), for every command that writes
    ("extract out=parent overwrite", extract("{parent}", "--overwrite"), 2, ("--out {parent} is", *OVERLAP)),
    ("extract out=parent", extract("{parent}"), 2, ("--out {parent} is", *OVERLAP)),
    ("extract out inside parent", extract("{parent}/sub"), 2, ("lies inside", *OVERLAP)),
    ("extract out deep inside parent", extract("{parent}/a/b", "--overwrite"), 2, ("lies inside", *OVERLAP)),
    ("extract out contains parent", extract("{work}", "--overwrite"), 2, ("--out {work} contains", *OVERLAP)),
    ("extract out via link into parent", extract("link-to-parent/x"), 2, ("lies inside", *OVERLAP)),
    ("extract out is link to parent", extract("link-to-parent", "--overwrite"), 2, ("is", *OVERLAP)),
    ("extract parent via link", extract("{parent}/x", parent="{work}/link-to-parent"), 2, ("lies inside", *OVERLAP)),
    ("extract relative parent/..", extract("sibling/../parent", "--overwrite"), 2, ("{parent} is", *OVERLAP)),
    ("extract relative parent/.", extract("parent/.", "--overwrite"), 2, ("{parent} is", *OVERLAP)),
    ("extract all out=parent", lambda ws: ["extract", str(ws.parent), "--all", "--out", str(ws.parent), "--overwrite"],
     2, ("{parent} is", *OVERLAP)),
    ("extract all inside parent", lambda ws: ["extract", str(ws.parent), "--all", "--out", str(ws.parent / "all")],
     2, ("lies inside", *OVERLAP)),
    ("extract all contains parent", lambda ws: ["extract", str(ws.parent), "--all", "--out", str(ws.work),
                                                "--overwrite"], 2, ("contains", *OVERLAP)),
    ("extract two budgets into parent", lambda ws: ["extract", str(ws.parent), "--size", "12B", "--size", "23B",
                                                    "--out", str(ws.parent / "two")], 2, ("lies inside", *OVERLAP)),
    ("quantize out=parent", lambda ws: ["quantize", str(ws.parent), "--quantize", "fp8", "--quant-format",
                                        "compressed-tensors", "--out", str(ws.parent), "--overwrite"],
     2, ("{parent} is", *OVERLAP)),
    ("quantize out inside parent", lambda ws: ["quantize", str(ws.parent), "--quantize", "fp8", "--quant-format",
                                               "compressed-tensors", "--out", str(ws.parent / "q")],
     2, ("lies inside", *OVERLAP)),
    ("quantize out contains parent", lambda ws: ["quantize", str(ws.parent), "--quantize", "fp8", "--quant-format",
                                                 "compressed-tensors", "--out", str(ws.work), "--overwrite"],
     2, ("contains", *OVERLAP)),
    ("index out inside parent", lambda ws: index_args(ws, "--out", str(ws.parent / "nesting_index.json"),
                                                      "--overwrite"), 2, ("index --out", "lies inside", *OVERLAP)),
    ("index out new file in parent", lambda ws: index_args(ws, "--out", str(ws.parent / "other.json")),
     2, ("lies inside", *OVERLAP)),
    ("index out is parent", lambda ws: index_args(ws, "--out", str(ws.parent), "--overwrite"),
     2, ("{parent} is", *OVERLAP)),
    ("out in cache blobs of a snapshot parent", lambda ws: [
        "extract", str(fake_cache_snapshot(ws)), "--size", "12B", "--out",
        str(ws.work / "hub" / "models--acme--tiny" / "blobs" / "x")], 2,
     ("lies inside", "Hugging Face cache folder {work}/hub/models--acme--tiny")),
    # paths that cannot be created or renamed into place
    ("out dangling link", with_setup(link("out", "nowhere"), extract("{out}")), 2, ("symbolic link", "nowhere")),
    ("out link to folder overwrite", with_setup(link("out", "sibling"), extract("{out}", "--overwrite")),
     2, ("symbolic link", "sibling")),
    ("out link to file", with_setup(link("out", "neighbour.txt"), extract("{out}", "--overwrite")),
     2, ("symbolic link",)),
    ("out ends in ..", extract("sibling/..", "--overwrite"), 2, ("sibling/..", "its last part is '..'")),
    ("out is .", extract(".", "--overwrite"), 2, ("--out . does not name", "its last part is '.'")),
    ("out is /", extract("/", "--overwrite"), 2, ("its last part is '/'",)),
    ("out is a mount point", extract("/proc", "--overwrite"), 2,
     ("/proc", "mount point" if IS_ROOT_WRITABLE else "not writable")),
    ("out name too long", extract(LONG), 2, ("300 bytes", "longer than")),
    ("out under a too long folder", extract(f"{LONG}/out"), 2, ("300 bytes", "longer than")),
    ("out under a file", extract("neighbour.txt/out"), 2, ("{work}/neighbour.txt is not a folder",)),
    ("out under a dangling link", with_setup(link("gone", "nowhere"), extract("gone/out")), 2, ("gone is a link to nothing",)),
    ("out in unwritable folder", extract("/proc/sys/out"), 2, ("/proc/sys", "not writable")),
    ("out is a file", extract("neighbour.txt"), 2, ("neighbour.txt is a file",)),
    ("out is a file overwrite", extract("neighbour.txt", "--overwrite"), 2, ("neighbour.txt is a file",)),
    # what --overwrite may not replace
    ("out exists", with_setup(make_dir("out", files={"a.txt": "x"}), extract("{out}")), 2,
     ("already exists", "--overwrite")),
    ("out exists empty", with_setup(make_dir("out"), extract("{out}")), 2, ("already exists",)),
    ("overwrite foreign folder", with_setup(make_dir("out", files={"config.json": "{}", "my.txt": "mine"}),
                                            extract("{out}", "--overwrite")),
     2, ("'config.json'", "'my.txt'", "no elastic_slice_manifest.json", "remove it yourself")),
    ("overwrite earlier plus a file", after_earlier(edit("extra.txt", b"mine")), 2,
     ("'extra.txt' is not in its manifest",)),
    ("overwrite earlier plus a folder", after_earlier(lambda f: (f / "data").mkdir()), 2,
     ("'data' is not in its manifest",)),
    ("overwrite earlier edited config", after_earlier(edit("config.json", b'{"mine": 1}')), 2,
     ("'config.json'", "has")),
    ("overwrite earlier edited card same size", after_earlier(
        lambda f: (f / "README.md").write_bytes(b"X" * (f / "README.md").stat().st_size)), 2,
     ("'README.md' was changed",)),
    ("overwrite earlier missing file", after_earlier(lambda f: (f / "tokenizer.json").unlink()), 2,
     ("'tokenizer.json' is listed in its manifest but missing",)),
    ("overwrite earlier cut shard", after_earlier(_shard_cut), 2, ("bytes where its manifest says",)),
    ("overwrite earlier file made a link", after_earlier(_as_link), 2, ("not a plain file",)),
    ("overwrite earlier bad manifest format", after_earlier(
        lambda f: _set_manifest(f, lambda m: m.update(format="other"))), 2, ("not a manifest elastic-slice wrote",)),
    ("overwrite earlier manifest escapes", after_earlier(
        lambda f: _set_manifest(f, lambda m: m["files"].update({"../neighbour.txt": {"size": 1}}))), 2,
     ("not a manifest elastic-slice wrote",)),
    ("overwrite earlier manifest is a list", after_earlier(edit(MANIFEST, b"[1, 2]")), 2,
     ("not a manifest elastic-slice wrote",)),
    ("overwrite earlier manifest files a list", after_earlier(
        lambda f: _set_manifest(f, lambda m: m.update(files=list(m["files"])))), 2,
     ("not a manifest elastic-slice wrote",)),
    ("overwrite earlier manifest not JSON", after_earlier(edit(MANIFEST, b"{not json")), 2,
     ("not a manifest elastic-slice wrote",)),
    ("overwrite budget folder foreign", with_setup(make_dir("out", "12B", files={"mine.txt": "x"}), lambda ws: [
        "extract", str(ws.parent), "--size", "12B", "--size", "23B", "--out", str(ws.out), "--overwrite"]),
     2, ("{out}/12B", "'mine.txt'")),
    ("quantize overwrite foreign", with_setup(make_dir("out", files={"mine.txt": "x"}), lambda ws: [
        "quantize", str(ws.parent), "--quantize", "fp8", "--quant-format", "compressed-tensors", "--out", str(ws.out),
        "--overwrite"]), 2, ("'mine.txt'",)),
    # Hub ids, refused before anything is read (the checkpoint does not even exist in the push cases)
    ("ckpt org/..", extract("{out}", parent="org/.."), 2, ("CKPT 'org/..'", "not a Hub repo id")),
    ("ckpt org/.", extract("{out}", parent="org/."), 2, ("CKPT 'org/.'", "not a Hub repo id")),
    ("ckpt org--x/y", extract("{out}", parent="org--x/y"), 2, ("CKPT 'org--x/y'", "not a Hub repo id")),
    ("push org/..", extract("{out}", "--push-to-hub", "org/..", parent="missing"), 2, ("--push-to-hub 'org/..'",)),
    ("push ../x", extract("{out}", "--push-to-hub", "../x", parent="missing"), 2, ("--push-to-hub '../x'",)),
    ("push org/.", extract("{out}", "--push-to-hub", "org/.", parent="missing"), 2, ("--push-to-hub 'org/.'",)),
    ("push space", extract("{out}", "--push-to-hub", "org/na me", parent="missing"), 2, ("'org/na me'",)),
    ("push three parts", extract("{out}", "--push-to-hub", "a/b/c", parent="missing"), 2, ("'a/b/c'",)),
    ("push no org", extract("{out}", "--push-to-hub", "name", parent="missing"), 2, ("'name'", "ORG/NAME")),
    ("push bad template", extract("{out}", "--push-to-hub", "org/m-{budget}!", parent="missing"), 2,
     ("'org/m-{{budget}}!'",)),
    ("from-config org/..", lambda ws: ["index", str(ws.parent), "--from-config", "12B=org/.."], 2,
     ("--from-config 'org/..'",)),
    # index outputs
    ("index out is a folder", lambda ws: index_args(ws, "--out", str(ws.work / "sibling"), "--overwrite"), 2,
     ("sibling is a folder",)),
    ("index out in missing folder", lambda ws: index_args(ws, "--out", str(ws.work / "nope" / "i.json")), 2,
     ("{work}/nope does not exist", "create it first")),
    ("index out exists", lambda ws: index_args(ws, "--out", str(ws.work / "neighbour.txt")), 2,
     ("already exists", "--overwrite")),
    ("index overwrite non-index", lambda ws: index_args(ws, "--out", str(ws.work / "neighbour.txt"), "--overwrite"),
     2, ("not a JSON nesting index",)),
    ("index out dangling link", with_setup(link("i.json", "nowhere"), lambda ws: index_args(
        ws, "--out", str(ws.work / "i.json"), "--overwrite")), 2, ("symbolic link",)),
    ("index write-into exists", lambda ws: index_args(ws, "--write-into"), 2, ("nesting_index.json already exists",)),
    ("index write-into over other JSON", with_setup(
        lambda ws: (ws.parent / "nesting_index.json").write_text('{"format": "mine"}'),
        lambda ws: index_args(ws, "--write-into", "--overwrite")), 2, ("is not a nesting index",)),
    ("index write-into hub id", lambda ws: ["index", "acme/tiny", "--from-config", f"12B={ws.parent}",
                                            "--write-into"], 2, ("--write-into needs a local parent folder",)),
]


def test_missing_parent_is_named_missing_even_when_out_is_its_path(ws: Work) -> None:
    missing = ws.work / "nope"
    result = run_cli("extract", missing, "--size", "12B", "--out", missing)
    assert result.code == 2 and "does not exist" in result.stderr, result.stderr
    assert not missing.exists()


def test_push_to_hub_while_offline_is_refused_before_any_work(ws: Work, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = tree_hash(ws.root)
    result = run_cli("extract", ws.parent, "--size", "12B", "--out", ws.out, "--push-to-hub", "org/m")
    assert result.code == 2 and "HF_HUB_OFFLINE is set" in result.stderr, result.stderr
    assert tree_hash(ws.root) == before


@pytest.mark.parametrize("case, setup, code, words", CASES, ids=[c[0] for c in CASES])
def test_refused_destination_changes_nothing(ws: Work, case: str, setup, code: int, words) -> None:
    args = setup(ws)
    before = tree_hash(ws.root)
    result = run_cli(*args)
    assert result.code == code, (case, result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    message = " ".join(result.stderr.split())
    assert message.startswith("error:") and message.count("error:") == 1, message
    for word in ws.words(words):
        assert word in message, (case, word, message)
    assert tree_hash(ws.root) == before, case


def _litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_overwrite_replaces_an_earlier_output(ws: Work) -> None:
    earlier_output(ws)
    neighbours = tree_hash(ws.work / "sibling"), tree_hash(ws.parent), tree_hash(ws.outside)
    result = run_cli("extract", ws.parent, "--size", "23B", "--out", ws.out, "--overwrite")
    assert result.code == 0, result.stderr
    assert json.loads((ws.out / MANIFEST).read_text())["budget"]["name"] == "23B"
    assert api.verify(ws.out, parent=ws.parent).ok
    assert (tree_hash(ws.work / "sibling"), tree_hash(ws.parent), tree_hash(ws.outside)) == neighbours
    assert _litter(ws.work) == []


def test_overwrite_replaces_an_empty_folder(ws: Work) -> None:
    ws.out.mkdir()
    assert run_cli("extract", ws.parent, "--size", "12B", "--out", ws.out, "--overwrite").code == 0
    assert api.verify(ws.out, parent=ws.parent).ok and _litter(ws.work) == []


def test_several_budgets_keep_the_rest_of_out(ws: Work) -> None:
    ws.out.mkdir()
    (ws.out / "mine.txt").write_text("kept")
    earlier_output(ws, ws.out / "12B")
    result = run_cli("extract", ws.parent, "--size", "12B", "--size", "23B", "--out", ws.out, "--overwrite")
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in ws.out.iterdir()) == ["12B", "23B", "mine.txt"]
    assert (ws.out / "mine.txt").read_text() == "kept"
    assert api.verify(ws.out / "23B", parent=ws.parent).ok


def test_index_write_into_replaces_only_the_index(ws: Work) -> None:
    others = {k: v for k, v in tree_hash(ws.parent).items() if k != "nesting_index.json"}
    result = run_cli(*index_args(ws, "--write-into", "--overwrite"))
    assert result.code == 0, result.stderr
    assert json.loads((ws.parent / "nesting_index.json").read_text())["parent"] == "30B"
    assert {k: v for k, v in tree_hash(ws.parent).items() if k != "nesting_index.json"} == others
    written = run_cli(*index_args(ws, "--out", str(ws.work / "index.json")))
    assert written.code == 0 and json.loads((ws.work / "index.json").read_text())["format"] == "elastic-nesting-index"
    again = run_cli(*index_args(ws, "--out", str(ws.work / "index.json"), "--overwrite"))
    assert again.code == 0, again.stderr
    assert _litter(ws.work) == [] and _litter(ws.parent) == []


def test_hub_repo_id_out_inside_its_cache(ws: Work, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(ws.work / "hub"))
    fake_cache_snapshot(ws)
    before = tree_hash(ws.root)
    snapshot = ws.work / "hub" / "models--acme--tiny" / "snapshots" / ("0" * 40)
    result = run_cli("extract", "acme/tiny", "--size", "12B", "--out", snapshot, "--overwrite")
    assert result.code == 2 and "Traceback" not in result.stderr
    assert "lies inside the Hugging Face cache folder of acme/tiny" in " ".join(result.stderr.split())
    assert tree_hash(ws.root) == before


@pytest.mark.parametrize("repo_id", ["org/name", "Org-1/na.me_2", "a/b"])
def test_valid_repo_ids(repo_id: str) -> None:
    assert check_repo_id(repo_id) == repo_id


@pytest.mark.parametrize("repo_id", ["org/..", "../x", "org/.", "./x", "org/", "/x", "org/a b", "org/a..b",
                                     "org/x.git", "org/" + "x" * 100, "org/-x", "org/x\n", "org/[bold]x"])
def test_invalid_repo_ids(repo_id: str) -> None:
    with pytest.raises(InputError, match="not a Hub repo id"):
        check_repo_id(repo_id)


# ---- free space: every byte counts, in readable units


def _free(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**13, 10**13 - free, free))


def test_free_space_counts_companion_files(ws: Work, monkeypatch: pytest.MonkeyPatch) -> None:
    with (ws.parent / "vocab.txt").open("wb") as handle:
        handle.truncate(4 * 10**9)  # sparse: takes no disk here, but the copy is 4 GB
    _free(monkeypatch, 10**9)
    before = tree_hash(ws.root)
    result = run_cli("extract", ws.parent, "--size", "12B", "--out", ws.out)
    message = " ".join(result.stderr.split())
    assert result.code == 1 and "the output needs 4.00 GB, 1.00 GB is free" in message, message
    assert tree_hash(ws.root) == before


def test_free_space_message_has_useful_units(ws: Work, monkeypatch: pytest.MonkeyPatch) -> None:
    _free(monkeypatch, 5000)
    result = run_cli("extract", ws.parent, "--size", "12B", "--out", ws.out)
    assert result.code == 1 and " MB, 5.00 KB is free" in result.stderr and "0.00" not in result.stderr


def test_free_space_estimate_covers_what_is_written(ws: Work) -> None:
    plan = api.plan_extract(ws.parent, "12B")
    from elastic_slice.checkpoint import open_checkpoint
    from elastic_slice.writer import companion_files, output_bytes

    estimate = output_bytes(plan, [path for _, path in companion_files(open_checkpoint(ws.parent))], [])
    written = sum(path.stat().st_size for path in earlier_output(ws).iterdir())
    assert written <= estimate <= written + 2**20, (written, estimate)


# ---- races: the destination is claimed for the whole run


def _create_at(path: Path, files: dict[str, str]) -> Callable[[int], None]:
    """An on_bytes hook that creates a folder at `path` once the output is being written."""
    done = []

    def hook(count: int) -> None:
        if not done:
            path.mkdir()
            for name, text in files.items():
                (path / name).write_text(text)
            done.append(True)

    return hook


@pytest.fixture(params=["renameat2", "mkdir-claim"])
def rename_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with renameat2(RENAME_NOREPLACE), then with the fallback for systems without it."""
    if request.param == "mkdir-claim":
        monkeypatch.setattr(destination, "_renameat2", lambda: None)
    else:
        assert destination._renameat2() is not None
    return request.param


def test_folder_created_mid_run_survives(ws: Work, rename_kind: str) -> None:
    with pytest.raises(InputError, match="appeared while elastic-slice was writing"):
        api.extract(ws.parent, "12B", ws.out, on_bytes=_create_at(ws.out, {"mine.txt": "mine"}))
    assert tree_hash(ws.out) == {"mine.txt": hashlib.sha256(b"mine").hexdigest()}
    assert _litter(ws.work) == []


def test_empty_folder_created_mid_run_survives(ws: Work, rename_kind: str) -> None:
    with pytest.raises(InputError, match="appeared while"):
        api.extract(ws.parent, "12B", ws.out, on_bytes=_create_at(ws.out, {}))
    assert ws.out.is_dir() and list(ws.out.iterdir()) == [] and _litter(ws.work) == []


def test_foreign_folder_created_mid_run_is_not_overwritten(ws: Work, rename_kind: str) -> None:
    with pytest.raises(InputError, match="'mine.txt' and no elastic_slice_manifest.json"):
        api.extract(ws.parent, "12B", ws.out, overwrite=True, on_bytes=_create_at(ws.out, {"mine.txt": "mine"}))
    assert tree_hash(ws.out) == {"mine.txt": hashlib.sha256(b"mine").hexdigest()}
    assert _litter(ws.work) == []


def test_folder_created_after_planning_survives(ws: Work) -> None:
    def hook(plans: object) -> None:
        ws.out.mkdir()
        (ws.out / "mine.txt").write_text("mine")

    with pytest.raises(InputError, match="already exists"):
        api.extract_many(ws.parent, ["12B"], ws.out, nest=False, on_plans=hook)
    assert (ws.out / "mine.txt").read_text() == "mine" and _litter(ws.work) == []


def test_earlier_output_appearing_mid_run_is_replaced(ws: Work, tmp_path: Path, rename_kind: str) -> None:
    earlier = earlier_output(ws, tmp_path / "earlier")

    done: list[bool] = []

    def hook(count: int) -> None:
        if not done:
            shutil.copytree(earlier, ws.out)
            done.append(True)

    api.extract(ws.parent, "23B", ws.out, overwrite=True, on_bytes=hook)
    assert api.verify(ws.out, parent=ws.parent).ok
    assert json.loads((ws.out / MANIFEST).read_text())["budget"]["name"] == "23B"
    assert _litter(ws.work) == []


def _race(ws: Work, first_waits: bool) -> tuple[list[object], list[object]]:
    """Two in-process extracts to one --out; the first pauses mid-write until the second has finished."""
    writing, second_done = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def pause(count: int) -> None:
        writing.set()
        if first_waits:
            second_done.wait(60)

    def run(name: str, budget: str, hook: Callable[[int], None] | None) -> None:
        try:
            results[name] = api.extract(ws.parent, budget, ws.out, on_bytes=hook)
        except (InputError, RunFailure) as exc:
            results[name] = exc

    first = threading.Thread(target=run, args=("first", "23B", pause))
    first.start()
    assert writing.wait(60)
    run("second", "12B", None)
    second_done.set()
    first.join(60)
    ok = [r for r in results.values() if isinstance(r, api.ExtractResult)]
    failed = [r for r in results.values() if not isinstance(r, api.ExtractResult)]
    return ok, failed


def test_concurrent_run_stops_at_the_lock(ws: Work) -> None:
    ok, failed = _race(ws, first_waits=True)
    assert len(ok) == 1 and len(failed) == 1, (ok, failed)
    assert isinstance(failed[0], InputError) and "being written by another elastic-slice run" in str(failed[0])
    assert f"(process {os.getpid()})" in str(failed[0])
    assert ok[0].budget == "23B" and api.verify(ws.out, parent=ws.parent).ok and _litter(ws.work) == []


def test_concurrent_runs_without_the_lock_lose_nothing(ws: Work, monkeypatch: pytest.MonkeyPatch,
                                                       rename_kind: str) -> None:
    """Even a writer that ignores the lock (another tool, an older version) is never replaced."""
    monkeypatch.setattr(destination, "_lock", lambda *args: -1)
    ok, failed = _race(ws, first_waits=True)
    assert len(ok) == 1 and len(failed) == 1, (ok, failed)
    assert isinstance(failed[0], InputError) and "appeared while" in str(failed[0])
    assert ok[0].budget == "12B"  # the second run finished first; the first found --out taken at its swap
    assert json.loads((ws.out / MANIFEST).read_text())["budget"]["name"] == "12B"
    assert api.verify(ws.out, parent=ws.parent).ok and _litter(ws.work) == []


@pytest.mark.slow
def test_two_processes_to_one_out(ws: Work) -> None:
    command = [sys.executable, "-m", "elastic_slice", "extract", str(ws.parent), "--size", "12B", "--out", str(ws.out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    outcomes = [(p.wait(120), p.stderr.read().decode()) for p in processes if p.stderr is not None]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 2], outcomes
    loser = next(err for code, err in outcomes if code == 2)
    assert "Traceback" not in loser
    assert any(words in loser for words in ("being written by another", "already exists", "appeared while")), loser
    assert api.verify(ws.out, parent=ws.parent).ok and _litter(ws.work) == []


#: an extract that pauses at its first written bytes until the file argv[3] exists (at most a minute)
PAUSED_EXTRACT = """
import pathlib, sys, time
from elastic_slice import api
def pause(count, deadline=time.monotonic() + 60):
    while not pathlib.Path(sys.argv[3]).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
api.extract(sys.argv[1], "12B", sys.argv[2], on_bytes=pause)
"""


@pytest.mark.slow
def test_second_process_stops_at_the_lock_of_a_paused_first(ws: Work) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    go = ws.root / "go"
    first = subprocess.Popen([sys.executable, "-c", PAUSED_EXTRACT, str(ws.parent), str(ws.out), str(go)], env=env,
                             stderr=subprocess.PIPE)
    lock = ws.work / ".out.lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text()) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    second = subprocess.run([sys.executable, "-m", "elastic_slice", "extract", str(ws.parent), "--size", "23B",
                             "--out", str(ws.out), "--overwrite"], env=env, capture_output=True, text=True)
    assert first.poll() is None, "the first run ended before the second started"
    go.touch()
    assert first.wait(120) == 0, first.stderr.read() if first.stderr else ""
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert f"being written by another elastic-slice run (process {first.pid})" in " ".join(second.stderr.split())
    assert json.loads((ws.out / MANIFEST).read_text())["budget"]["name"] == "12B"
    assert api.verify(ws.out, parent=ws.parent).ok and _litter(ws.work) == []


# ---- a failing swap restores the previous state


def test_failed_swap_restores_the_earlier_output(ws: Work, monkeypatch: pytest.MonkeyPatch) -> None:
    earlier_output(ws)
    before = tree_hash(ws.root)
    rename = destination._rename_noreplace

    def failing(source: Path, target: Path) -> None:
        if ".partial-" in source.name:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(target))
        rename(source, target)

    monkeypatch.setattr(destination, "_rename_noreplace", failing)
    result = run_cli("extract", ws.parent, "--size", "23B", "--out", ws.out, "--overwrite")
    message = " ".join(result.stderr.split())
    assert result.code == 1 and "Traceback" not in message, message
    assert "moving the finished output into place failed" in message and "was changed" in message
    assert tree_hash(ws.root) == before


def test_failed_swap_of_several_budgets_changes_none(ws: Work, monkeypatch: pytest.MonkeyPatch) -> None:
    earlier_output(ws, ws.out / "12B")
    earlier_output(ws, ws.out / "23B")
    before = tree_hash(ws.root)
    rename = destination._rename_noreplace

    def failing(source: Path, target: Path) -> None:
        if ".partial-" in source.name and target.name == "23B":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(target))
        rename(source, target)

    monkeypatch.setattr(destination, "_rename_noreplace", failing)
    result = run_cli("extract", ws.parent, "--size", "12B", "--size", "23B", "--out", ws.out, "--overwrite")
    assert result.code == 1 and "Traceback" not in result.stderr, result.stderr
    assert tree_hash(ws.root) == before


def test_killed_swap_is_put_back_by_the_next_run(ws: Work) -> None:
    earlier_output(ws)
    before = tree_hash(ws.out)
    dead = _dead_pid()
    ws.out.rename(ws.work / f".out.old-{dead}-0000")  # a run killed between its two renames
    (ws.work / f".out.partial-{dead}-1111").mkdir()
    (ws.work / f".out.partial-{dead}-1111" / STAGING_MARKER).touch()  # as every staging folder holds
    result = run_cli("extract", ws.parent, "--size", "12B", "--out", ws.out)
    assert result.code == 2 and "already exists" in result.stderr  # the earlier output is back in place
    assert tree_hash(ws.out) == before and _litter(ws.work) == []


def test_abandoned_old_folder_is_removed_when_replaced(ws: Work) -> None:
    earlier_output(ws)
    dead = _dead_pid()
    earlier_output(ws, ws.work / f".out.old-{dead}-0000")
    assert run_cli("extract", ws.parent, "--size", "12B", "--out", ws.out, "--overwrite").code == 0
    assert _litter(ws.work) == []


def test_folders_named_like_leftovers_that_are_not_ours_are_left_alone(ws: Work) -> None:
    """A user's folders that merely look like a killed run's staging or old output are neither moved nor deleted."""
    dead = _dead_pid()
    for name in (f".out.old-{dead}-abc", f".out.partial-{dead}-abc"):
        (ws.work / name).mkdir()
        (ws.work / name / "u.txt").write_text("mine")
    before = tree_hash(ws.work)
    assert run_cli("extract", ws.parent, "--size", "12B", "--out", ws.out).code == 0
    assert not (ws.out / "u.txt").exists()
    shutil.rmtree(ws.out)
    assert tree_hash(ws.work) == before


def test_overwrite_refuses_an_earlier_output_whose_shard_was_edited_in_place(ws: Work) -> None:
    """A shard changed after the output was written keeps its size (same shapes), so size alone cannot tell:
    its modification time, later than the manifest's, does."""
    out = earlier_output(ws)
    shard = next(out.glob("*.safetensors"))
    with shard.open("r+b") as handle:
        handle.seek(shard.stat().st_size - 1)
        handle.write(b"\x42")
    manifest_time = (out / "elastic_slice_manifest.json").stat().st_mtime_ns
    os.utime(shard, ns=(manifest_time + 10**9, manifest_time + 10**9))
    before = tree_hash(ws.root)
    result = run_cli("extract", ws.parent, "--size", "12B", "--out", out, "--overwrite")
    assert result.code == 2 and "was changed after elastic-slice wrote it" in result.stderr, result.stderr
    assert tree_hash(ws.root) == before


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        pid += 1


def test_long_out_name_works(ws: Work) -> None:
    out = ws.work / ("x" * 250)  # helper names beside it (staging, lock) use a shortened, hashed form of it
    assert run_cli("extract", ws.parent, "--size", "12B", "--out", out).code == 0
    assert api.verify(out, parent=ws.parent).ok and _litter(ws.work) == []
    assert run_cli("extract", ws.parent, "--size", "23B", "--out", out, "--overwrite").code == 0
    assert _litter(ws.work) == []
