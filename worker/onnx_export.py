"""Export a sentence-transformers model's transformer to ONNX and check it: ``python -m worker.onnx_export
MODEL_DIR OUT_DIR``.

Run by worker/onnx_backend.py in a child process, so that the serving worker never holds torch. Writes
``OUT_DIR/model.onnx`` (inputs ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the model
takes them), output ``token_embeddings`` [batch, width, dim]; batch and width dynamic) and
``OUT_DIR/export.json``: the least cosine, on the probe texts and a batch of them padded together, between
the served pipeline (this export, the ``tokenizers`` tokenizer, numpy pooling) and sentence-transformers fp32.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from embed_common import lifeline
from embed_common.exits import ExitCode
from worker.embedder import PROBE_TEXTS, cosines
from worker.onnx_backend import MODEL_FILE, OPSET, REPORT_FILE, OnnxEmbedder, read_pipeline

CHECK_TEXTS = [*PROBE_TEXTS, "A longer text, so that a padded batch mixes widths: " + "words and more words " * 20]


def export(model_dir: str, out_dir: str) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    started = time.monotonic()
    pipeline = read_pipeline(model_dir)
    st = SentenceTransformer(model_dir, device="cpu")
    st.eval()
    auto_model = st[0].auto_model
    if getattr(auto_model, "pooler", None) is not None:
        auto_model.pooler = None  # never read by Pooling: computing it is wasted work (worker/embedder.py)
    tokenizer = st.tokenizer
    takes_types = "token_type_ids" in tokenizer.model_input_names

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = auto_model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            return self.model(**kwargs, return_dict=False)[0]

    sample = tokenizer(["an example", "a somewhat longer example text"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", *(["token_type_ids"] if takes_types else [])]
    args = tuple(sample[name] for name in names)
    axes = {name: {0: "batch", 1: "width"} for name in names}
    axes["token_embeddings"] = {0: "batch", 1: "width"}
    model_file = Path(out_dir) / MODEL_FILE
    with torch.inference_mode():
        torch.onnx.export(TokenEmbeddings().eval(), args, str(model_file), input_names=names,
                          output_names=["token_embeddings"], dynamic_axes=axes, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    exported = time.monotonic() - started

    onnx = OnnxEmbedder(pipeline, model_file, model_dir)
    served_ids = onnx.tokenize(CHECK_TEXTS).ids
    st_ids = tokenizer(CHECK_TEXTS, truncation=True, max_length=st.max_seq_length)["input_ids"]
    with torch.inference_mode():
        reference = st.encode(CHECK_TEXTS, convert_to_numpy=True, normalize_embeddings=False, batch_size=64)
    one_by_one = [onnx.encode_ids([ids])[0] for ids in served_ids]
    batched = onnx.encode_ids(served_ids)
    import numpy as np

    worst = float(min(cosines(reference, np.stack(one_by_one)).min(), cosines(reference, batched).min()))
    report = {"min_cosine": round(worst, 7), "ids_equal": served_ids == [list(s) for s in st_ids],
              "dim": onnx.dim, "opset": OPSET, "torch": torch.__version__, "export_seconds": round(exported, 2),
              "check_texts": len(CHECK_TEXTS)}
    if not report["ids_equal"]:
        report["min_cosine"] = 0.0  # another tokenization than sentence-transformers': refuse the backend
    (Path(out_dir) / REPORT_FILE).write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m worker.onnx_export MODEL_DIR OUT_DIR", file=sys.stderr)
        return ExitCode.USAGE
    lifeline.watch_parent(os.getppid())  # a worker killed mid-export takes its export with it
    report = export(argv[0], argv[1])
    print(json.dumps(report))
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
