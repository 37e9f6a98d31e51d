"""Hub repo ids online: remote inspect, downloading only the shards a budget reads, and --push-to-hub.

The "Hub" here is a LOCAL STAND-IN (tests/hub_standin.py) on 127.0.0.1, not huggingface.co: it serves the endpoints
huggingface_hub's own client calls, so the real client code runs with no network. The CLI runs in a subprocess with
HF_ENDPOINT pointing at it, as a user's environment would. Uploads take the Git LFS path (HF_HUB_DISABLE_XET=1):
the Xet storage protocol that huggingface_hub uses by default when hf_xet is installed is beyond this stand-in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from hub_standin import HubStandIn

pytestmark = pytest.mark.slow  # the CLI in subprocesses against a local Hub stand-in

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tiny-elastic"
MAIN, SPARE = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


@pytest.fixture(scope="module")
def split_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example re-sharded so that routed experts 12-15 (which budget 12B drops) sit in a shard of their own."""
    folder = tmp_path_factory.mktemp("split")
    tensors: dict = {}
    for shard in sorted(EXAMPLE.glob("*.safetensors")):
        tensors.update(load_file(shard))
    spare = {n for n in tensors if any(f".experts.{e}." in n for e in (12, 13, 14, 15))}
    save_file({n: t for n, t in tensors.items() if n not in spare}, folder / MAIN, metadata={"format": "pt"})
    save_file({n: tensors[n] for n in spare}, folder / SPARE, metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
             "weight_map": {n: SPARE if n in spare else MAIN for n in sorted(tensors)}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    for path in EXAMPLE.iterdir():
        if not path.name.endswith(".safetensors") and path.name != "model.safetensors.index.json":
            shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture
def hub(split_parent: Path) -> Iterator[HubStandIn]:
    with HubStandIn() as stand_in:
        stand_in.add_folder("acme/split", split_parent)
        yield stand_in


def _cli(hub: HubStandIn, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(cache), "HF_TOKEN": "hf_standin",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    return subprocess.run([sys.executable, "-m", "elastic_slice", *args], capture_output=True, text=True, env=env)


def _shard_gets(hub: HubStandIn) -> dict[str, list[str]]:
    """Range header ('' for a whole file) of every GET of a weight shard, by shard name."""
    gets: dict[str, list[str]] = {}
    for method, path, headers in hub.requests:
        if method == "GET" and path.endswith(".safetensors"):
            gets.setdefault(path.rsplit("/", 1)[1], []).append(headers.get("range", ""))
    return gets


def test_remote_inspect_reads_headers_only_and_prices_the_download(
    hub: HubStandIn, split_parent: Path, tmp_path: Path
) -> None:
    result = _cli(hub, tmp_path / "cache", "inspect", "acme/split", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    main, spare = (split_parent / MAIN).stat().st_size, (split_parent / SPARE).stat().st_size
    assert report["hub"]["repo_id"] == "acme/split"
    assert report["hub"]["commit"] == hub.repos["acme/split"].head[0]
    assert (report["hub"]["download_bytes"], report["hub"]["cached_bytes"]) == (main + spare, 0)
    download = {b["name"]: b["download_bytes"] for b in report["budgets"]}
    assert download == {"30B": main + spare, "23B": main + spare, "12B": main}
    local = json.loads(_cli(hub, tmp_path / "cache", "inspect", str(split_parent), "--json").stdout)
    assert [b["params_total"] for b in report["budgets"]] == [b["params_total"] for b in local["budgets"]]
    gets = _shard_gets(hub)
    assert set(gets) == {MAIN, SPARE}
    assert all(r.startswith("bytes=0-") for ranges in gets.values() for r in ranges), gets  # headers only
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # no weights in the cache
    text = _cli(hub, tmp_path / "cache", "inspect", "acme/split")
    assert text.returncode == 0 and "download" in text.stdout and "metadata and headers only" in text.stdout


def test_extract_downloads_only_the_shards_the_budget_reads(hub: HubStandIn, split_parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "12B"
    result = _cli(hub, tmp_path / "cache", "extract", "acme/split", "--size", "12B", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    whole = {name for name, ranges in _shard_gets(hub).items() if "" in ranges}
    assert whole == {MAIN}  # the shard holding only experts 12-15 was never downloaded
    local = tmp_path / "local"
    assert _cli(hub, tmp_path / "cache", "extract", str(split_parent), "--size", "12B", "--out", str(local)).returncode == 0
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (out / name).read_bytes() == (local / name).read_bytes(), name
    assert "base_model: acme/split" in (out / "README.md").read_text()
    manifest = json.loads((out / "elastic_slice_manifest.json").read_text())
    assert manifest["parent"]["hub"] == {"repo_id": "acme/split", "commit": hub.repos["acme/split"].head[0]}
    verify = _cli(hub, tmp_path / "cache", "verify", str(out), "--parent", "acme/split")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    everything = _cli(hub, tmp_path / "cache", "extract", "acme/split", "--size", "30B", "--out", str(tmp_path / "30B"))
    assert everything.returncode == 0, everything.stderr
    assert {name for name, ranges in _shard_gets(hub).items() if "" in ranges} == {MAIN, SPARE}


def test_push_to_hub_uploads_the_finished_folder(hub: HubStandIn, tmp_path: Path) -> None:
    out = tmp_path / "child"
    result = _cli(hub, tmp_path / "cache", "extract", "acme/split", "--size", "12B", "--out", str(out),
                  "--push-to-hub", "acme/split-12B", "--private", "--json")
    assert result.returncode == 0, result.stderr
    repo = hub.repos["acme/split-12B"]
    assert repo.private
    _, files = repo.head
    assert json.loads(result.stdout)["hub_url"].endswith(f"/acme/split-12B/commit/{repo.head[0]}")
    local = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {k: v for k, v in files.items() if k != ".gitattributes"} == local  # the whole folder, manifest included
    card = files["README.md"].decode()
    assert "base_model: acme/split" in card and "--push-to-hub acme/split-12B" in card
    assert "| `hidden_size` | 128 | 96 |" in card and "Parameters: 458,304 total" in card and "elastic-budget-12B" in card
    assert "budget 12B" in repo.summaries[-1]


def test_push_to_hub_mistakes_fail_before_writing(hub: HubStandIn, tmp_path: Path) -> None:
    several = _cli(hub, tmp_path / "cache", "extract", "acme/split", "--all", "--out", str(tmp_path / "all"),
                   "--push-to-hub", "acme/one-repo")
    assert several.returncode == 2 and "{budget}" in several.stderr and "Traceback" not in several.stderr
    bad = _cli(hub, tmp_path / "cache", "extract", "acme/split", "--size", "12B", "--out", str(tmp_path / "x"),
               "--push-to-hub", "not a repo")
    assert bad.returncode == 2 and "not a Hub repo id" in bad.stderr
    assert not (tmp_path / "all").exists() and not (tmp_path / "x").exists()
    nested = _cli(hub, tmp_path / "cache", "extract", "acme/split", "--size", "23B", "--size", "12B",
                  "--out", str(tmp_path / "two"), "--push-to-hub", "acme/split-{budget}")
    assert nested.returncode == 0, nested.stderr
    assert {"acme/split-23B", "acme/split-12B"} <= set(hub.repos)


def test_missing_repo_and_revision_are_one_sentence(hub: HubStandIn, tmp_path: Path) -> None:
    absent = _cli(hub, tmp_path / "cache", "inspect", "acme/absent")
    assert absent.returncode == 2 and "no such repository" in absent.stderr and "Traceback" not in absent.stderr
    revision = _cli(hub, tmp_path / "cache", "inspect", "acme/split", "--revision", "f" * 40)
    assert revision.returncode == 2 and "Traceback" not in revision.stderr, revision.stderr
