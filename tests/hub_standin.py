"""A local stand-in for the Hugging Face Hub, on 127.0.0.1, for tests only.

It is NOT the Hub: it serves the few endpoints that huggingface_hub's own client calls for the operations
elastic-slice uses (repo info, file download with HTTP ranges, repo creation, pre-upload, LFS batch upload and
commit), with the request and response shapes recorded from that client's requests. Pointing HF_ENDPOINT at it lets
the real client code run end to end with no network. Every request is logged in `HubStandIn.requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

#: files stored through LFS on the real Hub (the rest are "regular" git files)
_LFS_SUFFIXES = (".safetensors", ".bin")


@dataclass
class StoredRepo:
    """One repository: its head commit and files (path -> bytes); `commits` keeps every commit's file map."""

    private: bool = False
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)
    summaries: list[str] = field(default_factory=list)

    @property
    def head(self) -> tuple[str, dict[str, bytes]]:
        return self.commits[-1]

    def at(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        if revision == "main":
            return self.head if self.commits else None
        return next((c for c in self.commits if c[0] == revision), None)

    def commit(self, files: dict[str, bytes], summary: str) -> str:
        previous = dict(self.head[1]) if self.commits else {}
        previous.update(files)
        sha = hashlib.sha1(json.dumps(sorted((k, _sha256(v)) for k, v in previous.items())).encode()).hexdigest()
        self.commits.append((sha, previous))
        self.summaries.append(summary)
        return sha


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStandIn:
    """Start with `with HubStandIn() as hub:`; `hub.endpoint` is the URL to put in HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, StoredRepo] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.uploads: dict[str, bytes] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_folder(self, repo_id: str, folder: Path) -> str:
        """Publish every file of a local folder as one commit of `repo_id`; returns the commit sha."""
        repo = self.repos.setdefault(repo_id, StoredRepo())
        return repo.commit({p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}, "upload")

    def range_requests(self, path_suffix: str) -> list[str]:
        """The Range headers of the GET requests for files ending in `path_suffix`."""
        return [h.get("range", "") for m, p, h in self.requests if m == "GET" and p.endswith(path_suffix)]

    def full_downloads(self) -> list[str]:
        """Paths of file GETs without a Range header (whole-file downloads)."""
        return [p for m, p, h in self.requests if m == "GET" and "/resolve/" in p and "range" not in h]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _record(self) -> tuple[str, dict[str, list[str]]]:
                parsed = urlparse(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                hub.requests.append((self.command, unquote(parsed.path), headers))
                return unquote(parsed.path), parse_qs(parsed.query)

            def _body(self) -> bytes:
                length = int(self.headers.get("content-length") or 0)
                return self.rfile.read(length) if length else b""

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                      content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, data: Any, status: int = 200) -> None:
                self._send(status, json.dumps(data).encode())

            def _not_found(self, what: str, code: str = "RepoNotFound") -> None:
                self._send(404, json.dumps({"error": what}).encode(), {"X-Error-Code": code, "X-Error-Message": what})

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                self._resolve(*self._record())

            def do_GET(self) -> None:  # noqa: N802
                path, query = self._record()
                match = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
                tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)/?", path)
                if match:
                    self._repo_info(match.group(1), match.group(2) or "main", query)
                elif tree:
                    self._tree(tree.group(1), tree.group(2))
                else:
                    self._resolve(path, query)

            def do_POST(self) -> None:  # noqa: N802
                path, _ = self._record()
                body = self._body()
                if path == "/api/repos/create":
                    self._create(json.loads(body))
                elif path == "/api/validate-yaml":
                    self._validate_yaml(json.loads(body).get("content", ""))
                elif match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(.+)", path):
                    self._preupload(match.group(1), json.loads(body))
                elif match := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
                    self._lfs_batch(json.loads(body))
                elif match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path):
                    self._commit(match.group(1), body)
                else:
                    self._not_found(f"no stand-in for POST {path}", "EntryNotFound")

            def do_PUT(self) -> None:  # noqa: N802
                path, _ = self._record()
                body = self._body()
                match = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)
                if not match or _sha256(body) != match.group(1):
                    self._send(400, b'{"error": "bad upload"}')
                    return
                hub.uploads[match.group(1)] = body
                self._send(200)

            def _lookup(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
                """The commit sha and files of a repo at a revision; None after answering 404."""
                repo = hub.repos.get(repo_id)
                found = repo.at(revision) if repo else None
                if found is None:
                    self._not_found(f"Repository {repo_id} not found")
                return found

            def _repo_info(self, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
                found = self._lookup(repo_id, revision)
                if found is None:
                    return
                sha, files = found
                blobs = query.get("blobs") == ["true"]
                siblings = []
                for name, data in sorted(files.items()):
                    entry: dict[str, Any] = {"rfilename": name}
                    if blobs:
                        entry["size"] = len(data)
                        entry["blobId"] = _git_sha1(data)
                        if name.endswith(_LFS_SUFFIXES):
                            entry["lfs"] = {"sha256": _sha256(data), "size": len(data), "pointerSize": 134}
                    siblings.append(entry)
                self._json({"id": repo_id, "modelId": repo_id, "sha": sha, "private": hub.repos[repo_id].private,
                            "siblings": siblings, "tags": [], "downloads": 0, "likes": 0})

            def _tree(self, repo_id: str, revision: str) -> None:
                found = self._lookup(repo_id, revision)
                if found is None:
                    return
                entries = []
                for name, data in sorted(found[1].items()):
                    entry: dict[str, Any] = {"type": "file", "path": name, "size": len(data), "oid": _git_sha1(data)}
                    if name.endswith(_LFS_SUFFIXES):
                        entry["lfs"] = {"oid": _sha256(data), "size": len(data), "pointerSize": 134}
                    entries.append(entry)
                self._json(entries)

            def _resolve(self, path: str, query: dict[str, list[str]]) -> None:
                match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if not match:
                    self._not_found(f"no stand-in for {self.command} {path}", "EntryNotFound")
                    return
                repo_id, revision, name = match.groups()
                found = self._lookup(repo_id, revision)
                if found is None:
                    return
                sha, files = found
                if name not in files:
                    self._not_found(f"Entry {name} not found", "EntryNotFound")
                    return
                data = files[name]
                lfs = name.endswith(_LFS_SUFFIXES)
                etag = _sha256(data) if lfs else _git_sha1(data)
                headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
                if lfs:
                    headers.update({"X-Linked-Size": str(len(data)), "X-Linked-ETag": f'"{etag}"'})
                wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("range", ""))
                if wanted and self.command == "GET":
                    start = int(wanted.group(1))
                    stop = min(len(data), int(wanted.group(2)) + 1 if wanted.group(2) else len(data))
                    headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
                    self._send(206, data[start:stop], headers, "application/octet-stream")
                    return
                self._send(200, data, headers, "application/octet-stream")

            def _create(self, request: dict[str, Any]) -> None:
                repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
                if repo_id in hub.repos:
                    self._send(409, json.dumps({"error": "You already created this model repo",
                                                     "url": f"{hub.endpoint}/{repo_id}"}).encode())
                    return
                private = request.get("visibility", "private" if request.get("private") else "public") == "private"
                repo = hub.repos[repo_id] = StoredRepo(private=private)
                repo.commit({".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, "initial commit")
                self._json({"url": f"{hub.endpoint}/{repo_id}", "name": repo_id, "id": repo_id})

            def _validate_yaml(self, content: str) -> None:
                """Only the card's shape: a YAML block between '---' lines at the top (the Hub checks its fields)."""
                lines = content.splitlines()
                if lines and lines[0] == "---" and "---" in lines[1:]:
                    self._json({"errors": [], "warnings": []})
                else:
                    self._send(400, json.dumps({"errors": [{"message": "no YAML metadata block"}]}).encode())

            def _preupload(self, repo_id: str, request: dict[str, Any]) -> None:
                if repo_id not in hub.repos:
                    self._not_found(f"Repository {repo_id} not found")
                    return
                files = [
                    {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(_LFS_SUFFIXES) else "regular",
                     "shouldIgnore": False}
                    for f in request.get("files", [])
                ]
                self._json({"files": files, "commitOid": hub.repos[repo_id].head[0]})

            def _lfs_batch(self, request: dict[str, Any]) -> None:
                objects = [
                    {"oid": o["oid"], "size": o["size"], "authenticated": True,
                     "actions": {"upload": {"href": f"{hub.endpoint}/lfs-upload/{o['oid']}"}}}
                    for o in request.get("objects", [])
                ]
                self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

            def _commit(self, repo_id: str, body: bytes) -> None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._not_found(f"Repository {repo_id} not found")
                    return
                files: dict[str, bytes] = {}
                summary = ""
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    value = item["value"]
                    if item["key"] == "header":
                        summary = value.get("summary", "")
                    elif item["key"] == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif item["key"] == "lfsFile":
                        if value["oid"] not in hub.uploads:
                            self._send(400, json.dumps({"error": f"LFS object {value['path']} was never uploaded"}).encode())
                            return
                        files[value["path"]] = hub.uploads[value["oid"]]
                sha = repo.commit(files, summary)
                self._json({"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha,
                            "pullRequestUrl": None})

        return Handler
