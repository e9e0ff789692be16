"""The front's pool of PDF parser processes (http_front/pdf_text.py): a parser that overruns its time limit or
dies is replaced, and the next PDF is read as ``extract_pages`` reads it."""

from __future__ import annotations

import os

import pytest

from http_front.errors import ApiError
from http_front.pdf_text import PdfPool, extract_pages
from tests.pdfs import build_pdf

pytestmark = pytest.mark.slow  # starts real processes, like every integration module


def test_a_parser_that_overruns_or_dies_is_replaced() -> None:
    pdf = build_pdf([["A page of text."]])
    pool = PdfPool(processes=1)
    try:
        with pytest.raises(ApiError) as overrun:
            pool.extract(build_pdf([["slow to read"]] * 30, slow=True), 100, timeout=0.5)
        assert overrun.value.code == "PDF_TOO_LARGE" and "0.5s" in overrun.value.message
        assert pool.extract(pdf, 10, timeout=30) == extract_pages(pdf, 10)
        [parser] = pool._parsers
        os.kill(parser.process.pid, 9)
        parser.process.join(timeout=10)
        assert pool.extract(pdf, 10, timeout=30) == extract_pages(pdf, 10)
        assert pool.replaced == 2
    finally:
        pool.close()
