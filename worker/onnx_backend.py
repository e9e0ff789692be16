"""The ONNX Runtime backend for CPU workers: a sentence-transformers model served without torch.

A worker on this backend imports onnxruntime, tokenizers and numpy only (no torch, sentence-transformers or
transformers): that is most of a CPU worker's memory and start-up time. It takes the plain pipeline
``[Transformer, Pooling(, Normalize)]`` whose tokenizer has a ``tokenizer.json``, and does what
sentence-transformers does around the transformer itself:

- tokenizes with the ``tokenizers`` library straight from ``tokenizer.json``, truncated to the model's
  ``max_seq_length`` (``sentence_bert_config.json``), special tokens added, lower-cased where it says
  ``do_lower_case``;
- pools the token embeddings in numpy as ``1_Pooling/config.json`` says (mean, cls or max);
- leaves normalizing to the worker (``normalize`` is per request), as the torch embedder does.

The transformer is exported to ONNX once, in a child process (``python -m worker.onnx_export``: torch never
enters this process), into a cache directory keyed by the model's files, torch's and ORT's versions and the
opset (:func:`cache_dir`; worker/cache.py holds the cache's layout and key recipe). The export is checked
against sentence-transformers fp32 on probe texts before it is kept; a model it cannot take, or whose check
fails, is served by the torch embedder instead (:func:`prepare` raises :class:`OnnxUnsupported` with the
reason).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.cache import cache_root, content_key, model_fingerprint, package_version
from worker.embedder import Tokenized

log = logging.getLogger(__name__)

OPSET = 17
EXPORT_TIMEOUT = 600.0  # seconds for the export child; a 768-dim model takes tens of seconds on 2 cores
MIN_COSINE = 0.999  # an export whose vectors are further than this from sentence-transformers' is refused
POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                 "pooling_mode_max_tokens": "max"}
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8-matmul-per-channel.onnx"
REPORT_FILE = "export.json"

Emit = Callable[[str, dict[str, Any]], None]


class OnnxUnsupported(RuntimeError):
    """This model (or machine) cannot be served by the ONNX backend; the message says why in one line."""


@dataclass(frozen=True)
class Pipeline:
    """What the ONNX backend reads of a sentence-transformers model directory."""

    path: Path  # the model directory
    transformer: Path  # the directory of the Transformer module (holds config.json, tokenizer.json, weights)
    pooling: str  # mean, cls or max
    max_tokens: int
    do_lower_case: bool

    def cased(self, texts: list[str]) -> list[str]:
        """The texts as sentence-transformers hands them to the tokenizer: lower-cased where the model's
        ``sentence_bert_config.json`` says ``do_lower_case`` (tokenizer.json's own normalizer does the rest)."""
        return [t.lower() for t in texts] if self.do_lower_case else texts


@dataclass(frozen=True)
class Tokenizers:
    """The model's ``tokenizer.json`` as the ONNX path uses it (:func:`load_tokenizers`); neither pads."""

    model: Any  # truncates to the pipeline's max_tokens, special tokens added: what the model is fed
    spans: Any  # no limit: chunking needs every token's span
    pad_id: int  # what encode_ids pads a batch with


def load_tokenizers(pipeline: Pipeline) -> Tokenizers:
    """The model's ``tokenizer.json``, read from disk once, as the two tokenizers the ONNX path needs (they
    differ in their truncation, a setting of the tokenizer object, hence two) and the id it pads with."""
    from tokenizers import Tokenizer

    text = (pipeline.transformer / "tokenizer.json").read_text(encoding="utf-8")
    model, spans = Tokenizer.from_str(text), Tokenizer.from_str(text)
    padding = model.padding or {}  # the file's padding settings, read before they are turned off
    model.no_padding()
    model.enable_truncation(pipeline.max_tokens)
    spans.no_padding()
    spans.no_truncation()
    return Tokenizers(model, spans, int(padding.get("pad_id", 0)))


def read_pipeline(path: str | os.PathLike[str]) -> Pipeline:
    """The model's pipeline, if the ONNX backend can take it; else :class:`OnnxUnsupported` says why."""
    root = Path(path)
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        raise OnnxUnsupported("no modules.json (not a sentence-transformers model directory)")
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise OnnxUnsupported(f"modules {kinds}: the ONNX backend takes [Transformer, Pooling(, Normalize)]")
    if not all(m.get("type", "").startswith("sentence_transformers.") for m in modules):
        raise OnnxUnsupported("a custom module: the ONNX backend takes sentence-transformers' own modules")
    transformer = root / modules[0].get("path", "")
    pooling_dir = root / modules[1].get("path", "1_Pooling")
    pooling_cfg = json.loads((pooling_dir / "config.json").read_text(encoding="utf-8"))
    modes = [name for key, name in POOLING_MODES.items() if pooling_cfg.get(key)]
    others = [k for k, v in pooling_cfg.items() if k.startswith("pooling_mode_") and v and k not in POOLING_MODES]
    if len(modes) != 1 or others or pooling_cfg.get("include_prompt", True) is not True:
        raise OnnxUnsupported(f"pooling {pooling_cfg}: the ONNX backend takes one of mean, cls or max")
    if not (transformer / "tokenizer.json").is_file():
        raise OnnxUnsupported("no tokenizer.json (a slow tokenizer only)")
    st_cfg_file = root / "sentence_bert_config.json"
    st_cfg = json.loads(st_cfg_file.read_text(encoding="utf-8")) if st_cfg_file.is_file() else {}
    model_cfg = json.loads((transformer / "config.json").read_text(encoding="utf-8"))
    max_tokens = st_cfg.get("max_seq_length")
    if not max_tokens:  # sentence-transformers then takes the tokenizer's limit, bounded by the positions
        tok_cfg_file = transformer / "tokenizer_config.json"
        tok_cfg = json.loads(tok_cfg_file.read_text(encoding="utf-8")) if tok_cfg_file.is_file() else {}
        limits = [v for v in (tok_cfg.get("model_max_length"), model_cfg.get("max_position_embeddings"))
                  if isinstance(v, int) and v < 1_000_000]
        max_tokens = min(limits) if limits else 512
    return Pipeline(root, transformer, modes[0], int(max_tokens), bool(st_cfg.get("do_lower_case", False)))


def cache_dir(pipeline: Pipeline) -> Path:
    """Where this model's export lives: keyed by its files, the exporting torch, the serving ORT, the opset."""
    key = content_key(model_fingerprint(pipeline.path), package_version("torch"), package_version("onnxruntime"),
                      package_version("sentence-transformers"), package_version("transformers"), str(OPSET))
    return cache_root("onnx") / key  # not by the directory's name: one model's copies share an export


def export(pipeline: Pipeline, target: Path, emit: Emit, model_name: str) -> dict[str, Any]:
    """Export into ``target`` through a child process, atomically (a temporary directory renamed into place):
    a crash mid-export leaves no half cache. Returns the export's report (its check against
    sentence-transformers)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    emit("model_preparing", {"model": model_name, "step": "onnx_export"})
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "worker.onnx_export", str(pipeline.path), str(partial)],
                              capture_output=True, text=True, timeout=EXPORT_TIMEOUT,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise OnnxUnsupported(f"the ONNX export failed: {last}")
        report = json.loads((partial / REPORT_FILE).read_text(encoding="utf-8"))
        try:
            os.replace(partial, target)
        except OSError:  # another worker finished the same export first: keep its copy
            if not (target / REPORT_FILE).is_file():
                raise
            report = json.loads((target / REPORT_FILE).read_text(encoding="utf-8"))
    except subprocess.TimeoutExpired:
        raise OnnxUnsupported(f"the ONNX export took over {EXPORT_TIMEOUT:.0f}s") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    seconds = round(time.monotonic() - started, 2)
    emit("model_prepared", {"model": model_name, "step": "onnx_export", "seconds": seconds,
                            "cosine": report.get("min_cosine")})
    log.info("exported %s to ONNX in %.1fs (min cosine %.6f to sentence-transformers)", model_name, seconds,
             report.get("min_cosine", 0.0))
    return report


def exported(path: str, emit: Emit, model_name: str) -> tuple[Pipeline, Path]:
    """The model's pipeline and its checked export's directory, exporting it first unless the cache holds it
    (worker/engines.py runs this before measuring or loading an engine that reads the file)."""
    pipeline = read_pipeline(path)
    target = cache_dir(pipeline)
    report_file = target / REPORT_FILE
    if not report_file.is_file():
        shutil.rmtree(target, ignore_errors=True)  # an incomplete copy (our writer renames whole dirs only)
        export(pipeline, target, emit, model_name)
    report = json.loads(report_file.read_text(encoding="utf-8"))
    if report.get("min_cosine", 0.0) < MIN_COSINE:
        raise OnnxUnsupported(f"the ONNX export's vectors are off: cosine {report.get('min_cosine')} to "
                              f"sentence-transformers on the probe texts")
    return pipeline, target


def reload_once(load: Callable[[], Any], path: str, emit: Emit, model_name: str) -> Any:
    """``load()`` of an engine that reads the export; where the cached file does not load (a disk fault, a hand
    edit), the export is made again, once."""
    try:
        return load()
    except OnnxUnsupported:
        raise
    except Exception as exc:
        _, target = exported(path, emit, model_name)
        log.warning("the cached ONNX model in %s does not load (%s): exporting again", target, exc)
        shutil.rmtree(target, ignore_errors=True)
        exported(path, emit, model_name)
        try:
            return load()
        except Exception as again:
            raise OnnxUnsupported(f"the ONNX model does not load: {type(again).__name__}: {again}") from again


def prepare(path: str, model_id: str, emit: Emit, threads: int = 1, model_name: str = "",
            precision: str = "fp32") -> OnnxEmbedder:
    """An :class:`OnnxEmbedder` for the model at ``path``, exporting it first unless the cache holds it.
    ``model_id`` is what the user asked for (``/info``'s model_id), ``model_name`` its short name (PROGRESS);
    ``precision`` int8 serves the export quantized (:func:`quantized`)."""
    model_name = model_name or model_id
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise OnnxUnsupported(f"onnxruntime is not installed ({exc})") from None
    if precision not in ("fp32", "int8"):
        raise OnnxUnsupported(f"ONNX Runtime serves fp32 or int8, not {precision}")

    def load() -> OnnxEmbedder:
        pipeline, target = exported(path, emit, model_name)
        model_file = target / MODEL_FILE if precision == "fp32" else quantized(target)
        return OnnxEmbedder(pipeline, model_file, model_id, threads, precision)

    return reload_once(load, path, emit, model_name)


def quantized(target: Path) -> Path:
    """The export with its matrix products' weights quantized to int8 (ONNX Runtime's dynamic quantization:
    int8 weights, activations quantized per batch; its integer kernels use VNNI/AMX where the CPU has them),
    made once beside the export. Its vectors drift from fp32's: an explicit precision only, never one ``auto``
    picks."""
    out = target / INT8_FILE
    if not out.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        partial = target / f".{INT8_FILE}.{os.getpid()}"
        # the matrix products only (quantized embeddings cost the most fidelity), a scale per output channel
        quantize_dynamic(str(target / MODEL_FILE), str(partial), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"], per_channel=True)
        os.replace(partial, out)
    return out


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)  # the worker runs one pass per compute thread instead
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The arena keeps the largest activation block each batch shape asked for and grows with the shapes
    # served; without it memory follows the batch in flight (bench/sidecar.py measures both cost and PSS).
    options.enable_cpu_mem_arena = False
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def padded_width(width: int, step: int, limit: int) -> int:
    """``width`` rounded up to a multiple of ``step``, never past ``limit`` (the model's truncation length) nor
    below ``width``: the masked padding changes no vector, and an engine that compiles kernels per input shape
    (OpenVINO) then meets a few widths again instead of a new one with nearly every text."""
    return max(width, min(-(-width // step) * step, limit))


class PipelineEmbedder:
    """What every engine on the exported file shares: the ``tokenizers`` tokenizer, the padded feeds, the
    pooling in numpy. A subclass runs the transformer (:meth:`token_embeddings`)."""

    backend = ""
    input_names: list[str]
    width_step = 1  # a batch's width is rounded up to a multiple of this (:func:`padded_width`)

    def __init__(self, pipeline: Pipeline, model_id: str, precision: str) -> None:
        self.model_id = model_id
        self.device = "cpu"
        self.precision = precision
        self.precision_note = f"{self.backend} {precision}"
        self.pipeline = pipeline
        self.max_tokens = pipeline.max_tokens
        tokenizers = load_tokenizers(pipeline)
        self.tokenizer = tokenizers.model
        self.spans_tokenizer = tokenizers.spans
        self.pad_id = tokenizers.pad_id
        self.special_tokens = len(self.spans_tokenizer.encode("", add_special_tokens=True).ids)
        self.dim = 0  # the subclass reads it from its model

    def tokenize(self, texts: list[str]) -> Tokenized:
        if not texts:
            return Tokenized([], [])
        encodings = self.tokenizer.encode_batch(self.pipeline.cased(texts), add_special_tokens=True)
        return Tokenized([e.ids for e in encodings], [i for i, e in enumerate(encodings) if e.overflowing])

    def encode_ids(self, ids: list[list[int]]) -> np.ndarray:
        return self.encode_with(ids, self.token_embeddings)

    def encode_with(self, ids: list[list[int]],
                    run: Callable[[dict[str, np.ndarray]], np.ndarray]) -> np.ndarray:
        """``ids`` padded into feeds, ``run`` for their token embeddings, then pooled."""
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        width = padded_width(max(len(seq) for seq in ids), self.width_step, self.max_tokens)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        tokens = run({k: v for k, v in feeds.items() if k in self.input_names})
        return pool(tokens, mask, self.pipeline.pooling)

    def token_embeddings(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        encoding = self.spans_tokenizer.encode(self.pipeline.cased([text])[0], add_special_tokens=False)
        return [(int(start), int(end)) for start, end in encoding.offsets]


class OnnxEmbedder(PipelineEmbedder):
    """A sentence-transformers model's transformer on ONNX Runtime's CPU provider; pooling in numpy."""

    backend = "onnx"

    def __init__(self, pipeline: Pipeline, model_file: Path, model_id: str, threads: int = 1,
                 precision: str = "fp32") -> None:
        import onnxruntime as ort

        super().__init__(pipeline, model_id, precision)
        self.session = ort.InferenceSession(str(model_file), sess_options=session_options(threads),
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    def token_embeddings(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feeds)[0]


def pool(tokens: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """sentence-transformers' Pooling in numpy: token embeddings [batch, width, dim] to [batch, dim]."""
    if mode == "cls":
        return np.ascontiguousarray(tokens[:, 0], dtype=np.float32)
    weights = mask[:, :, None].astype(np.float32)
    if mode == "max":
        masked = np.where(weights > 0, tokens, np.float32(-1e9))
        return masked.max(axis=1).astype(np.float32)
    summed = (tokens * weights).sum(axis=1)
    return (summed / np.maximum(weights.sum(axis=1), 1e-9)).astype(np.float32)
