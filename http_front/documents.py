"""Documents in, chunks and their vectors out: ``POST /embed/pdf`` and ``POST /embed/chunks``.

A PDF's pages are read in the front's parser processes (http_front/pdf_text.py); the page texts then go to
the workers as jobs with a ``chunk`` option: a worker splits each text into chunks by its model's tokenizer
(worker/chunking.py), embeds the chunks, and answers a ``[text index, start, end]`` row per vector. So a
chunk's vector is what ``/embed`` gives for its text, and its offsets index the text it came from.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import falcon

from embed_common.protocol import ChunkOption, JobOptions
from http_front import json_media
from http_front.errors import ApiError
from http_front.parsing import flag, query_bool, query_int, read_pdf, read_texts_request
from http_front.served_models import EMBED, PROMPT_FIELDS, Served, model_param, prompt_of, resolve
from http_front.state import AppState

CHUNK_JOB_CHARS = 16_000  # characters of text a job holds about (one text may hold more): a job is a worker's
# unit of work, and a chunked text's work grows with its length: this is a few seconds of a CPU worker
PDF_PARAMS = {"chunk_tokens", "overlap_tokens", "normalize"}
CHUNKS_FIELDS = {"texts", "chunk_tokens", "overlap_tokens", "normalize", "model", *PROMPT_FIELDS}


def chunk_option(tokens: Any, overlap: Any) -> JobOptions:
    """The job options for ``chunk_tokens`` / ``overlap_tokens`` (None: the worker's defaults)."""
    for name, value in (("chunk_tokens", tokens), ("overlap_tokens", overlap)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ApiError("BAD_REQUEST", f"'{name}' must be a whole number")
    if tokens is not None and tokens < 1:
        raise ApiError("BAD_REQUEST", "'chunk_tokens' must be at least 1")
    return JobOptions(chunk=ChunkOption(tokens, overlap))


def embed_chunked(state: AppState, route: str | None, texts: list[str], normalize: bool, option: JobOptions,
                  deadline: float, model: Served | None = None) -> tuple[list[list[int]], list[Any]]:
    """The ``[text index, start, end]`` rows and the vectors of every chunk of ``texts`` (the rows as the
    workers wrote them in JSON), by ``model`` (None: the default)."""
    if not texts:
        return [], [b"[]"]
    result = state.embed(route, texts, normalize, option, timeout=max(0.001, deadline - time.monotonic()),
                         job_chars=CHUNK_JOB_CHARS, as_json=True, model=model)
    return result.chunks, result.vectors_json()


class EmbedPdf:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self.parsers = state.pdf_parsers

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        limits = self.state.limits
        unknown = sorted(set(req.params) - PDF_PARAMS)
        if unknown:
            raise ApiError("BAD_REQUEST", f"unknown query parameter(s): {', '.join(unknown)}")
        option = chunk_option(query_int(req, "chunk_tokens"), query_int(req, "overlap_tokens"))
        normalize = query_bool(req, "normalize", True)
        data = read_pdf(req, limits.max_body_bytes)
        deadline = time.monotonic() + limits.request_timeout
        self.state.enter()  # counted in flight while it is parsed too: a drain waits for it
        try:
            pages = self.parsers.extract(data, limits.max_pdf_pages, min(limits.pdf_timeout, limits.request_timeout),
                                         max_chars=limits.max_body_bytes)  # as much text as a JSON body holds
            with_text = [i for i, text in enumerate(pages) if text.strip()]
            rows, vectors = embed_chunked(self.state, req.uri_template, [pages[i] for i in with_text], normalize,
                                          option, deadline)
        finally:
            self.state.leave()
        chunks = []
        for index, start, end in rows:
            page = with_text[index]
            chunks.append({"page": page + 1, "text": pages[page][start:end], "start": start, "end": end})
        json_media.answer(resp, {
            "pages": len(pages),
            "text_layer": bool(with_text),  # false: a scan (images only); OCR it first
            "pages_without_text": [i + 1 for i, text in enumerate(pages) if not text.strip()],
            "chunks": chunks,
        }, "vectors", vectors)


class EmbedChunks:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        limits = self.state.limits
        body, texts = read_texts_request(req, limits, CHUNKS_FIELDS)
        if body.get("chunk_tokens", 0) is None or body.get("overlap_tokens", 0) is None:
            raise ApiError("BAD_REQUEST", "'chunk_tokens' and 'overlap_tokens' must be whole numbers when given")
        model = resolve(self.state.client.broker_status(), model_param(body), EMBED)
        # each chunk with the model's prompt (a document's, say), which the chunks leave room for in the window
        option = dataclasses.replace(chunk_option(body.get("chunk_tokens"), body.get("overlap_tokens")),
                                     prompt=prompt_of(model, body))
        normalize = flag(body, "normalize", True)
        deadline = time.monotonic() + limits.request_timeout
        rows, vectors = embed_chunked(self.state, req.uri_template, texts, normalize, option, deadline, model)
        json_media.answer(resp, {
            "chunks": [{"index": index, "text": texts[index][start:end], "start": start, "end": end}
                       for index, start, end in rows],
        }, "vectors", vectors)
