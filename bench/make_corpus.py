"""Build bench/corpus.jsonl: real, varied-length text in many languages, from two public sources.

- spaCy 3.8.18 (MIT licence, a PyPI wheel): ``spacy/lang/*/examples.py`` holds example sentences in 68
  languages, most taken from news and Wikipedia: they are the short texts ("query"), and runs of 3-5
  consecutive sentences of one language make the middle-sized ones ("sentences"); the paragraphs that
  ``spacy/tests/lang/*/*.py`` tokenizes (the UDHR, Kafka, Andersen, news, Wikipedia; 30 languages) are
  long texts ("paragraph").
- CPython's ``pydoc_data/topics.py`` (PSF licence; every Python ships it): the language reference's
  prose, cut at blank lines into passages of 400-1,500 characters ("passage"), long English text with code.

Run once to (re)build the committed file; it needs only pip and this Python::

    python bench/make_corpus.py            # downloads the spaCy wheel (no install) into a temp dir
    python bench/make_corpus.py --wheel /tmp/spacy-3.8.18-....whl
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SPACY = "spacy==3.8.18"
HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus.jsonl"
PASSAGES = 300  # pydoc passages kept
SEED = 7


def string_constants(source: str) -> list[str]:
    return [node.value for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def spacy_texts(wheel: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(zf.namelist())
        for name in names:
            parts = name.split("/")
            if len(parts) == 4 and parts[1] == "lang" and parts[3] == "examples.py":
                lang = parts[2]
                sentences = [s.strip() for s in string_constants(zf.read(name).decode("utf-8"))
                             if ">>>" not in s and len(s.strip()) > 3]
                rows += [{"kind": "query", "lang": lang, "source": "spacy examples", "text": s}
                         for s in sentences]
                rng = random.Random(f"{SEED}-{lang}")
                i = 0
                while i + 3 <= len(sentences):
                    n = rng.randint(3, 5)
                    rows.append({"kind": "sentences", "lang": lang, "source": "spacy examples",
                                 "text": " ".join(sentences[i: i + n])})
                    i += n
            elif len(parts) == 5 and parts[1] == "tests" and parts[2] == "lang" and parts[4].endswith(".py"):
                for s in string_constants(zf.read(name).decode("utf-8")):
                    if len(s) > 300:
                        rows.append({"kind": "paragraph", "lang": parts[3], "source": "spacy tests",
                                     "text": " ".join(s.split())})
    return rows


def pydoc_passages() -> list[dict[str, str]]:
    import pydoc_data.topics

    passages: list[str] = []
    for topic in sorted(pydoc_data.topics.topics):
        current = ""
        for block in pydoc_data.topics.topics[topic].split("\n\n"):
            block = block.strip()
            if not block or set(block) <= set("*=-"):
                continue
            current = f"{current}\n\n{block}" if current else block
            if len(current) >= 400:
                passages.append(current[:1500])
                current = ""
    rng = random.Random(SEED)
    rng.shuffle(passages)
    return [{"kind": "passage", "lang": "en", "source": "pydoc topics", "text": p}
            for p in passages[:PASSAGES]]


def download_wheel(into: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                    SPACY, "-d", str(into)], check=True)
    [wheel] = glob.glob(str(into / "spacy-*.whl"))
    return Path(wheel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, help="a downloaded spaCy wheel (default: pip download it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        rows = spacy_texts(wheel) + pydoc_passages()
    seen: set[str] = set()
    unique = [r for r in rows if not (r["text"] in seen or seen.add(r["text"]))]  # type: ignore[func-returns-value]
    random.Random(SEED).shuffle(unique)
    with CORPUS.open("w", encoding="utf-8") as f:
        for row in unique:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    kinds = {k: sum(1 for r in unique if r["kind"] == k) for k in sorted({r["kind"] for r in unique})}
    langs = len({r["lang"] for r in unique})
    print(f"{CORPUS}: {len(unique)} texts, {langs} languages, {kinds}, {CORPUS.stat().st_size} bytes")


if __name__ == "__main__":
    main()
