"""``POST /tokenize``: each text's token count for a model, as its workers count them, and the model's window,
so that a client can cut its texts to fit exactly.

A text's ``count`` is what the model would be fed before any cut: its prompt's tokens (``prompt_name``,
``prompt``, ``input_type`` as on /embed) and the special tokens included. ``max_tokens`` is the window: a text
whose count is over it is cut there (or refused with ``"truncate": false``); ``ids`` (with ``"return_ids":
true``) are the ids the model is fed, so cut. The counts come from the worker's own tokenizer, the one its
chunker counts with (worker/chunking.py), so ``/embed/chunks`` and ``/embed/pdf`` cut by the same counts.
"""

from __future__ import annotations

from typing import Any

import falcon

from embed_common.protocol import JobOptions
from http_front.errors import ApiError
from http_front.parsing import check_texts, flag, read_json
from http_front.served_models import EMBED, PROMPT_FIELDS, model_param, prompt_of, resolve
from http_front.state import AppState

FIELDS = {"texts", "inputs", "model", "return_ids", *PROMPT_FIELDS}


def texts_of(body: dict[str, Any], state: AppState) -> list[str]:
    """``texts`` (a list), or TEI's ``inputs`` (a string or a list)."""
    if ("texts" in body) == ("inputs" in body):
        raise ApiError("BAD_REQUEST", "give 'texts' (or TEI's 'inputs'), one of them")
    value = body["texts"] if "texts" in body else body["inputs"]
    if "inputs" in body and isinstance(value, str):
        value = [value]
    return check_texts(value, state.limits, field_name="texts" if "texts" in body else "inputs")


class Tokenize:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self.state.limits)
        if not isinstance(body, dict):
            raise ApiError("BAD_REQUEST", "the body must be a JSON object")
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise ApiError("BAD_REQUEST", f"unknown field(s): {', '.join(unknown)}")
        texts = texts_of(body, self.state)
        return_ids = flag(body, "return_ids", False)
        model = resolve(self.state.client.broker_status(), model_param(body), EMBED)
        prompt = prompt_of(model, body)
        answer: dict[str, Any] = {"model": model.model_id, "max_tokens": model.max_tokens, "counts": [],
                                  "truncated": []}
        if texts:
            result = self.state.embed(req.uri_template, texts, False, JobOptions(tokenize=True, prompt=prompt),
                                      model=model, cache=False)
            answer.update(counts=result.counts, truncated=result.truncated)
            if return_ids:
                answer["ids"] = result.ids
        elif return_ids:
            answer["ids"] = []
        resp.media = answer
