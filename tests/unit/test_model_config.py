"""What a worker reads of a model's files before loading it (worker/model_config.py): its kind and prompts."""

from __future__ import annotations

import json
from pathlib import Path

from worker.model_config import EMBED, RERANK, model_kind, ready_info


def write(root: Path, name: str, content: object) -> None:
    (root / name).write_text(json.dumps(content), encoding="utf-8")


def test_a_cross_encoder_is_a_reranker_as_sentence_transformers_saved_it(tmp_path: Path) -> None:
    write(tmp_path, "config_sentence_transformers.json", {"model_type": "CrossEncoder", "prompts": {}})
    write(tmp_path, "modules.json", [{"type": "sentence_transformers.base.modules.transformer.Transformer"}])
    assert model_kind(tmp_path) == RERANK


def test_a_plain_sequence_classifier_is_a_reranker_and_an_st_model_is_not(tmp_path: Path) -> None:
    write(tmp_path, "config.json", {"architectures": ["BertForSequenceClassification"]})
    assert model_kind(tmp_path) == RERANK
    write(tmp_path, "modules.json", [{"type": "sentence_transformers.models.Transformer"}])  # an embedding model
    assert model_kind(tmp_path) == EMBED


def test_prompts_and_the_default_come_from_the_config(tmp_path: Path) -> None:
    write(tmp_path, "config_sentence_transformers.json",
          {"prompts": {"query": "query: ", "document": "passage: "}, "default_prompt_name": "query"})
    assert ready_info(tmp_path) == {"kind": EMBED, "prompts": {"query": "query: ", "document": "passage: "},
                                    "default_prompt_name": "query"}
    write(tmp_path, "config_sentence_transformers.json", {"prompts": {"query": "q: "}, "default_prompt_name": "x"})
    assert ready_info(tmp_path)["default_prompt_name"] is None  # a default that names no prompt: none


def test_a_directory_without_configs_is_an_embedding_model(tmp_path: Path) -> None:
    assert ready_info(tmp_path) == {"kind": EMBED, "prompts": {}, "default_prompt_name": None}
