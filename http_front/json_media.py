"""JSON responses through orjson: a float32 matrix is written straight from its buffer, as the shortest
decimal that reads back to the same float32.

The standard library writes each float32 of ``vectors.tolist()`` as a 17-digit double: many times slower and
about twice the bytes (so the client parses more too); the values read back are the same float32s either way.
Every vector answer (/embed, /embed/chunks, /embed/pdf, /v1/embeddings) comes through here.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import falcon
import numpy as np
import orjson
from falcon import media


def _default(value: Any) -> Any:
    """What orjson does not write natively: arrays it cannot take from their buffer, numpy scalars."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


dumps = partial(orjson.dumps, default=_default, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def install(app: falcon.App) -> None:
    """Answer JSON with orjson (requests are still parsed by the app's own reader)."""
    handler = media.JSONHandler(dumps=dumps, loads=orjson.loads)
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = handler
