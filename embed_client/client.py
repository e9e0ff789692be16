"""A small Python client for embed-cluster with the seed client's semantics.

- network errors, timeouts and 5xx are retried ``retry_attempts`` times, ``retry_delay`` seconds apart
  (longer when the server sends ``Retry-After``); 4xx never is;
- every failure is an :class:`EmbedError` whose ``kind`` is one of the seed's ``NETWORK_ERROR``, ``TIMEOUT``,
  ``HTTP_ERROR``, ``PARSE_ERROR``;
- :meth:`EmbedClient.embed` splits a big list into requests within the server's limits (read once from
  ``/info``) and reassembles the vectors in input order; :meth:`EmbedClient.rerank` and
  :meth:`EmbedClient.tokenize` do the same (a split rerank's results are ranked together again);
- ``model`` names one of the cluster's models (alias, id or short name; None: the default), and the prompt
  options (``prompt_name``, ``prompt``, ``input_type``) pick the model's prompt as sentence-transformers does.

Standard library only (and embed_common.settings, which is too), so that it imports anywhere.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from embed_common.settings import DEFAULT_URL  # standard library only, like this module

HITS_HEADER = "X-Embed-Cache-Hits"  # the server's "HITS/LOOKED_UP" of its vector cache (http_front/embed_cache.py)

NETWORK_ERROR = "NETWORK_ERROR"
TIMEOUT = "TIMEOUT"
HTTP_ERROR = "HTTP_ERROR"
PARSE_ERROR = "PARSE_ERROR"

DEFAULT_MAX_TEXTS = 256  # texts per request when the server does not say; small requests keep latency low
BODY_HEADROOM = 0.8  # fill request bodies to this fraction of the server's limit


class EmbedError(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.status = status  # HTTP status, for HTTP_ERROR
        self.code = code  # the server's error code (BAD_REQUEST, OVERLOADED, ...), for HTTP_ERROR
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in (NETWORK_ERROR, TIMEOUT) or (self.kind == HTTP_ERROR and (self.status or 0) >= 500)


@dataclass(frozen=True)
class Limits:
    max_texts: int
    max_body_bytes: int
    max_text_chars: int


class EmbedClient:
    def __init__(self, base_url: str = DEFAULT_URL, timeout: float = 30, retry_attempts: int = 2,
                 retry_delay: float = 1, api_key: str | None = None, max_texts: int | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry_attempts = retry_attempts
        self.retry_delay = retry_delay
        self.api_key = api_key
        self.max_texts = max_texts  # cap texts per request below the server's limit
        self._hits_lock = threading.Lock()
        self._hits = self._looked_up = 0
        self._limits: Limits | None = None

    # -- endpoints --------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """The /health body; a 503 (starting, no workers) is an answer here, not an error."""
        return self._call("GET", "/health", ok_statuses=(200, 503))

    def check_health(self) -> bool:
        try:
            return self.health().get("status") == "ok"
        except EmbedError:
            return False

    def info(self) -> dict[str, Any]:
        return self._call("GET", "/info")

    def embed(self, texts: list[str], normalize: bool = True, model: str | None = None,
              prompt_name: str | None = None, prompt: str | None = None,
              input_type: str | None = None) -> list[list[float]]:
        """The texts' vectors, in order; ``model`` and the prompt options as the module says."""
        options = _given(model=model, prompt_name=prompt_name, prompt=prompt, input_type=input_type)
        vectors: list[list[float]] = []
        for batch in self._split(texts):
            body = self._call("POST", "/embed", {"texts": batch, "normalize": normalize, **options})
            got = body.get("vectors") if isinstance(body, dict) else None
            if not isinstance(got, list) or len(got) != len(batch):
                raise EmbedError(PARSE_ERROR, f"expected {len(batch)} vectors, got {type(got).__name__}")
            vectors.extend(got)
        return vectors

    def rerank(self, query: str, texts: list[str], model: str | None = None, top_n: int | None = None,
               raw_scores: bool = False, return_text: bool = False) -> list[dict[str, Any]]:
        """``/rerank``: ``[{"index", "score", ["text"]}]``, best first (the first ``top_n``), each ``index`` the
        text's in ``texts``; scores as ``CrossEncoder.predict`` gives them (``raw_scores``: its logits)."""
        options = {"raw_scores": raw_scores, "return_text": return_text, **_given(model=model)}
        ranked: list[dict[str, Any]] = []
        offset = 0
        for batch in self._split(texts):
            body = self._call("POST", "/rerank", {"query": query, "texts": batch, **options})
            if not isinstance(body, list) or len(body) != len(batch) or not all(
                    isinstance(r, dict) and isinstance(r.get("index"), int) and isinstance(r.get("score"), (int, float))
                    for r in body):
                raise EmbedError(PARSE_ERROR, f"expected {len(batch)} ranked texts")
            ranked.extend({**r, "index": r["index"] + offset} for r in body)
            offset += len(batch)
        ranked.sort(key=lambda r: (-r["score"], r["index"]))  # best first; equal scores in input order
        return ranked[:top_n] if top_n is not None else ranked

    def tokenize(self, texts: list[str], model: str | None = None, return_ids: bool = False,
                 prompt_name: str | None = None, prompt: str | None = None,
                 input_type: str | None = None) -> dict[str, Any]:
        """``/tokenize``: ``{"model", "max_tokens", "counts", "truncated", ["ids"]}``, each text's token count as
        the model counts it (its prompt's and special tokens included, none cut) and its window."""
        options = {"return_ids": return_ids,
                   **_given(model=model, prompt_name=prompt_name, prompt=prompt, input_type=input_type)}
        answer: dict[str, Any] = {"model": None, "max_tokens": None, "counts": [], "truncated": []}
        if return_ids:
            answer["ids"] = []
        offset = 0
        for batch in self._split(texts) or [[]]:
            body = self._call("POST", "/tokenize", {"texts": batch, **options})
            if not isinstance(body, dict) or not isinstance(body.get("counts"), list) \
                    or len(body["counts"]) != len(batch):
                raise EmbedError(PARSE_ERROR, f"expected {len(batch)} token counts")
            answer.update(model=body.get("model"), max_tokens=body.get("max_tokens"))
            answer["counts"].extend(body["counts"])
            answer["truncated"].extend(i + offset for i in body.get("truncated") or [])
            if return_ids:
                answer["ids"].extend(body.get("ids") or [])
            offset += len(batch)
        return answer

    def embed_chunks(self, texts: list[str], chunk_tokens: int | None = None, overlap_tokens: int | None = None,
                     normalize: bool = True, model: str | None = None, prompt_name: str | None = None,
                     prompt: str | None = None, input_type: str | None = None) -> dict[str, list[Any]]:
        """``/embed/chunks``: every text in chunks of at most ``chunk_tokens`` tokens (None: the server's
        defaults), in requests within the server's limits: ``{"chunks": [{index, text, start, end}], "vectors"}``
        where ``index`` is the chunk's text's index in ``texts``."""
        options = {**_chunk_options(chunk_tokens, overlap_tokens, normalize),
                   **_given(model=model, prompt_name=prompt_name, prompt=prompt, input_type=input_type)}
        chunks: list[dict[str, Any]] = []
        vectors: list[list[float]] = []
        offset = 0
        for batch in self._split(texts):
            body = self._call("POST", "/embed/chunks", {"texts": batch, **options})
            got_chunks = body.get("chunks") if isinstance(body, dict) else None
            got_vectors = body.get("vectors") if isinstance(body, dict) else None
            if not isinstance(got_chunks, list) or not isinstance(got_vectors, list) \
                    or len(got_chunks) != len(got_vectors):
                raise EmbedError(PARSE_ERROR, "expected as many chunks as vectors")
            chunks.extend({**chunk, "index": chunk["index"] + offset} for chunk in got_chunks)
            vectors.extend(got_vectors)
            offset += len(batch)
        return {"chunks": chunks, "vectors": vectors}

    def embed_pdf(self, pdf: bytes, chunk_tokens: int | None = None, overlap_tokens: int | None = None,
                  normalize: bool = True) -> dict[str, Any]:
        """``/embed/pdf``: the server's answer, ``{"pages", "text_layer", "pages_without_text", "chunks",
        "vectors"}``, each chunk with its ``page`` (from 1) and offsets in that page's text."""
        options = _chunk_options(chunk_tokens, overlap_tokens, normalize)
        query = urllib.parse.urlencode({k: str(v).lower() if isinstance(v, bool) else v for k, v in options.items()})
        body = self._call("POST", f"/embed/pdf?{query}", pdf, content_type="application/pdf")
        if not isinstance(body, dict) or len(body.get("chunks") or []) != len(body.get("vectors") or []):
            raise EmbedError(PARSE_ERROR, "expected as many chunks as vectors")
        return body

    # -- splitting --------------------------------------------------------------------------------------
    def limits(self) -> Limits:
        if self._limits is None:
            limits = self.info().get("limits") or {}
            self._limits = Limits(int(limits.get("max_texts") or DEFAULT_MAX_TEXTS),
                                  int(limits.get("max_body_bytes") or 1 << 20),
                                  int(limits.get("max_text_chars") or 1 << 30))
        return self._limits

    def _split(self, texts: list[str]) -> list[list[str]]:
        if not texts:
            return []
        limits = self.limits()
        max_texts = min(limits.max_texts, self.max_texts or DEFAULT_MAX_TEXTS)
        budget = int(limits.max_body_bytes * BODY_HEADROOM)
        batches: list[list[str]] = []
        current: list[str] = []
        size = 0
        for text in texts:
            cost = len(json.dumps(text).encode()) + 2
            if current and (len(current) >= max_texts or size + cost > budget):
                batches.append(current)
                current, size = [], 0
            current.append(text)
            size += cost
        batches.append(current)
        return batches

    @property
    def cache_hits(self) -> tuple[int, int]:
        """Texts the server's vector cache answered, of those it looked up, over every call so far."""
        with self._hits_lock:
            return self._hits, self._looked_up

    def _count_hits(self, header: str | None) -> None:
        hits, _, looked_up = (header or "").partition("/")
        if hits.isdigit() and looked_up.isdigit():
            with self._hits_lock:
                self._hits += int(hits)
                self._looked_up += int(looked_up)

    # -- transport --------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, payload: Any = None, ok_statuses: tuple[int, ...] = (200,),
              content_type: str = "application/json") -> Any:
        """``payload``: sent as JSON, or as it is when it is bytes (with ``content_type``)."""
        attempt = 0
        while True:
            try:
                return self._once(method, path, payload, ok_statuses, content_type)
            except EmbedError as error:
                if not error.retryable or attempt >= self.retry_attempts:
                    raise
                attempt += 1
                time.sleep(max(self.retry_delay, min(error.retry_after or 0, 30)))

    def _once(self, method: str, path: str, payload: Any, ok_statuses: tuple[int, ...], content_type: str) -> Any:
        data = payload if isinstance(payload, bytes) or payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type)
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, body = response.status, response.read()
                retry_after = None
                self._count_hits(response.headers.get(HITS_HEADER))
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
            retry_after = _seconds(exc.headers.get("Retry-After"))
        except TimeoutError as exc:
            raise EmbedError(TIMEOUT, f"{method} {path} took longer than {self.timeout}s") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise EmbedError(TIMEOUT, f"{method} {path} took longer than {self.timeout}s") from exc
            raise EmbedError(NETWORK_ERROR, f"{method} {path}: {exc.reason}") from exc
        except (ConnectionError, OSError) as exc:
            raise EmbedError(NETWORK_ERROR, f"{method} {path}: {exc}") from exc
        try:
            parsed = json.loads(body)
        except ValueError as exc:
            if status in ok_statuses:
                raise EmbedError(PARSE_ERROR, f"{method} {path}: the response is not JSON") from exc
            parsed = None
        if status in ok_statuses:
            return parsed
        error = parsed.get("error") if isinstance(parsed, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else body[:200].decode(errors="replace")
        raise EmbedError(HTTP_ERROR, f"{method} {path} -> {status}: {message}", status=status, code=code,
                         retry_after=retry_after)


def _given(**options: Any) -> dict[str, Any]:
    """The options that were given (None: the server's default)."""
    return {name: value for name, value in options.items() if value is not None}


def _chunk_options(chunk_tokens: int | None, overlap_tokens: int | None, normalize: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"chunk_tokens": chunk_tokens, "overlap_tokens": overlap_tokens}
    return {**{k: v for k, v in options.items() if v is not None}, "normalize": normalize}


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
