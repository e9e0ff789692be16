"""A local stand-in for the Hugging Face Hub, for tests of the download path (HF_ENDPOINT=hub.url).

It serves directories as model repos with just what ``huggingface_hub`` reads (see its ``hf_api.model_info``
and ``file_download.get_hf_file_metadata`` / ``http_get``):

- ``GET /api/models/{repo}[/revision/{rev}]``: ``id``, ``sha`` and ``siblings`` (with ``size`` and ``blobId``
  when ``?blobs=true``, which ``files_metadata=True`` asks for);
- ``HEAD`` / ``GET /{repo}/resolve/{rev}/{path}``: the file, with ``X-Repo-Commit``, ``ETag`` and
  ``Content-Length``;
- errors as the Hub sends them: 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` /
  ``EntryNotFound``; and, on demand, any status for every request (``hub.fail_with = 500``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class RepoFile:
    size: int
    sha256: str
    source: Path | None = None  # a file on disk, or
    data: bytes = b""  # the bytes themselves

    def chunks(self) -> Any:
        if self.source is None:
            yield self.data
            return
        with self.source.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk


@dataclass
class Repo:
    repo_id: str
    files: dict[str, RepoFile] = field(default_factory=dict)

    @classmethod
    def from_dir(cls, repo_id: str, directory: Path, extra: dict[str, bytes] | None = None) -> Repo:
        repo = cls(repo_id)
        for path in sorted(p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            repo.files[path.relative_to(directory).as_posix()] = RepoFile(path.stat().st_size, digest.hexdigest(),
                                                                          source=path)
        for name, data in (extra or {}).items():
            repo.files[name] = RepoFile(len(data), hashlib.sha256(data).hexdigest(), data=data)
        return repo

    @property
    def commit(self) -> str:
        """A 40-hex commit id that changes with the repo's content."""
        listing = "\n".join(f"{name} {f.sha256}" for name, f in sorted(self.files.items()))
        return hashlib.sha1(listing.encode()).hexdigest()

    def info(self, with_sizes: bool) -> dict[str, Any]:
        siblings = []
        for name, f in self.files.items():
            sibling: dict[str, Any] = {"rfilename": name}
            if with_sizes:
                sibling.update(size=f.size, blobId=f.sha256[:40])
            siblings.append(sibling)
        return {"id": self.repo_id, "modelId": self.repo_id, "sha": self.commit, "private": False,
                "siblings": siblings, "tags": ["sentence-transformers"], "library_name": "sentence-transformers"}


class HubServer:
    """The stand-in Hub on 127.0.0.1 (a free port), served from a thread; ``close()`` stops it."""

    def __init__(self, repos: list[Repo]) -> None:
        self.repos = {repo.repo_id: repo for repo in repos}
        self.fail_with: int | None = None  # answer every request with this status (a Hub outage)
        self.requests: list[tuple[str, str]] = []  # (method, path), in order
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub", daemon=True)
        self._thread.start()

    def downloads(self) -> list[str]:
        """Paths of the files served by GET (not HEAD)."""
        return [path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path in self.requests
                if method == "GET" and "/resolve/" in path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the tests read hub.requests
            pass

        def do_HEAD(self) -> None:
            self.answer(send_body=False)

        def do_GET(self) -> None:
            self.answer(send_body=True)

        def answer(self, send_body: bool) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            hub.requests.append((self.command, path))
            if hub.fail_with is not None:
                return self.error(hub.fail_with, None, "the hub is failing on purpose")
            if path.startswith("/api/models/"):
                return self.model_info(path[len("/api/models/"):], parse_qs(url.query), send_body)
            for repo_id, repo in hub.repos.items():
                prefix = f"/{repo_id}/resolve/"
                if path.startswith(prefix) and "/" in path[len(prefix):]:
                    revision, filename = path[len(prefix):].split("/", 1)
                    return self.resolve(repo, revision, filename, send_body)
            return self.error(404, "RepoNotFound", "Repository not found")

        def model_info(self, rest: str, query: dict[str, list[str]], send_body: bool) -> None:
            repo_id, _, revision = rest.partition("/revision/")
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self.error(404, "RepoNotFound", "Repository not found")
            if revision and revision not in ("main", repo.commit):
                return self.error(404, "RevisionNotFound", "Invalid rev id", repo)
            with_sizes = query.get("blobs", ["false"])[0].lower() in ("1", "true")
            self.send(200, json.dumps(repo.info(with_sizes)).encode(), "application/json", send_body)

        def resolve(self, repo: Repo, revision: str, filename: str, send_body: bool) -> None:
            if revision not in ("main", repo.commit):
                return self.error(404, "RevisionNotFound", "Invalid rev id", repo)
            f = repo.files.get(filename)
            if f is None:
                return self.error(404, "EntryNotFound", "Entry not found", repo)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(f.size))
            self.send_header("ETag", f'"{f.sha256}"')
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if send_body:
                for chunk in f.chunks():
                    self.wfile.write(chunk)

        def error(self, status: int, code: str | None, message: str, repo: Repo | None = None) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if repo is not None:
                self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def send(self, status: int, body: bytes, content_type: str, send_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

    return Handler
