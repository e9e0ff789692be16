// Generated from embed_common/events.py by `python -m embed_common.events typescript`: do not edit.
// tests/unit/test_events.py fails when it is stale.

/** A PROGRESS event: its `type` and its `data`. */
export interface Event<T extends string, D> {
  type: T;
  data: D;
}

/** the first worker found the model on disk (bundled, local path or HF cache) */
export type ModelCachedEvent = Event<"model_cached", { model: string; alias?: string; worker?: string }>;

/** the first worker must download it */
export type DownloadStartedEvent = Event<"download_started", { model: string; alias?: string; worker?: string }>;

/** after each downloaded file */
export type DownloadProgressEvent = Event<"download_progress", {
  model: string;
  file: string;
  files_done: number;
  files_total: number;
  bytes_done: number;
  bytes_total: number;
  alias?: string;
  worker?: string;
}>;

/**
 * a worker of every model can serve and the front listens (it has seen them ready): the cluster is ready and
 * /health says ok from this line on. model is the default model; models lists every one where there are
 * several. A worker prints its own, with its other fields, which up relays as worker_loaded
 */
export type ModelLoadedEvent = Event<"model_loaded", {
  model: string;
  dimensions: number;
  models?: { alias: string, model: string, kind: string, dimensions: number }[];
  worker?: string;
  kind?: string;
  device?: string;
  precision?: string;
  backend?: string;
  cosine?: number | null;
  compute_threads?: number;
  seconds?: number;
}>;

/** the broker's sockets are bound */
export type BrokerListeningEvent = Event<"broker_listening", {
  clients?: string;
  workers?: string;
  lan?: string | null;
}>;

/** the front serves HTTP (status_url: the live status page) */
export type FrontListeningEvent = Event<"front_listening", {
  host: string;
  port: number;
  url: string;
  status_url?: string;
}>;

/**
 * the front sees a ready worker (up waits for it before model_loaded, and does not relay it; a front started
 * alone prints it)
 */
export type FrontReadyEvent = Event<"front_ready", Record<string, never>>;

/** up started a worker process */
export type WorkerStartedEvent = Event<"worker_started", { worker: string; pid: number; device: string }>;

/**
 * a worker loaded its model (kind: embed, or rerank for a cross-encoder; backend: the engine, docs/engine.md;
 * cosine: its fidelity check)
 */
export type WorkerLoadedEvent = Event<"worker_loaded", {
  worker: string;
  model: string;
  dimensions: number;
  device: string;
  precision: string;
  kind?: string;
  backend?: string;
  cosine?: number | null;
  compute_threads?: number;
  seconds: number;
}>;

/**
 * a first start prepares the model before loading it (step: onnx_export, the export for ONNX Runtime, once:
 * later starts reuse it)
 */
export type ModelPreparingEvent = Event<"model_preparing", {
  model: string;
  step: string;
  worker?: string;
  [key: string]: unknown;
}>;

/** that preparation is done; cosine is its check against the reference */
export type ModelPreparedEvent = Event<"model_prepared", {
  model: string;
  step: string;
  seconds: number;
  cosine?: number | null;
  worker?: string;
  [key: string]: unknown;
}>;

/**
 * engines that cannot take the model (dropped: the ONNX export fails) are left out of auto's candidates;
 * backend is the first that remains, reason says why
 */
export type BackendFallbackEvent = Event<"backend_fallback", {
  model: string;
  backend: string | null;
  reason: string;
  dropped?: string[];
  worker?: string;
  [key: string]: unknown;
}>;

/** a first start measures the candidate engines (engine/precision) the cache does not hold (docs/engine.md) */
export type EngineMeasuringEvent = Event<"engine_measuring", {
  model: string;
  candidates: string[];
  cached: string[];
  worker?: string;
}>;

/**
 * one candidate's figures: least cosine to fp32 sentence-transformers on the check set, a batch mix's
 * texts/s, a lone text's ms, its process's PSS; error when it could not run here
 */
export type EngineMeasuredEvent = Event<"engine_measured", {
  model: string;
  engine: string;
  precision: string;
  cosine: number;
  texts_per_s: number;
  lone_ms: number;
  memory_mb: number;
  error: string;
  worker?: string;
}>;

/**
 * every start: the engine and precision that serve, with their figures (measured: false when read from the
 * cache; forced: named by --backend and --precision)
 */
export type EngineChosenEvent = Event<"engine_chosen", {
  model: string;
  engine: string;
  precision: string;
  cosine?: number;
  texts_per_s?: number;
  lone_ms?: number;
  memory_mb?: number;
  forced: boolean;
  measured: boolean;
  seconds: number;
  min_cosine: number;
  rejected: { [name: string]: string };
  worker?: string;
}>;

/** a worker registered with the broker and serves */
export type WorkerReadyEvent = Event<"worker_ready", {
  worker: string;
  pid?: number;
  device?: string;
  precision?: string;
}>;

/** a worker registered again (the broker restarted, or it was presumed dead) */
export type WorkerReconnectedEvent = Event<"worker_reconnected", {
  worker: string;
  pid?: number;
  device?: string;
  precision?: string;
}>;

/** a worker lost the broker (no heartbeat within its liveness) and reconnects */
export type WorkerDisconnectedEvent = Event<"worker_disconnected", { worker: string }>;

/** the broker refused a worker (code: MODEL_MISMATCH: another model or dimension) */
export type WorkerRefusedEvent = Event<"worker_refused", { worker: string; code?: string; message?: string }>;

/**
 * a worker process exited (code: embed_common/exits.py; a negative one is the signal that killed it);
 * restart_in: seconds until up starts it again, null when it will not
 */
export type WorkerExitedEvent = Event<"worker_exited", {
  worker: string;
  pid?: number;
  code: number | null;
  restart_in?: number | null;
}>;

/** up started an exited worker again */
export type WorkerRestartedEvent = Event<"worker_restarted", {
  worker: string;
  pid: number;
  device: string;
  restarts: number;
}>;

/**
 * a worker cannot serve: its model did not load (error: MODEL_LOAD_FAILED), the broker refused it, or it
 * crashed failures times in a row (then up retries in retry_in seconds)
 */
export type WorkerFailedEvent = Event<"worker_failed", {
  worker: string;
  reason: string;
  error?: string;
  failures?: number;
  retry_in?: number;
}>;

/**
 * up could not start (code: one of doctor's, e.g. PORT_IN_USE, MODEL_UNAVAILABLE, DEVICE_UNAVAILABLE,
 * KEYS_INVALID): printed once, then it exits 1
 */
export type StartupFailedEvent = Event<"startup_failed", { code: string; reason: string; part: string }>;

/** up is stopping its parts */
export type ShutdownStartedEvent = Event<"shutdown_started", Record<string, never>>;

/** every part has stopped */
export type ShutdownCompleteEvent = Event<"shutdown_complete", Record<string, never>>;

/** Every event `embed-cluster up` prints, as this package knows them. */
export type ClusterEvent =
  | ModelCachedEvent
  | DownloadStartedEvent
  | DownloadProgressEvent
  | ModelLoadedEvent
  | BrokerListeningEvent
  | FrontListeningEvent
  | FrontReadyEvent
  | WorkerStartedEvent
  | WorkerLoadedEvent
  | ModelPreparingEvent
  | ModelPreparedEvent
  | BackendFallbackEvent
  | EngineMeasuringEvent
  | EngineMeasuredEvent
  | EngineChosenEvent
  | WorkerReadyEvent
  | WorkerReconnectedEvent
  | WorkerDisconnectedEvent
  | WorkerRefusedEvent
  | WorkerExitedEvent
  | WorkerRestartedEvent
  | WorkerFailedEvent
  | StartupFailedEvent
  | ShutdownStartedEvent
  | ShutdownCompleteEvent;

/** The type of every ClusterEvent. */
export const CLUSTER_EVENT_TYPES: ReadonlySet<string> = new Set<ClusterEvent["type"]>([
  "model_cached",
  "download_started",
  "download_progress",
  "model_loaded",
  "broker_listening",
  "front_listening",
  "front_ready",
  "worker_started",
  "worker_loaded",
  "model_preparing",
  "model_prepared",
  "backend_fallback",
  "engine_measuring",
  "engine_measured",
  "engine_chosen",
  "worker_ready",
  "worker_reconnected",
  "worker_disconnected",
  "worker_refused",
  "worker_exited",
  "worker_restarted",
  "worker_failed",
  "startup_failed",
  "shutdown_started",
  "shutdown_complete",
]);
