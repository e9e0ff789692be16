/**
 * The two error types of the package, with the seed's kinds and codes.
 *
 * - {@link EmbedError}: a request to the cluster failed (`NETWORK_ERROR`, `TIMEOUT`, `HTTP_ERROR`, `PARSE_ERROR`).
 * - {@link SidecarError}: the cluster could not be started (the seed's `PYTHON_NOT_FOUND`, `PYTHON_DEPS_MISSING`,
 *   `PYTHON_VERSION_INCOMPATIBLE`, `SIDECAR_START_FAILED`, or the cluster's own start-up code such as
 *   `PORT_IN_USE`, `MODEL_UNAVAILABLE`, `DEVICE_UNAVAILABLE`, `KEYS_INVALID`).
 */

export type EmbedErrorKind = "NETWORK_ERROR" | "TIMEOUT" | "HTTP_ERROR" | "PARSE_ERROR";

export interface EmbedErrorOptions {
  /** HTTP status, for `HTTP_ERROR`. */
  status?: number;
  /** The server's error code (`BAD_REQUEST`, `OVERLOADED`, ...), for `HTTP_ERROR`. */
  code?: string;
  /** Seconds the server asked to wait (`Retry-After`). */
  retryAfter?: number;
  /** The server's whole `error` object (e.g. `indices` and `max_tokens` for `INPUT_TOO_LONG`). */
  details?: Record<string, unknown>;
  cause?: unknown;
}

export class EmbedError extends Error {
  readonly kind: EmbedErrorKind;
  readonly status: number | undefined;
  readonly code: string | undefined;
  readonly retryAfter: number | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(kind: EmbedErrorKind, message: string, options: EmbedErrorOptions = {}) {
    super(`${kind}: ${message}`, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "EmbedError";
    this.kind = kind;
    this.status = options.status;
    this.code = options.code;
    this.retryAfter = options.retryAfter;
    this.details = options.details;
  }

  /** The seed's rule: network errors, timeouts and 5xx are worth another try; 4xx and parse errors never. */
  get retryable(): boolean {
    return this.kind === "NETWORK_ERROR" || this.kind === "TIMEOUT"
      || (this.kind === "HTTP_ERROR" && (this.status ?? 0) >= 500);
  }
}

/** The seed's start-up codes; the cluster's own codes (`PORT_IN_USE`, ...) come through as they are. */
export type SidecarErrorCode =
  | "PYTHON_NOT_FOUND"
  | "PYTHON_DEPS_MISSING"
  | "PYTHON_VERSION_INCOMPATIBLE"
  | "SIDECAR_START_FAILED"
  | "PORT_IN_USE"
  | "MODEL_UNAVAILABLE"
  | "DEVICE_UNAVAILABLE"
  | "KEYS_INVALID"
  | (string & {});

export interface SidecarErrorOptions {
  /** The command that fixes it, when the cluster's doctor gives one. */
  fix?: string;
  /** Which part failed (`front`, `broker`, `worker`, `doctor`, ...), when known. */
  part?: string;
  cause?: unknown;
}

export class SidecarError extends Error {
  readonly code: SidecarErrorCode;
  /** The cluster's one-line reason (also the message, after the code). */
  readonly reason: string;
  readonly fix: string | undefined;
  readonly part: string | undefined;

  constructor(code: SidecarErrorCode, reason: string, options: SidecarErrorOptions = {}) {
    super(`${code}: ${reason}`, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "SidecarError";
    this.code = code;
    this.reason = reason;
    this.fix = options.fix;
    this.part = options.part;
  }
}
