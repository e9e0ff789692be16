"""The embedder interface a worker drives, its sentence-transformers implementation, and a fake for tests.

An embedder tokenizes (so that the batcher can plan by tokens) and encodes already tokenized inputs into
*unnormalized* float32 vectors; the worker normalizes on request. Only this module, precision and model_loading
import torch or sentence-transformers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embed_common.vectors import normalize_rows
from worker import precision
from worker.cache import cache_root, content_key, model_fingerprint, package_version

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
    backend: str  # what runs the model: torch or onnx (worker/main.py load_embedder); the fake's is fake

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
        """Put on the requested (or best) precision, keeping it only if its vectors match fp32's.

        On CPU, ``auto`` also keeps a candidate only where it is faster than fp32 on the probe set (best of three
        timings each, so that a moment of contention at start-up does not decide); on an accelerator the probe set
        is too small to show fp16's gain, which is in large batches and memory.
        """
        candidates = [requested] if requested != "auto" else precision.auto_candidates(self.device)
        timed = requested == "auto" and self.device == "cpu"
        remembered = precision_choice(self._path, self.device) if timed else None
        if remembered is not None:  # this model, CPU and torch timed the candidates before: same answer
            candidates = [c for c in candidates if c == remembered]
            timed = False
            log.info("precision: %s, as timed at an earlier start (%s)", remembered, precision_cache_file(
                self._path, self.device))
        if candidates in ([], ["fp32"]):
            return
        reference = self.encode_ids(self.tokenize(PROBE_TEXTS).ids)
        fp32_time = self._time_probe() if timed else 0.0
        for candidate in candidates:
            try:
                applied = precision.apply(self.model, candidate, self.device)
            except ValueError as exc:
                self.precision_note = f"{candidate} unavailable: {exc}"
                log.warning("%s; using fp32", self.precision_note)
                continue
            self.precision = candidate
            worst = float(cosines(reference, self.encode_ids(self.tokenize(PROBE_TEXTS).ids)).min())
            elapsed = self._time_probe() if timed else 0.0
            if worst < 0.999:
                self.precision_note = f"{candidate} rejected: cosine {worst:.5f} to fp32 on the probe set"
            elif elapsed > fp32_time:
                self.precision_note = f"{candidate} rejected: slower than fp32 here ({elapsed:.3f}s vs " \
                                      f"{fp32_time:.3f}s on the probe set)"
            else:
                self.precision_note = f"{candidate}: cosine {worst:.5f} to fp32 on the probe set"
                log.info("precision %s", self.precision_note)
                applied.keep()
                if timed:
                    remember_precision(self._path, self.device, candidate)
                return
            log.warning("%s; using fp32", self.precision_note)
            applied.restore()
            self.precision = "fp32"
        if timed:
            remember_precision(self._path, self.device, "fp32")

    def _time_probe(self) -> float:
        """Seconds for the probe texts one at a time and then as one batch: both ends of the served load."""
        single = [[seq] for seq in self.tokenize(PROBE_TEXTS[:4]).ids]
        batch = self.tokenize(PROBE_TEXTS * 4).ids
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for ids in [*single, batch]:
                self.encode_ids(ids)
            best = min(best, time.perf_counter() - start)
        return best

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


def precision_cache_file(path: str, device: str) -> Path:
    """Where ``--precision auto``'s timed choice is kept: one file per model files, CPU flags, torch version."""
    return cache_root("precision") / f"{precision_key(path, device)}.json"


@functools.cache  # it reads the model's files: once a process (a start reads the choice, then may write it)
def precision_key(path: str, device: str) -> str:
    flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = next((line for line in f if line.startswith("flags")), "")
    return content_key(model_fingerprint(Path(path)), device, flags, package_version("torch"))


def precision_choice(path: str, device: str) -> str | None:
    try:
        choice = json.loads(precision_cache_file(path, device).read_text(encoding="utf-8")).get("precision")
    except (OSError, ValueError, AttributeError):
        return None
    return choice if isinstance(choice, str) else None


def remember_precision(path: str, device: str, choice: str) -> None:
    """Write the choice atomically (a temporary file renamed over it); a read-only cache is no error."""
    target = precision_cache_file(path, device)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        partial.write_text(json.dumps({"precision": choice}), encoding="utf-8")
        os.replace(partial, target)
    except OSError as exc:
        log.info("precision choice not cached: %s", exc)


def drop_unused_pooler(model: Any) -> None:
    """Skip BERT's pooler (a dense layer and tanh on [CLS]) where nothing reads its output.

    Hugging Face's BertModel computes it on every pass; sentence-transformers' Pooling module reads the token
    embeddings only. Dropped only for the plain [Transformer, Pooling] pipeline, where that is certain.
    """
    names = [type(module).__name__ for module in model]
    auto_model = getattr(model[0], "auto_model", None)
    if names == ["Transformer", "Pooling"] and getattr(auto_model, "pooler", None) is not None:
        auto_model.pooler = None
