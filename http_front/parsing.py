"""What a request says, read and checked: bodies (JSON or a PDF, both within ``max_body_bytes``), the ``texts``
every embedding route takes, and flags in a JSON body or the query string. Each refusal is an ApiError with its
code from the error table; nothing here knows a route."""

from __future__ import annotations

import json
import re
from typing import Any

import falcon
import orjson

from embed_common.settings import Limits
from http_front.errors import ApiError

MEDIA_TYPES = {"json": "application/json", "pdf": "application/pdf"}  # the route table's ``accepts`` values



def read_body(req: falcon.Request, max_bytes: int) -> bytes:
    """The body, refused with PAYLOAD_TOO_LARGE over ``max_bytes`` (before reading when Content-Length says so)."""
    length = req.content_length
    if length is not None and length > max_bytes:
        raise ApiError("PAYLOAD_TOO_LARGE", f"the body is {length} bytes; the limit is {max_bytes}")
    body = req.bounded_stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise ApiError("PAYLOAD_TOO_LARGE", f"the body is over the limit of {max_bytes} bytes")
    return body


def read_json(req: falcon.Request, limits: Limits) -> Any:
    body = read_body(req, limits.max_body_bytes)
    try:
        return orjson.loads(body)  # the fast parser; what it refuses (NaN, huge ints, lone surrogates, deep
    except orjson.JSONDecodeError:  # nesting) the standard one reads or refuses with the right message
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError("INVALID_JSON", "the body is not valid JSON") from None
    except RecursionError:  # json raises it, not ValueError, for arrays or objects nested thousands deep
        raise ApiError("INVALID_JSON", "the body is nested too deeply") from None


def read_pdf(req: falcon.Request, max_bytes: int) -> bytes:
    """The PDF of the body (its media type is checked before, by http_front/request_policy.py)."""
    data = read_body(req, max_bytes)
    if not data:
        raise ApiError("PDF_INVALID", "the body is empty")
    return data


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_texts(texts: Any, limits: Limits, field_name: str = "texts") -> list[str]:
    if not isinstance(texts, list):
        raise ApiError("BAD_REQUEST", f"'{field_name}' must be a list of strings")
    if len(texts) > limits.max_texts:
        raise ApiError("BAD_REQUEST", f"'{field_name}' holds {len(texts)} items; the limit is {limits.max_texts}")
    if all(type(t) is str for t in texts) and max(map(len, texts), default=0) <= limits.max_text_chars \
            and not _SURROGATE.search("".join(texts)):
        return texts  # the usual case, checked at once; else find the first bad text, to name it
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError("BAD_REQUEST", f"'{field_name}[{i}]' is not a string")
        if len(text) > limits.max_text_chars:
            raise ApiError("BAD_REQUEST", f"'{field_name}[{i}]' has {len(text)} characters; "
                           f"the limit is {limits.max_text_chars}")
        if _SURROGATE.search(text):  # JSON allows a lone "\ud800"; UTF-8 (and so the wire) does not
            raise ApiError("BAD_REQUEST", f"'{field_name}[{i}]' holds a lone UTF-16 surrogate: not valid Unicode")
    return texts


def read_texts_request(req: falcon.Request, limits: Limits, fields: set[str]) -> tuple[dict[str, Any], list[str]]:
    """A JSON object with a checked ``texts`` list and no field outside ``fields``."""
    body = read_json(req, limits)
    if not isinstance(body, dict):
        raise ApiError("BAD_REQUEST", "the body must be a JSON object")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise ApiError("BAD_REQUEST", f"unknown field(s): {', '.join(unknown)}")
    if "texts" not in body:
        raise ApiError("BAD_REQUEST", "'texts' is required")
    return body, check_texts(body["texts"], limits)


def flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError("BAD_REQUEST", f"'{name}' must be true or false")
    return value


def query_int(req: falcon.Request, name: str) -> int | None:
    raw = req.params.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.isdigit() or len(raw) > 9:
        raise ApiError("BAD_REQUEST", f"'{name}' must be a whole number")
    return int(raw)


def query_bool(req: falcon.Request, name: str, default: bool) -> bool:
    raw = req.params.get(name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise ApiError("BAD_REQUEST", f"'{name}' must be true or false")
    return raw == "true"
