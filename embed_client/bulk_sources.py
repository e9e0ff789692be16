"""What ``embed-cluster embed`` reads: the files under the paths it is given, and the texts of each file.

- ``.txt`` and ``.md``: UTF-8 text, chunked by the server (``/embed/chunks``); sent in pieces of at most
  ``max_chars`` characters cut at a paragraph, line or word break, so a chunk never spans two pieces;
- ``.jsonl``: a JSON object with a ``text`` string per line, taken as already chunked: one vector per line;
- ``.pdf``: sent as it is to ``/embed/pdf``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

KINDS = {".txt": "text", ".md": "text", ".markdown": "text", ".jsonl": "jsonl", ".pdf": "pdf"}


class SourceError(Exception):
    """A file that cannot be read as its kind; the message names the file (and line)."""


@dataclass(frozen=True)
class Source:
    path: Path  # as found from the paths given
    kind: str  # text, jsonl or pdf
    size: int
    mtime_ns: int

    @property
    def key(self) -> str:
        """What the manifest knows the file by: its absolute path."""
        return str(self.path.resolve())

    def changed_since(self, entry: dict) -> bool:
        return entry.get("size") != self.size or entry.get("mtime_ns") != self.mtime_ns


def _source(path: Path) -> Source:
    stat = path.stat()
    return Source(path, KINDS[path.suffix.lower()], stat.st_size, stat.st_mtime_ns)


def find_sources(paths: list[str], exclude: Path) -> list[Source]:
    """Named files (of a known kind), and every file of a known kind under named folders, sorted; hidden files
    and folders, and ``exclude`` (the output folder), are left out. Raises SourceError for a path that is
    missing or a named file of an unknown kind."""
    exclude = exclude.resolve()
    found: dict[Path, Source] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            if path.suffix.lower() not in KINDS:
                raise SourceError(f"{path}: not a file this command reads ({', '.join(sorted(KINDS))})")
            found.setdefault(path.resolve(), _source(path))
        elif path.is_dir():
            for folder, dirs, files in os.walk(path):
                here = Path(folder)
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != exclude)
                for name in sorted(files):
                    candidate = here / name
                    if not name.startswith(".") and candidate.suffix.lower() in KINDS:
                        found.setdefault(candidate.resolve(), _source(candidate))
        else:
            raise SourceError(f"{path}: no such file or folder")
    return sorted(found.values(), key=lambda s: str(s.path))


def read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def read_jsonl(path: Path) -> list[tuple[int, str]]:
    """(line number from 1, text) of every non-blank line."""
    records = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise SourceError(f"{path}:{number}: not JSON") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise SourceError(f"{path}:{number}: no 'text' string")
        records.append((number, text))
    return records


def split_text(text: str, max_chars: int) -> list[tuple[int, str]]:
    """``text`` as pieces of at most ``max_chars`` characters, with their offsets; each cut is at the last
    paragraph break in the piece, else its last line break, else its last space, else at ``max_chars``."""
    pieces = []
    start = 0
    while len(text) - start > max_chars:
        window = text[start: start + max_chars]
        cut = next((i + len(sep) for sep in ("\n\n", "\n", " ") if (i := window.rfind(sep)) > 0), max_chars)
        pieces.append((start, window[:cut]))
        start += cut
    if start < len(text):
        pieces.append((start, text[start:]))
    return pieces
