"""JSON answers: written by orjson, and a large one handed to the server whole.

- orjson writes a float32 matrix straight from its buffer, and each number as the shortest decimal that reads
  back to the same float32; the standard library would write ``vectors.tolist()`` as 17-digit doubles, several
  times slower and about twice the bytes. Rows the workers wrote already (protocol Encoding.JSON; see
  EmbedResult.vectors_json) go in as they are (``orjson.Fragment``).
- waitress copies a body it is given as bytes into a buffer of its own and copies it out again to send it; a
  body given as a file (``wsgi.file_wrapper``) is sent from where it lies. :class:`StreamLargeBodies` turns a
  large answer (a vector answer is hundreds of KiB) into such a file. ``python -m bench.head`` measures the
  front's CPU per request with both.
"""

from __future__ import annotations

import io
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


def install(app: falcon.App) -> None:
    """Answer JSON with orjson (requests are still parsed by the app's own reader)."""
    handler = media.JSONHandler(dumps=dumps, loads=orjson.loads)
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = handler
