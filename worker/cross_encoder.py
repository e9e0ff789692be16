"""Rerankers: a sentence-transformers ``CrossEncoder`` scores (query, document) pairs, driven by the worker
as an embedding model is (tokenized on the I/O thread, batched by tokens across requests, encoded on the
compute threads), with a row of one number, the model's raw logit, for each pair.

A rerank job carries its documents as its texts and the query in its options (``query``); the worker tokenizes
each pair as ``CrossEncoder.predict`` does (the tokenizer's pair encoding, truncated to ``max_seq_length``) and,
unless the job asks for raw scores, applies the model's activation (``CrossEncoder.activation_fn``: sigmoid
for a one-label model unless its config names another), so that a score is what ``predict`` gives.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import numpy as np

from worker.embedder import Tokenized
from worker.model_config import RERANK

log = logging.getLogger(__name__)

@runtime_checkable
class PairScorer(Protocol):
    """What a worker needs of a reranker beyond the embedder interface (whose ``encode_ids`` gives raw scores,
    one column)."""

    def tokenize_pairs(self, query: str, texts: list[str]) -> Tokenized: ...

    def activate(self, scores: np.ndarray) -> np.ndarray: ...


class CrossEncoderScorer:
    """A sentence-transformers CrossEncoder on one device (torch), run on pre-tokenized pairs."""

    backend = "torch"

    def __init__(self, path: str, model_id: str, device: str, threads: int | None = None) -> None:
        import torch
        from sentence_transformers import CrossEncoder

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.model_id = model_id
        self.device = device
        self.precision = "fp32"
        self.precision_note = ""
        cross_encoder = CrossEncoder(path, device=device)
        cross_encoder.eval()
        labels = int(cross_encoder.config.num_labels)
        if labels != 1:
            raise ValueError(f"a reranker gives one score a pair; this model has {labels} labels")
        self.cross_encoder = cross_encoder
        self.model = cross_encoder[0].auto_model
        self.activation_fn = cross_encoder.activation_fn
        self.tokenizer = cross_encoder.tokenizer
        self.max_tokens = int(cross_encoder.max_seq_length or self.tokenizer.model_max_length)
        self.special_tokens = int(self.tokenizer.num_special_tokens_to_add(pair=True))
        self.takes_types = "token_type_ids" in self.tokenizer.model_input_names
        self.sep_id = self.tokenizer.sep_token_id
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.dim = 1

    def tokenize_pairs(self, query: str, texts: list[str]) -> Tokenized:
        if not texts:
            return Tokenized([], [])
        queries = [query] * len(texts)
        ids = self.tokenizer(queries, texts, truncation=True, max_length=self.max_tokens,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        candidates = [i for i, seq in enumerate(ids) if len(seq) >= self.max_tokens]
        truncated = []
        if candidates:
            full = self.tokenizer([query] * len(candidates), [texts[i] for i in candidates],
                                  return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            truncated = [i for i, seq in zip(candidates, full, strict=True) if len(seq) > self.max_tokens]
        return Tokenized([list(seq) for seq in ids], truncated)

    def tokenize(self, texts: list[str]) -> Tokenized:
        """Single texts (the worker's probe at start-up): each scored as a pair with an empty document."""
        ids = [list(seq) for seq in self.tokenizer(texts, truncation=True, max_length=self.max_tokens,
                                                      return_attention_mask=False)["input_ids"]] if texts else []
        return Tokenized(ids, [])

    def encode_ids(self, ids: list[list[int]]) -> np.ndarray:
        """Raw scores (logits), one column."""
        torch = self._torch
        if not ids:
            return np.zeros((0, 1), dtype=np.float32)
        width = max(len(seq) for seq in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        types = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
            types[row, second_segment(seq, self.sep_id): len(seq)] = 1
        features = {"input_ids": input_ids, "attention_mask": mask}
        if self.takes_types:
            features["token_type_ids"] = types
        with torch.inference_mode():
            logits = self.model(**{k: v.to(self.model.device) for k, v in features.items()}).logits
        return logits.float().cpu().numpy().reshape(len(ids), 1)

    def activate(self, scores: np.ndarray) -> np.ndarray:
        """The model's activation on raw scores, as ``CrossEncoder.predict`` applies it."""
        torch = self._torch
        with torch.inference_mode():
            return self.activation_fn(torch.from_numpy(np.ascontiguousarray(scores))).float().numpy()

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [(int(start), int(end)) for start, end in encoded["offset_mapping"]]


def second_segment(ids: list[int], sep_id: int | None) -> int:
    """Where a pair's second text begins: after its first separator (BERT's token types are 1 from there to
    the end); a sequence without one has no second text."""
    if sep_id is None or sep_id not in ids:
        return len(ids)
    return ids.index(sep_id) + 1


def config_summary(scorer: CrossEncoderScorer) -> dict[str, Any]:
    """What the worker's READY says of a reranker."""
    return {"kind": RERANK, "activation": type(scorer.activation_fn).__name__}
