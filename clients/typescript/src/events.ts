/**
 * PROGRESS events: what `embed-cluster up` prints on stdout, one per line,
 * `PROGRESS:{"type": ..., "data": {...}}` (README, "PROGRESS events"), typed as a discriminated union on `type`.
 *
 * An event this package does not know (a newer cluster's) arrives as {@link UnknownProgressEvent}, with
 * `type: "unknown"` and the original name in `event`, so that new events never break the parser or an
 * exhaustive `switch`.
 */

import { isObject } from "./json.js";

interface Event<T extends string, D> {
  type: T;
  data: D;
}

// The seed's events, once for the cluster.
export type ModelCachedEvent = Event<"model_cached", { model: string }>;
export type DownloadStartedEvent = Event<"download_started", { model: string }>;
export type DownloadProgressEvent = Event<"download_progress", {
  model: string;
  file: string;
  files_done: number;
  files_total: number;
  bytes_done: number;
  bytes_total: number;
}>;
/** The first worker can serve and the front listens: the cluster is ready. */
export type ModelLoadedEvent = Event<"model_loaded", { model: string; dimensions: number }>;

// The parts' own events.
export type BrokerListeningEvent = Event<"broker_listening", { clients?: string; workers?: string; lan?: string }>;
export type FrontListeningEvent = Event<"front_listening", { host: string; port: number; url: string;
  status_url?: string }>;
export type WorkerStartedEvent = Event<"worker_started", { worker: string; pid: number; device: string }>;
export type WorkerLoadedEvent = Event<"worker_loaded", {
  worker: string;
  model: string;
  dimensions: number;
  device: string;
  precision: string;
  /** "onnx" (ONNX Runtime, the CPU default) or "torch" */
  backend?: string;
  compute_threads?: number;
  seconds: number;
}>;
export type WorkerReadyEvent = Event<"worker_ready", { worker: string; pid: number; device: string; precision: string }>;
export type WorkerExitedEvent = Event<"worker_exited", {
  worker: string;
  pid?: number;
  code: number | null;
  /** Seconds until the supervisor starts it again; null when it will not. */
  restart_in?: number | null;
}>;
export type WorkerRestartedEvent = Event<"worker_restarted", { worker: string; pid: number; device: string; restarts: number }>;
export type WorkerFailedEvent = Event<"worker_failed", {
  worker: string;
  reason: string;
  error?: string;
  failures?: number;
  retry_in?: number;
}>;
export type WorkerRefusedEvent = Event<"worker_refused", { worker: string; code?: string; message?: string }>;
export type WorkerReconnectedEvent = Event<"worker_reconnected", { worker: string; pid?: number; device?: string; precision?: string }>;
export type WorkerDisconnectedEvent = Event<"worker_disconnected", { worker: string }>;
/** A first start that prepares the model (e.g. exports it for another runtime) before loading it. */
export type ModelPreparingEvent = Event<"model_preparing", { model: string; step: string; [key: string]: unknown }>;
/** That preparation is done (once: later starts reuse it); `cosine` is its check against the reference. */
export type ModelPreparedEvent = Event<"model_prepared", {
  model: string;
  step: string;
  seconds: number;
  cosine?: number;
  [key: string]: unknown;
}>;
/** The front to the supervisor: it sees a ready worker (`up` waits for it before `model_loaded`, and does not
 * relay it; a `front` started alone prints it). */
export type FrontReadyEvent = Event<"front_ready", Record<string, never>>;
/** A model the default backend cannot take serves on torch instead; `reason` says why. */
export type BackendFallbackEvent = Event<"backend_fallback", { model: string; backend: string; reason: string;
  [key: string]: unknown }>;
export type ShutdownStartedEvent = Event<"shutdown_started", Record<string, never>>;
export type ShutdownCompleteEvent = Event<"shutdown_complete", Record<string, never>>;
/**
 * `embed-cluster up` could not start: printed once, then it exits with code 1. `code` is one of doctor's
 * (`PORT_IN_USE`, `MODEL_UNAVAILABLE`, `DEVICE_UNAVAILABLE`, `KEYS_INVALID`).
 */
export type StartupFailedEvent = Event<"startup_failed", { code: string; reason: string; part: string }>;

/** Every event `embed-cluster up` prints, as this package knows them. */
export type ClusterEvent =
  | ModelCachedEvent
  | DownloadStartedEvent
  | DownloadProgressEvent
  | ModelLoadedEvent
  | BrokerListeningEvent
  | FrontListeningEvent
  | WorkerStartedEvent
  | WorkerLoadedEvent
  | WorkerReadyEvent
  | WorkerExitedEvent
  | WorkerRestartedEvent
  | WorkerFailedEvent
  | WorkerRefusedEvent
  | WorkerReconnectedEvent
  | WorkerDisconnectedEvent
  | ModelPreparingEvent
  | ModelPreparedEvent
  | BackendFallbackEvent
  | FrontReadyEvent
  | ShutdownStartedEvent
  | ShutdownCompleteEvent
  | StartupFailedEvent;

/** A well-formed PROGRESS line whose type this package does not know. */
export interface UnknownProgressEvent {
  type: "unknown";
  /** The type the cluster gave. */
  event: string;
  data: Record<string, unknown>;
}

// The service's own events, about the cluster process as a whole (not printed by the cluster).
/** The cluster process exited while it was not being stopped. */
export type SidecarExitedEvent = Event<"sidecar_exited", {
  pid: number;
  code: number | null;
  signal: string | null;
  /** Milliseconds until the service starts it again; null when it will not (autoRestart off, or given up). */
  restart_in: number | null;
  restarts: number;
}>;
/** A restart after a crash is ready (model loaded, /health 200). */
export type SidecarRestartedEvent = Event<"sidecar_restarted", { pid: number; restarts: number }>;
/** A restart after a crash failed; another follows after `restart_in` ms unless it is null (given up). */
export type SidecarRestartFailedEvent = Event<"sidecar_restart_failed", {
  code: string;
  reason: string;
  restart_in: number | null;
  restarts: number;
}>;
export type SidecarEvent = SidecarExitedEvent | SidecarRestartedEvent | SidecarRestartFailedEvent;

/** What `onProgress` receives. */
export type ProgressEvent = ClusterEvent | SidecarEvent | UnknownProgressEvent;

export const PROGRESS_PREFIX = "PROGRESS:";

const CLUSTER_EVENT_TYPES: ReadonlySet<string> = new Set<ClusterEvent["type"]>([
  "model_cached", "download_started", "download_progress", "model_loaded", "broker_listening", "front_listening",
  "worker_started", "worker_loaded", "worker_ready", "worker_exited", "worker_restarted", "worker_failed",
  "worker_refused", "worker_reconnected", "worker_disconnected", "model_preparing", "model_prepared",
  "backend_fallback", "front_ready", "shutdown_started",
  "shutdown_complete", "startup_failed",
]);


/**
 * The event on one stdout line (without its newline), or null when the line is not a well-formed PROGRESS
 * event. As the cluster's own reader does, a missing or non-object `data` reads as `{}`.
 */
export function parseProgressLine(line: string): ClusterEvent | UnknownProgressEvent | null {
  const text = line.endsWith("\r") ? line.slice(0, -1) : line;
  if (!text.startsWith(PROGRESS_PREFIX)) {
    return null;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text.slice(PROGRESS_PREFIX.length));
  } catch {
    return null;
  }
  if (!isObject(parsed) || typeof parsed.type !== "string") {
    return null;
  }
  const data = isObject(parsed.data) ? parsed.data : {};
  if (CLUSTER_EVENT_TYPES.has(parsed.type)) {
    return { type: parsed.type, data } as ClusterEvent;
  }
  return { type: "unknown", event: parsed.type, data };
}

/**
 * Splits a stream's chunks into lines: a line that arrives in two chunks (or a chunk that holds several) is
 * joined and split here, and a multi-byte character cut between chunks is decoded whole.
 */
export class LineReader {
  private buffer = "";
  private readonly decoder = new TextDecoder("utf-8");

  constructor(private readonly onLine: (line: string) => void) {}

  push(chunk: Uint8Array | string): void {
    this.buffer += typeof chunk === "string" ? chunk : this.decoder.decode(chunk, { stream: true });
    let newline = this.buffer.indexOf("\n");
    while (newline >= 0) {
      const line = this.buffer.slice(0, newline);
      this.buffer = this.buffer.slice(newline + 1);
      this.onLine(line);
      newline = this.buffer.indexOf("\n");
    }
  }

  /** The stream ended: a last line without a newline still counts. */
  end(): void {
    this.buffer += this.decoder.decode();
    if (this.buffer) {
      const line = this.buffer;
      this.buffer = "";
      this.onLine(line);
    }
  }
}
