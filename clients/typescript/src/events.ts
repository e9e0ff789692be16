/**
 * PROGRESS events: what `embed-cluster up` prints on stdout, one per line,
 * `PROGRESS:{"type": ..., "data": {...}}` (README, "PROGRESS events"), typed as a discriminated union on `type`.
 *
 * An event this package does not know (a newer cluster's) arrives as {@link UnknownProgressEvent}, with
 * `type: "unknown"` and the original name in `event`, so that new events never break the parser or an
 * exhaustive `switch`.
 */

import { isObject } from "./json.js";
import { CLUSTER_EVENT_TYPES, type ClusterEvent, type Event } from "./progress_events.js";

// The cluster's events: one type each, and their union ClusterEvent, generated from the cluster's one event table
// (embed_common/events.py) into progress_events.ts.
export * from "./progress_events.js";

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
