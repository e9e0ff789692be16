"""JSON answers: written by orjson, and a large one handed to the server whole.

- orjson writes a float32 matrix straight from its buffer, and each number as the shortest decimal that reads
  back to the same float32 (the standard library would write ``vectors.tolist()`` as 17-digit doubles, slower
  and longer). Rows the workers wrote already (protocol Encoding.JSON) are added by :func:`answer` as they came
  (EmbedResult.vectors_json), and single rows as ``orjson.Fragment`` (EmbedResult.rows_json).
- waitress copies a body it is given as bytes into a buffer of its own and copies it out again to send it; a
  body given as a file (``wsgi.file_wrapper``) is sent from where it lies. :class:`StreamLargeBodies` turns a
  large answer (a vector answer is hundreds of KiB) into such a file. ``python -m bench.head`` measures
  the front's CPU per request (docs/head-node.md).
"""

from __future__ import annotations

import bisect
import io
import itertools
from functools import partial
from typing import Any

import falcon
import numpy as np
import orjson
from falcon import media

STREAM_AT = 64 * 1024  # bytes from which an answer is handed over as a file rather than copied by waitress


def _default(value: Any) -> Any:
    """What orjson does not write natively: arrays it cannot take from their buffer, numpy scalars."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


dumps = partial(orjson.dumps, default=_default, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


class StreamLargeBodies:
    """Falcon middleware, first in the list so that it sees the answer last: a JSON body of STREAM_AT bytes or
    more goes out as a stream (the server sends it without copying it into its own buffers)."""

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        if resp.media is None or resp.stream is not None:
            return
        body = resp.render_body()
        if body is not None and len(body) >= STREAM_AT:
            resp.media = None
            resp.stream = io.BytesIO(body)  # a BytesIO of bytes shares them: read whole, it gives them back
            resp.content_length = len(body)


class Pieces(io.RawIOBase):
    """A body made of pieces (bytes, or views of received frames), read as one file without joining them: what
    waitress's ``wsgi.file_wrapper`` sends from (a read gives the rest of the current piece, at most ``size``
    bytes of it)."""

    def __init__(self, pieces: list[Any]) -> None:
        super().__init__()
        self.pieces = [memoryview(p).cast("B") for p in pieces if len(p)]
        self.offsets = [0, *itertools.accumulate(len(p) for p in self.pieces)]  # where each piece starts
        self.size = self.offsets[-1]
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = min(max(0, base + offset), self.size)
        return self.position

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        if self.position >= self.size:
            return b""
        index = bisect.bisect_right(self.offsets, self.position) - 1
        start = self.position - self.offsets[index]
        end = len(self.pieces[index]) if size is None or size < 0 else min(len(self.pieces[index]), start + size)
        self.position += end - start
        return bytes(self.pieces[index][start:end])  # WSGI wants bytes: the one copy of the rows on their way

    def close(self) -> None:
        self.pieces = []
        super().close()


def answer(resp: falcon.Response, media: dict[str, Any], name: str, json_pieces: list[Any]) -> None:
    """Answer ``media`` with ``name`` added last, its value the JSON text in ``json_pieces`` (the rows as
    the workers wrote them), which is not copied when the answer is large (:class:`Pieces`)."""
    head = dumps(media)[:-1] + (b"," if media else b"") + orjson.dumps(name) + b":"
    body = Pieces([head, *json_pieces, b"}"])
    resp.content_type = falcon.MEDIA_JSON
    if body.size < STREAM_AT:
        resp.data = b"".join(body.pieces)
    else:
        resp.stream, resp.content_length = body, body.size


def install(app: falcon.App) -> None:
    """Answer JSON with orjson (requests are still parsed by the app's own reader)."""
    handler = media.JSONHandler(dumps=dumps, loads=orjson.loads)
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = handler
