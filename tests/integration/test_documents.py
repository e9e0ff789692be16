"""Documents through a real cluster (the bundled model): POST /embed/pdf and /embed/chunks, and
`embed-cluster embed` over a folder, interrupted by SIGINT and resumed."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from http_front.pdf_text import extract_pages
from tests.conftest import Cluster, cli, cosine_rows, eventually, sample_texts
from tests.pdfs import build_pdf, encrypt, flate_bomb, looped_pages, nested_pages, text_bomb, wrap

pytestmark = pytest.mark.slow

PDF = {"Content-Type": "application/pdf"}
NON_ASCII = ["Ünïcödé straße: déjà vu, señor. Ελληνικά γράμματα.", "日本語のテキストです。検索と埋め込み。"]
LONG_PAGE = wrap(" ".join(sample_texts(10, seed=7)))  # about 1500 tokens: several chunks
PAGES: list[list[str] | None] = [NON_ASCII, ["A short second page. It has two sentences."], None, LONG_PAGE]


@pytest.fixture(scope="module")
def cluster_args() -> tuple[str, ...]:
    """Small PDF limits, so that tests reach them cheaply."""
    return ("--workers", "1", "--pdf-timeout", "3", "--max-pdf-pages", "300")


def post_pdf(cluster: Cluster, pdf: bytes, **params: Any) -> Any:
    return cluster.post("/embed/pdf", data=pdf, headers=PDF, params=params, timeout=120)


def test_pdf_chunks_carry_pages_offsets_and_the_vectors_of_their_texts(cluster: Cluster, reference_model) -> None:
    pdf = build_pdf(PAGES)
    r = post_pdf(cluster, pdf, chunk_tokens=64, overlap_tokens=8)
    assert r.status_code == 200, r.text
    body = r.json()
    pages = extract_pages(pdf, 100)
    assert body["pages"] == 4 and body["text_layer"] is True and body["pages_without_text"] == [3]
    chunks = body["chunks"]
    assert [c["page"] for c in chunks][:2] == [1, 2] and {c["page"] for c in chunks} == {1, 2, 4}
    long_chunks = [c for c in chunks if c["page"] == 4]
    assert len(long_chunks) > 5
    for chunk in chunks:
        assert chunk["text"] == pages[chunk["page"] - 1][chunk["start"]:chunk["end"]]
    assert chunks[0]["text"] == pages[0].strip() and "日本語" in chunks[0]["text"]
    tokens = [len(ids) for ids in reference_model.tokenizer([c["text"] for c in chunks])["input_ids"]]
    assert max(tokens) <= 64 + 2  # [CLS] and [SEP]
    starts, ends = [c["start"] for c in long_chunks], [c["end"] for c in long_chunks]
    assert starts == sorted(starts) and all(s < e for s, e in zip(starts[1:], ends, strict=False))  # overlap
    vectors = np.array(body["vectors"])
    texts = [c["text"] for c in chunks]
    assert cosine_rows(vectors, cluster.embed(texts)).min() > 0.9999  # a chunk's vector is /embed of its text
    expected = reference_model.encode(texts, normalize_embeddings=True)
    assert cosine_rows(vectors, expected).min() > 0.999


def test_default_chunks_fit_the_model(cluster: Cluster, reference_model) -> None:
    r = post_pdf(cluster, build_pdf([LONG_PAGE]))
    assert r.status_code == 200, r.text
    texts = [c["text"] for c in r.json()["chunks"]]
    tokens = [len(ids) for ids in reference_model.tokenizer(texts)["input_ids"]]
    assert max(tokens) <= 256 and len(texts) >= 2


def test_a_scan_says_it_has_no_text(cluster: Cluster) -> None:
    r = post_pdf(cluster, build_pdf([None, None, None]))
    assert r.status_code == 200, r.text
    assert r.json() == {"pages": 3, "text_layer": False, "pages_without_text": [1, 2, 3], "chunks": [],
                        "vectors": []}


def test_text_chunks_through_the_cluster(cluster: Cluster) -> None:
    texts = [" ".join(sample_texts(12, seed=3)), "one short text"]
    r = cluster.post("/embed/chunks", json={"texts": texts, "chunk_tokens": 48, "overlap_tokens": 0})
    assert r.status_code == 200, r.text
    chunks = r.json()["chunks"]
    assert chunks[-1] == {"index": 1, "text": "one short text", "start": 0, "end": 14}
    assert all(c["text"] == texts[c["index"]][c["start"]:c["end"]] for c in chunks)
    first = [c for c in chunks if c["index"] == 0]
    assert len(first) > 2 and all(b["start"] >= a["end"] for a, b in itertools.pairwise(first))  # no overlap
    got = np.array(r.json()["vectors"])
    assert cosine_rows(got, cluster.embed([c["text"] for c in chunks])).min() > 0.9999
    # texts without a token make a job with nothing to encode (the model's tokenizer fails on no texts)
    empty = cluster.post("/embed/chunks", json={"texts": ["", "   \n"]})
    assert empty.status_code == 200 and empty.json() == {"chunks": [], "vectors": []}, empty.text
    assert len(cluster.embed(["the worker still serves"])) == 1


ERRORS = [
    ("truncated", lambda: build_pdf(PAGES)[:3000], PDF, 422, "PDF_INVALID"),
    ("not a pdf", lambda: b"<html>not a pdf</html>", PDF, 422, "PDF_INVALID"),
    ("encrypted", lambda: encrypt(build_pdf(PAGES), "secret"), PDF, 422, "PDF_ENCRYPTED"),
    ("too many pages", lambda: build_pdf([["p"]] * 301), PDF, 413, "PDF_TOO_LARGE"),
    ("over the body limit", lambda: b"%PDF-1.7\n" + b"0" * (16 * 1024 * 1024), PDF, 413, "PAYLOAD_TOO_LARGE"),
    ("wrong content type", lambda: build_pdf(PAGES), {"Content-Type": "text/plain"}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    # hostile files (tests/unit/test_hostile_pdfs.py reads them in process): each is refused, and quickly
    ("compression bomb", lambda: flate_bomb(128 << 20), PDF, 413, "PDF_TOO_LARGE"),
    ("text bomb", lambda: text_bomb(pages=4, chars_per_page=2_000_000), PDF, 413, "PDF_TOO_LARGE"),  # the 3 s
    ("page tree nested deep", lambda: nested_pages(20_000), PDF, 413, "PDF_TOO_LARGE"),
    ("page tree in a loop", looped_pages, PDF, 422, "PDF_INVALID"),
]


@pytest.mark.parametrize(("make", "headers", "status", "code"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_every_pdf_error_through_the_cluster(cluster: Cluster, make: Any, headers: dict, status: int,
                                            code: str) -> None:
    r = cluster.post("/embed/pdf", data=make(), headers=headers, timeout=120)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
    assert cluster.get("/health").status_code == 200
    assert post_pdf(cluster, build_pdf([["Still serving."]])).json()["chunks"][0]["text"] == "Still serving."


def test_a_slow_pdf_meets_the_time_limit_while_the_server_keeps_answering(cluster: Cluster) -> None:
    slow = build_pdf([["slow to read"]] * 250, slow=True)  # most of a second a page; the limit is 3 s
    answered_meanwhile = 0
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post_pdf, cluster, slow)

        def served_until_the_pdf_is_answered() -> bool:  # the server answers others while it reads the PDF
            nonlocal answered_meanwhile
            if pending.done():
                return True
            assert cluster.get("/health", timeout=30).status_code == 200
            assert len(cluster.embed(["meanwhile"])[0]) == 384
            answered_meanwhile += not pending.done()
            return False

        eventually(served_until_the_pdf_is_answered, "the slow PDF answered", timeout=180, interval=0.1)
        r = pending.result()
    assert r.status_code == 413 and r.json()["error"]["code"] == "PDF_TOO_LARGE", r.text
    assert "longer than 3s" in r.json()["error"]["message"]
    assert answered_meanwhile >= 1
    assert post_pdf(cluster, build_pdf([["The parser was replaced."]])).status_code == 200


def test_an_editing_restricted_pdf_needs_no_password(cluster: Cluster) -> None:
    r = post_pdf(cluster, encrypt(build_pdf([NON_ASCII]), ""))
    assert r.status_code == 200, r.text
    assert "straße" in r.json()["chunks"][0]["text"]


# -- embed-cluster embed ------------------------------------------------------------------------------------


def make_folder(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    for i in range(6):
        (root / f"note{i}.txt").write_text("\n\n".join(sample_texts(3 + i, seed=10 + i)), encoding="utf-8")
    (root / "readme.md").write_text("# Notes\n\nÜnïcödé *markdown*. 日本語。\n", encoding="utf-8")
    (root / "sub" / "records.jsonl").write_text(
        "\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(sample_texts(7, seed=20))) + "\n")
    (root / "sub" / "paper.pdf").write_bytes(build_pdf(PAGES))
    (root / "sub" / "locked.pdf").write_bytes(encrypt(build_pdf([["secret"]]), "pw"))
    (root / "sub" / "table.csv").write_text("not,read\n")


def run_embed(cluster: Cluster, folder: Path, out: Path, interrupt_after: int | None = None) -> tuple[int, list]:
    """Run the command; with ``interrupt_after``, send SIGINT once that many files are in the manifest."""
    argv = cli("embed", str(folder), "-o", str(out), "--url", cluster.url, "--chunk-tokens", "96",
               "--concurrency", "1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        if interrupt_after is not None:
            manifest = out / "manifest.jsonl"

            def finished_enough() -> bool:
                if manifest.exists() and len(manifest.read_text().splitlines()) > interrupt_after:
                    return True
                assert proc.poll() is None, f"it ended before it could be interrupted: {proc.communicate()}"
                return False

            eventually(finished_enough, f"more than {interrupt_after} files in the manifest", timeout=120,
                       interval=0.02)
            proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [json.loads(line[len("PROGRESS:"):]) for line in stdout.splitlines()]
    assert all(line.startswith("PROGRESS:") for line in stdout.splitlines()), stdout
    if any(e["type"] == "embed_file" for e in events):
        # the progress bar: elapsed<remaining (the ETA), then texts/s
        assert re.search(r"\d\d:\d\d<\d\d:\d\d", stderr) and "texts/s" in stderr, stderr[-2000:]
    return proc.returncode, events


def expected_rows(cluster: Cluster, folder: Path) -> tuple[list[dict], list[list[float]]]:
    """What embedding every file of the folder straight through the HTTP API gives, in the command's order."""
    metadata, vectors = [], []
    for path in sorted([*folder.glob("*.*"), *folder.glob("sub/*.*")], key=str):
        def row(c: dict, page: Any = None, line: Any = None, path: Path = path) -> dict:
            return {"source": str(path), "page": page, "line": line, "start": c["start"], "end": c["end"],
                    "text": c["text"]}

        if path.suffix in (".txt", ".md"):
            body = cluster.post("/embed/chunks", json={"texts": [path.read_text(encoding="utf-8")],
                                                        "chunk_tokens": 96}).json()
            metadata += [row(c) for c in body["chunks"]]
        elif path.suffix == ".jsonl":
            lines = path.read_text().splitlines()
            texts = [json.loads(line)["text"] for line in lines]
            body = {"vectors": cluster.embed(texts)}
            metadata += [row({"start": 0, "end": len(t), "text": t}, line=n + 1) for n, t in enumerate(texts)]
        elif path.name == "paper.pdf":
            body = post_pdf(cluster, path.read_bytes(), chunk_tokens=96).json()
            metadata += [row(c, page=c["page"]) for c in body["chunks"]]
        else:
            continue
        vectors += body["vectors"]
    return metadata, vectors


def test_bulk_embed_is_interrupted_resumes_and_matches_direct_embedding(cluster: Cluster, tmp_path: Path) -> None:
    folder, out = tmp_path / "docs", tmp_path / "docs" / "out"  # the output inside the folder is not read
    make_folder(folder)
    code, first = run_embed(cluster, folder, out, interrupt_after=1)
    assert code == 130, first
    assert first[-1]["type"] == "embed_finished" and first[-1]["data"]["interrupted"] is True
    done_first = [e["data"]["file"] for e in first if e["type"] == "embed_file"]
    assert 1 <= len(done_first) < 10

    code, second = run_embed(cluster, folder, out)
    done_second = [e["data"]["file"] for e in second if e["type"] == "embed_file"]
    assert code == 1, second  # one file was skipped: the encrypted PDF
    assert not set(done_first) & set(done_second), "a finished file was embedded again"
    assert len(done_first) + len(done_second) == 10  # not the .csv, nor anything under out/
    [locked] = [e["data"] for e in second if e["type"] == "embed_file" and e["data"]["error"]]
    assert "locked.pdf" in locked["file"] and "PDF_ENCRYPTED" in locked["error"]

    metadata = [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    vectors = np.load(out / "vectors.npy")
    want_metadata, want_vectors = expected_rows(cluster, folder)
    assert metadata == want_metadata
    assert vectors.shape == (len(want_vectors), 384)
    assert cosine_rows(vectors, want_vectors).min() > 0.9999

    code, third = run_embed(cluster, folder, out)  # all done: nothing is embedded again
    assert code == 1 and [e["type"] for e in third] == ["embed_finished"]
    assert np.array_equal(np.load(out / "vectors.npy"), vectors)
