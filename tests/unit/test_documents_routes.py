"""POST /embed/pdf and /embed/chunks through falcon.testing, in front of an in-process broker and fake workers;
PDFs are read by the parser processes' own code (http_front/pdf_text.py ``extract_pages``) in the request's
thread. The pool of parser processes is tested in tests/integration/test_pdf_pool.py, the whole path through
a real cluster in tests/integration/test_documents.py."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import falcon.testing
import numpy as np
import pytest

from http_front.errors import ApiError
from http_front.pdf_text import PdfError, extract_pages
from tests.pdfs import build_pdf, encrypt, wrap
from tests.unit import inproc
from tests.unit.inproc import fake_vectors

LIMITS = dataclasses.replace(inproc.LIMITS, max_body_bytes=200_000, max_text_chars=5000, max_pdf_pages=12,
                             pdf_timeout=30.0)
PDF = {"Content-Type": "application/pdf"}
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


def paragraph(words: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] + ("." if i % 9 == 8 else "") for i in range(words))


# nine pages with text, two without: more pages than one job holds, so chunks come from several jobs
PAGES: list[list[str] | None] = [wrap(paragraph(20 + 15 * i, i)) if i not in (2, 6) else None for i in range(11)]
PAGES[0] = ["Ünïcödé straße, déjà vu.", "日本語 の テキスト です。"]


class ParsedHere:
    """A PdfPool without processes: each PDF read by ``extract_pages`` on the calling thread, its PdfError
    answered as the pool answers a parser's error reply."""

    def extract(self, data: bytes, max_pages: int, timeout: float, max_chars: int | None = None) -> list[str]:
        try:
            return extract_pages(data, max_pages, max_chars)
        except PdfError as exc:
            raise ApiError(exc.code, str(exc)) from None

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def app_options() -> dict[str, Any]:
    return {"limits": LIMITS, "pdf_parsers": ParsedHere()}


def post_pdf(client: falcon.testing.TestClient, pdf: bytes, **params: str) -> falcon.testing.Result:
    return client.simulate_post("/embed/pdf", body=pdf, headers=PDF, params=params)


def test_pdf_pages_become_page_tagged_chunks_with_the_vectors_of_their_texts(
        client: falcon.testing.TestClient) -> None:
    pdf = build_pdf(PAGES)
    r = post_pdf(client, pdf, chunk_tokens="12", overlap_tokens="3")
    assert r.status_code == 200, r.text
    body = r.json
    pages = extract_pages(pdf, 100)
    assert body["pages"] == 11 and body["text_layer"] is True and body["pages_without_text"] == [3, 7]
    chunks = body["chunks"]
    assert len(chunks) == len(body["vectors"]) > 11
    assert sorted({c["page"] for c in chunks}) == [1, 2, 4, 5, 6, 8, 9, 10, 11]
    assert [c["page"] for c in chunks] == sorted(c["page"] for c in chunks)
    for chunk in chunks:
        assert chunk["text"] == pages[chunk["page"] - 1][chunk["start"]:chunk["end"]]
        assert 0 < len(chunk["text"].split()) <= 12
    assert chunks[0]["text"].startswith("Ünïcödé") and "日本語" in pages[0]
    last_page = [c for c in chunks if c["page"] == 11]
    assert len(last_page) > 5 and last_page[-1]["end"] == len(pages[10].rstrip())
    np.testing.assert_allclose(np.array(body["vectors"]), fake_vectors([c["text"] for c in chunks]), rtol=1e-5)
    raw = post_pdf(client, pdf, chunk_tokens="12", overlap_tokens="3", normalize="false").json
    assert raw["chunks"] == chunks
    np.testing.assert_allclose(np.array(raw["vectors"]),
                               fake_vectors([c["text"] for c in chunks], normalize=False), rtol=1e-5)


def test_an_overlap_over_the_chunk_size_is_capped(client: falcon.testing.TestClient) -> None:
    r = post_pdf(client, build_pdf([wrap(paragraph(100, 2))]), chunk_tokens="12", overlap_tokens="500")
    assert r.status_code == 200, r.text
    chunks = r.json["chunks"]
    assert all(b["start"] < a["end"] for a, b in itertools.pairwise(chunks))  # they overlap
    assert 100 / 12 < len(chunks) <= 4 * 100 / 12 + 1  # a quarter chunk further each time, at least


def test_default_chunks_fill_the_models_limit(client: falcon.testing.TestClient) -> None:
    r = post_pdf(client, build_pdf([wrap(paragraph(100, 1))]))
    assert r.status_code == 200, r.text
    sizes = [len(c["text"].split()) for c in r.json["chunks"]]
    assert max(sizes) == 30 and len(sizes) >= 4  # 32 tokens less [CLS] and [SEP]; overlap: 30 // 8


def test_a_scan_has_no_text_layer_and_no_chunks(client: falcon.testing.TestClient) -> None:
    r = post_pdf(client, build_pdf([None, None]))
    assert r.status_code == 200, r.text
    assert r.json == {"pages": 2, "text_layer": False, "pages_without_text": [1, 2], "chunks": [], "vectors": []}


PDF_ERRORS = [
    ("garbage", b"this is not a pdf at all", 422, "PDF_INVALID"),
    ("truncated", build_pdf(PAGES)[:2000], 422, "PDF_INVALID"),
    ("empty", b"", 422, "PDF_INVALID"),
    ("encrypted", encrypt(build_pdf(PAGES), "secret"), 422, "PDF_ENCRYPTED"),
    ("too many pages", build_pdf([["page"]] * 13), 413, "PDF_TOO_LARGE"),
    ("too many bytes", b"%PDF-1.7\n" + b" " * 200_000, 413, "PAYLOAD_TOO_LARGE"),
]


@pytest.mark.parametrize(("pdf", "status", "code"), [e[1:] for e in PDF_ERRORS], ids=[e[0] for e in PDF_ERRORS])
def test_bad_pdfs_get_their_code_and_the_server_keeps_serving(client: falcon.testing.TestClient, pdf: bytes,
                                                              status: int, code: str) -> None:
    r = post_pdf(client, pdf)
    assert r.status_code == status, r.text
    assert set(r.json) == {"error"} and r.json["error"]["code"] == code and r.json["error"]["message"]
    assert post_pdf(client, build_pdf([["still serving"]])).status_code == 200


def test_a_pdf_encrypted_only_against_editing_is_read(client: falcon.testing.TestClient) -> None:
    r = post_pdf(client, encrypt(build_pdf([["Readable without a password."]]), ""))
    assert r.status_code == 200, r.text
    assert [c["text"] for c in r.json["chunks"]] == ["Readable without a password."]


@pytest.mark.parametrize(
    ("headers", "params", "status", "code", "mentions"),
    [({"Content-Type": "application/json"}, {}, 415, "UNSUPPORTED_MEDIA_TYPE", "application/pdf"),
     ({}, {}, 415, "UNSUPPORTED_MEDIA_TYPE", "application/pdf"),
     (PDF, {"chunk_tokens": "many"}, 400, "BAD_REQUEST", "chunk_tokens"),
     (PDF, {"chunk_tokens": "0"}, 400, "BAD_REQUEST", "at least 1"),
     (PDF, {"overlap_tokens": "-2"}, 400, "BAD_REQUEST", "overlap_tokens"),
     (PDF, {"normalize": "yes"}, 400, "BAD_REQUEST", "normalize"),
     (PDF, {"pages": "1-3"}, 400, "BAD_REQUEST", "pages")],
)
def test_bad_requests_for_a_pdf(client: falcon.testing.TestClient, headers: dict, params: dict, status: int,
                                code: str, mentions: str) -> None:
    r = client.simulate_post("/embed/pdf", body=build_pdf([["some text"]]), headers=headers, params=params)
    assert r.status_code == status, r.text
    assert r.json["error"]["code"] == code and mentions in r.json["error"]["message"]


def test_text_chunks_index_their_texts_across_jobs(client: falcon.testing.TestClient) -> None:
    texts = [paragraph(5 + 11 * i, i) for i in range(7)] + ["   ", "last one"]
    r = client.simulate_post("/embed/chunks", json={"texts": texts, "chunk_tokens": 10, "overlap_tokens": 2})
    assert r.status_code == 200, r.text
    chunks = r.json["chunks"]
    assert [c["index"] for c in chunks] == sorted(c["index"] for c in chunks)
    assert {c["index"] for c in chunks} == set(range(7)) | {8}
    for chunk in chunks:
        assert chunk["text"] == texts[chunk["index"]][chunk["start"]:chunk["end"]]
    np.testing.assert_allclose(np.array(r.json["vectors"]), fake_vectors([c["text"] for c in chunks]), rtol=1e-5)
    empty = client.simulate_post("/embed/chunks", json={"texts": []})
    assert empty.status_code == 200 and empty.json == {"chunks": [], "vectors": []}


@pytest.mark.parametrize(
    ("body", "mentions"),
    [({}, "'texts' is required"), ({"texts": "x"}, "'texts'"), ({"texts": ["x"], "chunk_tokens": "5"}, "chunk_tokens"),
     ({"texts": ["x"], "overlap_tokens": None}, "whole numbers"), ({"texts": ["x"], "pages": 1}, "pages"),
     ({"texts": ["x"], "normalize": "no"}, "normalize")],
)
def test_bad_chunk_requests(client: falcon.testing.TestClient, body: dict, mentions: str) -> None:
    r = client.simulate_post("/embed/chunks", json=body)
    assert r.status_code == 400 and r.json["error"]["code"] == "BAD_REQUEST", r.text
    assert mentions in r.json["error"]["message"]
