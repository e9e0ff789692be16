"""Hostile PDFs against the front's text extraction (http_front/pdf_text.py ``extract_pages``, in process): each
is refused with its code from the error table, quickly, rather than read without bound. The same files go
through the parser processes of a real cluster in tests/integration/test_documents.py."""

from __future__ import annotations

import time

import pytest

from http_front.pdf_text import PdfError, extract_pages
from tests.pdfs import build_pdf, flate_bomb, looped_pages, nested_pages, nested_pdf, text_bomb

QUICK = 30.0  # seconds: far past what any of these takes, far short of unbounded


def refusal(data: bytes, max_pages: int = 1000, max_chars: int | None = None) -> tuple[str, str]:
    start = time.monotonic()
    with pytest.raises(PdfError) as caught:
        extract_pages(data, max_pages, max_chars)
    assert time.monotonic() - start < QUICK
    return caught.value.code, str(caught.value)


def test_a_compression_bomb_is_too_large() -> None:
    bomb = flate_bomb(128 << 20)  # 128 MiB of zeros in a stream of well under 1 MiB
    assert len(bomb) < 1 << 20
    code, message = refusal(bomb)
    assert code == "PDF_TOO_LARGE" and "limit" in message


def test_more_text_than_a_request_may_carry_is_too_large() -> None:
    bomb = text_bomb(pages=8, chars_per_page=30_000)  # a few KiB of file
    assert len(bomb) < 64 * 1024
    assert refusal(bomb, max_chars=50_000) == ("PDF_TOO_LARGE", "the PDF holds more than 50000 characters of "
                                               "text, the most one request may carry (max_body_bytes)")
    pages = extract_pages(bomb, 1000, max_chars=1_000_000)  # under a limit that allows it, it is read whole
    assert len(pages) == 8 and sum(map(len, pages)) > 8 * 29_000


@pytest.mark.parametrize("depth", [200, 20_000])
def test_a_page_tree_nested_deep_is_refused(depth: int) -> None:
    code, _ = refusal(nested_pages(depth))
    assert code in ("PDF_TOO_LARGE", "PDF_INVALID")


def test_deeply_nested_arrays_do_not_stop_the_reader() -> None:
    """An object nested 100 000 deep: read (or refused) like any other file; the process goes on."""
    try:
        extract_pages(nested_pdf(100_000), 10)
    except PdfError as exc:
        assert exc.code in ("PDF_INVALID", "PDF_TOO_LARGE")
    assert [p.strip() for p in extract_pages(build_pdf([["after the deep one"]]), 10)] == ["after the deep one"]


def test_a_page_tree_that_loops_is_invalid() -> None:
    assert refusal(looped_pages())[0] == "PDF_INVALID"
