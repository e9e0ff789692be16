"""The worker's embedder on the real bundled model: its vectors against plain sentence-transformers, and the
shortcuts it takes on a forward pass (no pooler, no attention mask without padding) changing nothing."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import cosine_rows, sample_texts

pytestmark = pytest.mark.slow  # loads the real model, like every integration module


def test_vectors_match_sentence_transformers_encode(real_embedder, reference_model) -> None:
    texts = sample_texts(12, seed=5)
    ids = real_embedder.tokenize(texts).ids
    ours = np.concatenate([real_embedder.encode_ids(ids[:6]), *[real_embedder.encode_ids([s]) for s in ids[6:]]])
    expected = reference_model.encode(texts, batch_size=4)  # its Normalize module: compare directions
    assert cosine_rows(ours, expected).min() > 0.99999
    assert not np.allclose(np.linalg.norm(ours, axis=1), 1.0)  # the worker normalizes on request only


def test_the_unused_pooler_is_dropped(real_embedder) -> None:
    assert real_embedder.model[0].auto_model.pooler is None


def test_unpadded_batches_go_without_a_mask_and_give_the_same_vectors(real_embedder) -> None:
    assert real_embedder.mask_optional  # checked at load: BERT does not need an all-ones mask
    texts = ["one two three four", "five six seven eight"]  # the same number of tokens
    ids = real_embedder.tokenize(texts).ids
    assert len(ids[0]) == len(ids[1])
    without = real_embedder.encode_ids(ids)
    real_embedder.mask_optional = False
    try:
        with_mask = real_embedder.encode_ids(ids)
    finally:
        real_embedder.mask_optional = True
    assert cosine_rows(without, with_mask).min() > 0.99999
