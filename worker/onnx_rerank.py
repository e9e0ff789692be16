"""The ONNX Runtime backend for rerankers on CPU: a sentence-transformers CrossEncoder served without torch.

As the embedding models' ONNX backend (worker/onnx_backend.py) does, a worker on it imports onnxruntime,
tokenizers and numpy only, which is most of a CPU worker's memory (``python -m bench.rerank`` prints the PSS of
each process). The classifier (input ids, attention mask, token types -> logits) is exported once in a child
process (``python -m worker.onnx_rerank MODEL_DIR OUT_DIR``: torch never enters the serving process) into a
cache keyed by the model's files and the versions that made it, and checked there against
``CrossEncoder.predict``: the same token ids for every pair, and the same scores within ``MAX_SCORE_DIFF``;
an export that fails the check is refused, and the torch scorer (worker/cross_encoder.py) serves instead.

Pairs are tokenized by the ``tokenizers`` library from the model's ``tokenizer.json`` (truncated, longest text
first, to the CrossEncoder's ``max_seq_length``); the activation is the one its sentence-transformers config
names (sigmoid, the one-label default, or identity).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from worker.cache import cache_root, content_key, model_fingerprint, package_version
from worker.cross_encoder import second_segment
from worker.embedder import Tokenized
from worker.onnx_backend import EXPORT_TIMEOUT, OPSET, OnnxUnsupported, session_options

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
REPORT_FILE = "export.json"
MAX_SCORE_DIFF = 1e-4  # an export whose scores differ more from CrossEncoder.predict's is refused
ACTIVATIONS = {"torch.nn.modules.activation.Sigmoid": "sigmoid", "torch.nn.modules.linear.Identity": "identity"}
CHECK_QUERY = "what does a cross-encoder score?"
CHECK_TEXTS = ["A query and a passage, read together.", "", "Ein Satz über das Wetter.", "短い日本語の文です。",
               "A longer passage, so that a batch mixes widths and the pair is cut: " + "words and more words " * 200]


def activation_of(path: str | Path) -> str:
    config_file = Path(path) / "config_sentence_transformers.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    name = config.get("activation_fn", "torch.nn.modules.activation.Sigmoid") if isinstance(config, dict) else None
    if name not in ACTIVATIONS:
        raise OnnxUnsupported(f"activation {name!r}: the ONNX reranker applies sigmoid or identity")
    return ACTIVATIONS[name]


class OnnxScorer:
    """A CrossEncoder's classifier on ONNX Runtime's CPU provider, on pre-tokenized pairs (raw logits)."""

    backend = "onnx"

    def __init__(self, path: Path, model_file: Path, model_id: str, report: dict[str, Any], threads: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_id = model_id
        self.device = "cpu"
        self.precision = "fp32"
        self.precision_note = "onnx fp32"
        self.dim = 1
        self.max_tokens = int(report["max_tokens"])
        self.activation = activation_of(path)
        self.session = ort.InferenceSession(str(model_file), sess_options=session_options(threads),
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        text = (path / "tokenizer.json").read_text(encoding="utf-8")
        self.tokenizer, self.spans_tokenizer = Tokenizer.from_str(text), Tokenizer.from_str(text)
        padding = self.tokenizer.padding or {}
        self.pad_id = int(padding.get("pad_id", 0))
        for tokenizer in (self.tokenizer, self.spans_tokenizer):
            tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_tokens, strategy="longest_first")
        self.spans_tokenizer.no_truncation()
        self.sep_id = self.tokenizer.token_to_id(str(report.get("sep_token") or "[SEP]"))
        self.special_tokens = len(self.spans_tokenizer.encode("", "", add_special_tokens=True).ids)

    def tokenize_pairs(self, query: str, texts: list[str]) -> Tokenized:
        if not texts:
            return Tokenized([], [])
        encodings = self.tokenizer.encode_batch([(query, text) for text in texts], add_special_tokens=True)
        return Tokenized([e.ids for e in encodings], [i for i, e in enumerate(encodings) if e.overflowing])

    def tokenize(self, texts: list[str]) -> Tokenized:
        """Single texts (the worker's probe at start-up)."""
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True) if texts else []
        return Tokenized([e.ids for e in encodings], [])

    def encode_ids(self, ids: list[list[int]]) -> np.ndarray:
        if not ids:
            return np.zeros((0, 1), dtype=np.float32)
        width = max(len(seq) for seq in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        types = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
            types[row, second_segment(seq, self.sep_id): len(seq)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types}
        logits = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})[0]
        return np.asarray(logits, dtype=np.float32).reshape(len(ids), 1)

    def activate(self, scores: np.ndarray) -> np.ndarray:
        if self.activation == "identity":
            return scores.astype(np.float32)
        return (1.0 / (1.0 + np.exp(-scores.astype(np.float64)))).astype(np.float32)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in self.spans_tokenizer.encode(text, add_special_tokens=False).offsets]


def cache_dir(path: Path) -> Path:
    key = content_key(model_fingerprint(path), package_version("torch"), package_version("onnxruntime"),
                      package_version("sentence-transformers"), package_version("transformers"), str(OPSET))
    return cache_root("onnx-rerank") / key


def prepare(path: str, model_id: str, emit: Any, threads: int = 1, model_name: str = "") -> OnnxScorer:
    """An :class:`OnnxScorer` for the cross-encoder at ``path``, exporting it first unless the cache holds it;
    :class:`OnnxUnsupported` says why not."""
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as exc:
        raise OnnxUnsupported(f"onnxruntime or tokenizers is not installed ({exc})") from None
    root = Path(path)
    if not (root / "tokenizer.json").is_file():
        raise OnnxUnsupported("no tokenizer.json (a slow tokenizer only)")
    activation_of(root)
    target = cache_dir(root)
    if not (target / REPORT_FILE).is_file():
        run_export(root, target, emit, model_name or model_id)
    report = json.loads((target / REPORT_FILE).read_text(encoding="utf-8"))
    if not report.get("ids_equal") or report.get("max_score_diff", 1.0) > MAX_SCORE_DIFF:
        raise OnnxUnsupported(f"the ONNX export does not score as CrossEncoder.predict does ({report})")
    return OnnxScorer(root, target / MODEL_FILE, model_id, report, threads)


def run_export(root: Path, target: Path, emit: Any, model_name: str) -> None:
    """Export into ``target`` through a child process, atomically (a temporary directory renamed into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    emit("model_preparing", {"model": model_name, "step": "onnx_export"})
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "worker.onnx_rerank", str(root), str(partial)],
                              capture_output=True, text=True, timeout=EXPORT_TIMEOUT,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if proc.returncode != 0:
            raise OnnxUnsupported(f"the ONNX export failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        try:
            os.replace(partial, target)
        except OSError:  # another worker finished the same export first: keep its copy
            if not (target / REPORT_FILE).is_file():
                raise
    except subprocess.TimeoutExpired:
        raise OnnxUnsupported(f"the ONNX export took over {EXPORT_TIMEOUT:.0f}s") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    report = json.loads((target / REPORT_FILE).read_text(encoding="utf-8"))
    emit("model_prepared", {"model": model_name, "step": "onnx_export", "seconds": round(time.monotonic() - started, 2),
                            "cosine": None})
    log.info("exported reranker %s to ONNX (max score difference %s to CrossEncoder.predict)", model_name,
             report.get("max_score_diff"))


def export(model_dir: str, out_dir: str) -> dict[str, Any]:
    """In the child: export the classifier and check it against CrossEncoder.predict; write the report."""
    import torch
    from sentence_transformers import CrossEncoder

    cross_encoder = CrossEncoder(model_dir, device="cpu")
    cross_encoder.eval()
    model = cross_encoder[0].auto_model
    tokenizer = cross_encoder.tokenizer
    names = ["input_ids", "attention_mask", *(["token_type_ids"] if "token_type_ids" in tokenizer.model_input_names
                                              else [])]

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            return self.model(**kwargs, return_dict=False)[0]

    sample = tokenizer(["a query", "another query"], ["a passage", "a longer passage of text"], padding=True,
                       return_tensors="pt")
    axes = {name: {0: "batch", 1: "width"} for name in names}
    axes["logits"] = {0: "batch"}
    model_file = Path(out_dir) / MODEL_FILE
    with torch.inference_mode():
        torch.onnx.export(Logits().eval(), tuple(sample[n] for n in names), str(model_file), input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True,
                          dynamo=False)
    report: dict[str, Any] = {"max_tokens": int(cross_encoder.max_seq_length), "sep_token": tokenizer.sep_token,
                              "opset": OPSET, "torch": torch.__version__}
    scorer = OnnxScorer(Path(model_dir), model_file, model_dir, report)
    served = scorer.tokenize_pairs(CHECK_QUERY, CHECK_TEXTS)
    reference_ids = tokenizer([CHECK_QUERY] * len(CHECK_TEXTS), CHECK_TEXTS, truncation=True,
                              max_length=cross_encoder.max_seq_length)["input_ids"]
    expected = cross_encoder.predict([(CHECK_QUERY, t) for t in CHECK_TEXTS])
    got = scorer.activate(scorer.encode_ids(served.ids)).reshape(-1)
    one_by_one = np.concatenate([scorer.activate(scorer.encode_ids([ids])).reshape(-1) for ids in served.ids])
    report.update(ids_equal=served.ids == [list(ids) for ids in reference_ids],
                  max_score_diff=float(max(np.abs(got - expected).max(), np.abs(one_by_one - expected).max())))
    (Path(out_dir) / REPORT_FILE).write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


if __name__ == "__main__":
    from embed_common import lifeline

    if len(sys.argv) != 3:
        print("usage: python -m worker.onnx_rerank MODEL_DIR OUT_DIR", file=sys.stderr)
        raise SystemExit(2)
    lifeline.watch_parent(os.getppid())  # a worker killed mid-export takes its export with it
    print(json.dumps(export(sys.argv[1], sys.argv[2])))
