"""Which prompt a request's texts get (http_front/served_models.prompt_of): as sentence-transformers' encode
picks it, with an input_type mapped to the model's own prompts."""

from __future__ import annotations

import pytest

from http_front.errors import ApiError
from http_front.served_models import Served, prompt_of

PROMPTS = {"query": "query: ", "document": "passage: ", "empty": ""}
MODEL = Served("e5", "intfloat/e5-small-v2", "e5-small-v2", prompts=PROMPTS)


def test_prompt_wins_then_prompt_name_then_input_type() -> None:
    assert prompt_of(MODEL, {"prompt": "custom: ", "prompt_name": "query"}) == "custom: "
    assert prompt_of(MODEL, {"prompt_name": "document", "input_type": "query"}) == "passage: "
    assert prompt_of(MODEL, {"input_type": "query"}) == "query: "
    assert prompt_of(MODEL, {"input_type": "search_document"}) == "passage: "  # Cohere's names too
    assert prompt_of(MODEL, {"prompt_name": "empty"}) is None
    assert prompt_of(MODEL, {}) is None


def test_the_models_default_prompt_applies_when_none_is_asked_for() -> None:
    default = Served("m", "m", "m", prompts=PROMPTS, default_prompt_name="query")
    assert prompt_of(default, {}) == "query: "
    assert prompt_of(default, {"prompt_name": "document"}) == "passage: "
    assert prompt_of(default, {"prompt": ""}) is None  # an empty prompt: none, as encode(prompt="") has


def test_an_input_type_without_its_prompt_adds_none() -> None:
    plain = Served("m", "m", "m")
    assert prompt_of(plain, {"input_type": "query"}) is None


@pytest.mark.parametrize("body", [{"prompt_name": "nope"}, {"prompt": 3}, {"input_type": "summary"},
                                  {"prompt": "custom: ", "input_type": "summary"}])  # checked under a prompt too
def test_bad_prompt_fields_are_refused(body: dict) -> None:
    with pytest.raises(ApiError) as raised:
        prompt_of(MODEL, body)
    assert raised.value.code == "BAD_REQUEST"
