"""The embedder interface a worker drives, its sentence-transformers implementation, and a fake for tests.

An embedder tokenizes (so that the batcher can plan by tokens) and encodes already tokenized inputs into
*unnormalized* float32 vectors; the worker normalizes on request. Only this module, precision and model_loading
import torch or sentence-transformers.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from embed_common.vectors import normalize_rows
from worker import precision

log = logging.getLogger(__name__)

PROBE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "Ein kurzer deutscher Satz über das Wetter.",
    "Une phrase française, un peu plus longue, avec des virgules et des accents.",
    "短い日本語の文です。",
    "How do I reset my password?",
    "",
    "42",
]


@dataclass
class Tokenized:
    ids: list[list[int]]  # token ids per text, truncated to max_tokens
    truncated: list[int]  # indices of texts that were longer than max_tokens


class Embedder(Protocol):
    model_id: str
    dim: int
    max_tokens: int
    device: str
    precision: str
    precision_note: str  # how the precision was chosen (empty: no check ran), for the worker's log
    backend: str  # the engine that runs the model (worker/engines.py); the fake's is fake

    def tokenize(self, texts: list[str]) -> Tokenized: ...

    def encode_ids(self, ids: list[list[int]]) -> np.ndarray: ...

    special_tokens: int  # tokens the tokenizer adds around every text ([CLS] and [SEP]: 2)

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(normalize_rows(a) * normalize_rows(b), axis=1)


class FakeEmbedder:
    """Deterministic vectors from a hash of each text's tokens: for unit tests of batching and routing."""

    backend = "fake"

    def __init__(self, dim: int = 8, max_tokens: int = 32, delay_per_token: float = 0.0,
                 model_id: str = "fake/fake-model") -> None:
        self.model_id = model_id
        self.dim = dim
        self.max_tokens = max_tokens
        self.special_tokens = 2
        self.device = "cpu"
        self.precision = "fp32"
        self.precision_note = ""
        self.delay_per_token = delay_per_token
        self.batches: list[int] = []  # sizes of the batches encoded, for tests

    def tokenize(self, texts: list[str]) -> Tokenized:
        ids, truncated = [], []
        for i, text in enumerate(texts):
            words = [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "little")
                     for w in text.split()]
            if len(words) + 2 > self.max_tokens:
                truncated.append(i)
            ids.append([1, *words[: self.max_tokens - 2], 2])
        return Tokenized(ids, truncated)

    def encode_ids(self, ids: list[list[int]]) -> np.ndarray:
        self.batches.append(len(ids))
        if self.delay_per_token:
            time.sleep(self.delay_per_token * len(ids) * max(map(len, ids), default=0))
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for row, seq in enumerate(ids):
            seed = int.from_bytes(hashlib.blake2b(repr(seq).encode(), digest_size=8).digest(), "little")
            out[row] = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32) * 3
        return out

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [match.span() for match in re.finditer(r"\S+", text)]  # one token per word, as tokenize()


class SentenceTransformerEmbedder:
    """A sentence-transformers model on one device, run on pre-tokenized, length-sorted batches."""

    backend = "torch"

    def __init__(self, path: str, model_id: str, device: str, precision: str = "auto",
                 threads: int | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._path = path
        self.model_id = model_id
        self.device = device
        model = SentenceTransformer(path, device=device)
        model.eval()
        # A trailing Normalize module would make `normalize: false` meaningless: we normalize on request.
        self.model_normalizes = type(model[len(model) - 1]).__name__ == "Normalize"
        if self.model_normalizes:
            model.pop(len(model) - 1)
        drop_unused_pooler(model)
        self.model = model
        self.tokenizer = model.tokenizer
        self.input_names = [n for n in self.tokenizer.model_input_names if n != "token_type_ids"] + (
            ["token_type_ids"] if "token_type_ids" in self.tokenizer.model_input_names else [])
        self.max_tokens = int(model.max_seq_length or self.tokenizer.model_max_length)
        self.special_tokens = int(self.tokenizer.num_special_tokens_to_add(pair=False))
        dim_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dim_of())
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.precision = "fp32"
        self.precision_note = ""
        self.mask_optional = False
        self.mask_optional = self._same_vectors_without_mask()
        self._choose_precision(precision)

    # -- precision --------------------------------------------------------------------------------------
    def _choose_precision(self, requested: str) -> None:
        """Put on the requested precision, keeping it only if its vectors match fp32's on the probe set; else
        fp32 stays and ``precision_note`` says why. ``auto`` takes the first of worker/precision.py's
        candidates that passes (a worker's auto measures every engine and precision instead:
        worker/engine_select.py)."""
        candidates = [requested] if requested != "auto" else precision.auto_candidates(self.device)
        if candidates in ([], ["fp32"]):
            return
        reference = self.encode_ids(self.tokenize(PROBE_TEXTS).ids)
        for candidate in candidates:
            try:
                applied = precision.apply(self.model, candidate, self.device)
            except ValueError as exc:
                self.precision_note = f"{candidate} unavailable: {exc}"
                log.warning("%s; using fp32", self.precision_note)
                continue
            self.precision = candidate
            worst = float(cosines(reference, self.encode_ids(self.tokenize(PROBE_TEXTS).ids)).min())
            if worst >= 0.999:
                self.precision_note = f"{candidate}: cosine {worst:.5f} to fp32 on the probe set"
                log.info("precision %s", self.precision_note)
                applied.keep()
                return
            self.precision_note = f"{candidate} rejected: cosine {worst:.5f} to fp32 on the probe set"
            log.warning("%s; using fp32", self.precision_note)
            applied.restore()
            self.precision = "fp32"

    # -- the hot path -----------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> Tokenized:
        if not texts:  # a chunked job whose texts hold no tokens; the tokenizer raises IndexError on []
            return Tokenized([], [])
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_tokens,
                                 return_attention_mask=False, return_token_type_ids=False)
        ids = encoded["input_ids"]
        candidates = [i for i, seq in enumerate(ids) if len(seq) >= self.max_tokens]
        truncated = []
        if candidates:
            full = self.tokenizer([texts[i] for i in candidates], add_special_tokens=True,
                                  return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            truncated = [i for i, seq in zip(candidates, full, strict=True) if len(seq) > self.max_tokens]
        return Tokenized(ids, truncated)

    def encode_ids(self, ids: list[list[int]]) -> np.ndarray:
        torch = self._torch
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        width = max(len(seq) for seq in ids)
        if all(len(seq) == width for seq in ids):  # one text, or texts of one length: no padding
            input_ids = torch.tensor(ids, dtype=torch.long)
            mask = None if self.mask_optional else torch.ones_like(input_ids)
        else:
            input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for row, seq in enumerate(ids):
                input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
        features = {"input_ids": input_ids}
        if mask is not None:
            features["attention_mask"] = mask
        if "token_type_ids" in self.input_names:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        features = {k: v.to(self.model.device) for k, v in features.items()}
        with torch.inference_mode():
            out = self.model.forward(features)["sentence_embedding"]
        return out.float().cpu().numpy()

    def _same_vectors_without_mask(self) -> bool:
        """Whether an unpadded batch may go without an attention mask (all ones) and give the same vectors.

        Without a mask the model skips building one and attention takes its unmasked path, a little of a lone
        query's pass. Checked once on this model, since a model may require the mask.
        """
        ids = self.tokenize(PROBE_TEXTS[:1]).ids
        with_mask = self.encode_ids(ids)
        try:
            self.mask_optional = True
            without = self.encode_ids(ids)
        except Exception:  # any failure means: keep passing the mask
            log.info("this model needs an attention mask even without padding")
            without = None
        self.mask_optional = False
        return without is not None and without.shape == with_mask.shape and \
            float(cosines(with_mask, without).min()) > 0.99999

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character offsets of each token of ``text`` (no special tokens, no limit): for chunking by tokens."""
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [(int(start), int(end)) for start, end in encoded["offset_mapping"]]


def drop_unused_pooler(model: Any) -> None:
    """Skip BERT's pooler (a dense layer and tanh on [CLS]) where nothing reads its output.

    Hugging Face's BertModel computes it on every pass; sentence-transformers' Pooling module reads the token
    embeddings only. Dropped only for the plain [Transformer, Pooling] pipeline, where that is certain.
    """
    names = [type(module).__name__ for module in model]
    auto_model = getattr(model[0], "auto_model", None)
    if names == ["Transformer", "Pooling"] and getattr(auto_model, "pooler", None) is not None:
        auto_model.pooler = None
