"""Text out of PDFs, page by page, with pypdf, in a small pool of parser processes that the front owns.

Parsing a PDF is CPU work that a broken or hostile file can stretch without bound, so it never runs on a
request thread: each PDF goes to one of a few long-lived parser processes (spawned; they import pypdf, not
the front), with a time limit. A parser that overruns its limit or dies is killed and replaced on its next
use while the others keep serving; each one also runs under an address-space limit, so that a decompression
bomb ends as ``PDF_TOO_LARGE`` instead of taking the front's memory.

``concurrent.futures.ProcessPoolExecutor`` cannot stop one running task: a hung parse would have to take the
whole pool down, failing every other PDF in it. Hence this pool of single-task processes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing
import queue
import signal
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from http_front.errors import ApiError

log = logging.getLogger(__name__)

PARSER_PROCESSES = 2
PARSER_MEMORY_BYTES = 2 * 1024**3  # address space of one parser process
PARSER_START_TIMEOUT = 60.0  # seconds a new parser may take to start (not counted in a PDF's time limit)


class PdfError(Exception):
    """A PDF that cannot be read, in a parser process; ``code`` is one of the front's error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def extract_pages(data: bytes, max_pages: int, max_chars: int | None = None) -> list[str]:
    """The extracted text of every page (``""`` for a page without a text layer); PDF_TOO_LARGE past
    ``max_pages`` pages or ``max_chars`` characters of text (a small file of highly compressed text streams
    holds far more text than its size: it is refused as it is read, not after)."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError

    if b"%PDF-" not in data[:1024]:
        raise PdfError("PDF_INVALID", "the body is not a PDF (no %PDF- header)")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # many PDFs are encrypted only against editing: no user password
            except DependencyError:
                raise PdfError("PDF_ENCRYPTED", "the PDF is encrypted with an algorithm this server cannot "
                               "read") from None
            if not opened:
                raise PdfError("PDF_ENCRYPTED", "the PDF is encrypted with a password; send it decrypted")
        pages = len(reader.pages)
        if pages > max_pages:
            raise PdfError("PDF_TOO_LARGE", f"the PDF has {pages} pages; the limit is {max_pages}")
        texts: list[str] = []
        total = 0
        for page in reader.pages:
            texts.append(page.extract_text() or "")
            total += len(texts[-1])
            if max_chars is not None and total > max_chars:
                raise PdfError("PDF_TOO_LARGE", f"the PDF holds more than {max_chars} characters of text, the "
                               "most one request may carry (max_body_bytes)")
        return texts
    except PdfError:
        raise
    except FileNotDecryptedError:
        raise PdfError("PDF_ENCRYPTED", "the PDF is encrypted with a password; send it decrypted") from None
    except MemoryError:
        raise PdfError("PDF_TOO_LARGE", "the PDF needs more memory to read than a parser may use") from None
    except RecursionError:
        raise PdfError("PDF_INVALID", "the PDF's structure is nested too deeply to read") from None
    except Exception as exc:  # pypdf raises many types for corrupt files; the class name is enough to tell
        # pypdf's own bounds (a stream's decompressed size, the page tree's depth, ...); named, not imported:
        if type(exc).__name__ == "LimitReachedError":  # older pypdf versions lack the class
            raise PdfError("PDF_TOO_LARGE", "the PDF goes past a limit of the parser (a compression bomb, or "
                           f"a structure nested too deeply): {str(exc)[:200]}") from None
        raise PdfError("PDF_INVALID", f"the PDF is corrupt or truncated ({type(exc).__name__})") from None


def serve(conn: Connection, memory_bytes: int) -> None:
    """A parser process: say ``("ready",)``, then read ``(data, max_pages, max_chars)`` and answer
    ``("ok", pages)`` or ``("error", code, message)``, until the front goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the front decides
    import pypdf  # noqa: F401 - imported before the first PDF's clock starts

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about sloppy files are not ours to log
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    conn.send(("ready",))
    while True:
        try:
            data, max_pages, max_chars = conn.recv()
        except (EOFError, OSError):  # the front is gone
            return
        try:
            reply: tuple[Any, ...] = ("ok", extract_pages(data, max_pages, max_chars))
        except PdfError as exc:
            reply = ("error", exc.code, str(exc))
        del data
        conn.send(reply)


@dataclass(eq=False)  # compared and hashed by identity: kept in a set
class _Parser:
    process: Any  # multiprocessing's SpawnProcess
    conn: Connection

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class PdfPool:
    """At most ``processes`` PDFs parsed at once, each in its own process; started on first use."""

    def __init__(self, processes: int = PARSER_PROCESSES, memory_bytes: int = PARSER_MEMORY_BYTES) -> None:
        self.memory_bytes = memory_bytes
        self._context = multiprocessing.get_context("spawn")
        self._idle: queue.LifoQueue[_Parser | None] = queue.LifoQueue()  # warm parsers first
        for _ in range(processes):
            self._idle.put(None)  # a slot whose process is started when it is first needed
        self._parsers: set[_Parser] = set()
        self._lock = threading.Lock()
        self.replaced = 0  # parsers killed for overrunning or found dead

    def extract(self, data: bytes, max_pages: int, timeout: float, max_chars: int | None = None) -> list[str]:
        """Every page's text (:func:`extract_pages`); raises ApiError (PDF_*, or OVERLOADED when every parser
        stays busy)."""
        try:
            parser = self._idle.get(timeout=timeout)
        except queue.Empty:
            raise ApiError("OVERLOADED", "every PDF parser is busy; retry later") from None
        try:
            if parser is None or not parser.process.is_alive():
                old, parser = parser, None
                parser = self._replace(old)
            parser.conn.send((data, max_pages, max_chars))
            if not parser.conn.poll(timeout):
                self._retire(parser, "overran its time limit")
                parser = None
                raise ApiError("PDF_TOO_LARGE", f"reading the PDF took longer than {timeout:g}s")
            reply = parser.conn.recv()
        except (EOFError, OSError):
            self._retire(parser, "died")
            parser = None
            raise ApiError("PDF_INVALID", "the PDF could not be read (it stopped the parser)") from None
        finally:
            self._idle.put(parser)
        if reply[0] == "ok":
            return list(reply[1])
        raise ApiError(reply[1], reply[2])

    def _replace(self, old: _Parser | None) -> _Parser:
        if old is not None:
            self._retire(old, "was found dead")
        parent, child = self._context.Pipe()
        process = self._context.Process(target=serve, args=(child, self.memory_bytes), name="pdf-parser",
                                        daemon=True)
        process.start()
        child.close()
        parser = _Parser(process, parent)
        with self._lock:
            self._parsers.add(parser)
        try:
            ready = parent.poll(PARSER_START_TIMEOUT) and parent.recv() == ("ready",)
        except (EOFError, OSError):
            ready = False
        if not ready:
            self._retire(parser, "did not start")
            raise ApiError("INTERNAL", "the PDF parser did not start; see the front's log")
        return parser

    def _retire(self, parser: _Parser | None, why: str) -> None:
        if parser is None:
            return
        log.warning("PDF parser %s %s; it is replaced", parser.process.pid, why)
        parser.kill()
        with self._lock:
            self._parsers.discard(parser)
            self.replaced += 1

    def close(self) -> None:
        with self._lock:
            parsers, self._parsers = list(self._parsers), set()
        for parser in parsers:
            parser.kill()
