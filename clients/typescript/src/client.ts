/**
 * `EmbedClusterClient`: the seed's `PythonSidecarClient` for embed-cluster, with the Python client's
 * semantics (`embed_client/client.py`):
 *
 * - network errors, timeouts and 5xx are retried `retryAttempts` times, `retryDelay` ms apart (longer when the
 *   server sends `Retry-After`); 4xx never is;
 * - every failure is an {@link EmbedError} whose `kind` is `NETWORK_ERROR`, `TIMEOUT`, `HTTP_ERROR` or
 *   `PARSE_ERROR`;
 * - large inputs are split into requests within the server's limits (read once from `/info`) and reassembled
 *   in input order (a split `rerank` is ranked again as one);
 * - `model` names one of the cluster's models (alias, id or short name; unset: the default), and the prompt
 *   options pick the model's prompt as sentence-transformers does.
 *
 * Node.js 18+ built-ins only (`fetch`).
 */

import { EmbedError } from "./errors.js";
import { isObject } from "./json.js";

export interface EmbedClusterClientConfig {
  /** Default: `http://127.0.0.1:${port}`. */
  baseUrl?: string;
  /** Default: 8421. */
  port?: number;
  /** Milliseconds one request may take, body included. Default: 30000. */
  timeout?: number;
  /** Further tries after a retryable failure. Default: 2. */
  retryAttempts?: number;
  /** Milliseconds between tries (at least; `Retry-After` can make it longer). Default: 1000. */
  retryDelay?: number;
  /** Sent as `Authorization: Bearer <apiKey>`; needed when the cluster has `EMBED_API_KEY`. */
  apiKey?: string;
  /** Texts per request at most, below the server's own `max_texts`. Default: 256. */
  maxTexts?: number;
}

export interface WorkerInfo {
  id: string;
  state: string;
  device: string;
  precision?: string;
  host?: string;
  pid?: number;
  remote?: boolean;
  [key: string]: unknown;
}

export interface HealthResponse {
  /** `ok`, or (with HTTP 503) `starting`, `no_workers`, `broker_unreachable`, `shutting_down`. */
  status: string;
  model?: string;
  model_id?: string;
  dim?: number;
  device?: string;
  workers?: WorkerInfo[];
  workers_down?: Record<string, unknown>[];
  [key: string]: unknown;
}

export interface InfoLimits {
  max_body_bytes: number;
  max_texts: number;
  max_text_chars: number;
  request_timeout?: number;
  max_queue_texts?: number;
  [key: string]: unknown;
}

export interface InfoResponse {
  model_id: string;
  model: string;
  dim: number;
  device: string;
  max_tokens?: number;
  version?: string;
  precision?: string[];
  limits: InfoLimits;
  workers?: WorkerInfo[];
  [key: string]: unknown;
}

export interface ChunkOptions {
  /** Tokens a chunk holds at most (default and cap: the model's limit less its special tokens). */
  chunkTokens?: number;
  /** Tokens a chunk may repeat from the one before (default: chunkTokens / 8). */
  overlapTokens?: number;
  /** L2-normalize the vectors. Default: true. */
  normalize?: boolean;
}

/** Which model, and which of its prompts (the server picks as sentence-transformers' `encode` does). */
export interface EmbedOptions {
  /** A model's alias, id or short name (`/info`'s `models`). Default: the first embedding model. */
  model?: string;
  /** One of the model's `prompts` (`/info`: `models[].prompts`). */
  promptName?: string;
  /** Text put before each input (wins over `promptName`). */
  prompt?: string;
  /** `query` or `document`: the model's prompt of that name, where it has one. */
  inputType?: string;
}

export interface RerankOptions {
  /** A reranker's alias, id or short name. Default: the first reranker. */
  model?: string;
  /** The best `topN` only. Default: all. */
  topN?: number;
  /** The model's logits, without its activation. Default: false. */
  rawScores?: boolean;
  /** Each result carries its text. Default: false. */
  returnText?: boolean;
}

export interface RankedText {
  /** The index in the `texts` you gave. */
  index: number;
  score: number;
  text?: string;
}

export interface TokenizeOptions extends EmbedOptions {
  /** The ids the model is fed too. Default: false. */
  returnIds?: boolean;
}

export interface TokenizeResult {
  model: string | null;
  /** The model's window: a longer text is cut there. */
  max_tokens: number | null;
  /** Each text's tokens, its prompt's and the special tokens included, none cut. */
  counts: number[];
  /** Indices of texts over the window. */
  truncated: number[];
  ids?: number[][];
}

export interface TextChunk {
  /** The index in the `texts` you gave of the text this chunk comes from. */
  index: number;
  text: string;
  start: number;
  end: number;
}

export interface ChunksResult {
  chunks: TextChunk[];
  vectors: number[][];
}

export interface PdfChunk {
  /** From 1. */
  page: number;
  text: string;
  /** Offsets in that page's extracted text. */
  start: number;
  end: number;
}

export interface PdfResult {
  pages: number;
  text_layer: boolean;
  pages_without_text: number[];
  chunks: PdfChunk[];
  vectors: number[][];
}

const DEFAULT_PORT = 8421;
const DEFAULT_MAX_TEXTS = 256; // texts per request when the server does not say; small requests keep latency low
const BODY_HEADROOM = 0.8; // fill request bodies to this fraction of the server's limit
const ENVELOPE_BYTES = 256; // the body around the texts: {"texts": [...], "normalize": ..., chunk options}
const MAX_RETRY_AFTER_MS = 30_000;

interface Limits {
  maxTexts: number;
  maxBodyBytes: number;
}

interface CallOptions {
  okStatuses?: readonly number[];
  contentType?: string;
  retries?: number;
}

const encoder = new TextEncoder();

export class EmbedClusterClient {
  readonly baseUrl: string;
  readonly timeout: number;
  readonly retryAttempts: number;
  readonly retryDelay: number;
  readonly apiKey: string | undefined;
  readonly maxTexts: number;
  private limitsPromise: Promise<Limits> | undefined;

  constructor(config: EmbedClusterClientConfig = {}) {
    this.baseUrl = (config.baseUrl ?? `http://127.0.0.1:${config.port ?? DEFAULT_PORT}`).replace(/\/+$/, "");
    this.timeout = config.timeout ?? 30_000;
    this.retryAttempts = config.retryAttempts ?? 2;
    this.retryDelay = config.retryDelay ?? 1000;
    this.apiKey = config.apiKey;
    this.maxTexts = config.maxTexts ?? DEFAULT_MAX_TEXTS;
  }

  // -- endpoints ------------------------------------------------------------------------------------------

  /** The `/health` body; a 503 (starting, no workers) is an answer here, not an error. */
  async health(): Promise<HealthResponse> {
    return (await this.call("GET", "/health", undefined, { okStatuses: [200, 503] })) as HealthResponse;
  }

  /**
   * True when a worker can serve (`/health` is 200 with status `ok`); false, never a throw, otherwise. One
   * try, no retries: it answers at once when nothing listens, so an app can poll it.
   */
  async checkHealth(): Promise<boolean> {
    try {
      const body = (await this.call("GET", "/health", undefined, { okStatuses: [200, 503], retries: 0 })) as
        HealthResponse | null;
      return body?.status === "ok";
    } catch {
      return false;
    }
  }

  async info(): Promise<InfoResponse> {
    return (await this.call("GET", "/info")) as InfoResponse;
  }

  /**
   * Vectors for `texts`, in input order; any number of texts (split within the server's limits). `options`:
   * the model and its prompt (unset: the seed's request).
   */
  async embedBatch(texts: string[], normalize = true, options: EmbedOptions = {}): Promise<number[][]> {
    const vectors: number[][] = [];
    for (const batch of await this.split(texts)) {
      const body = await this.call("POST", "/embed", { texts: batch, normalize, ...embedFields(options) });
      const got = isObject(body) ? body.vectors : undefined;
      if (!Array.isArray(got) || got.length !== batch.length) {
        throw new EmbedError("PARSE_ERROR", `expected ${batch.length} vectors, got ${describe(got)}`);
      }
      vectors.push(...(got as number[][]));
    }
    return vectors;
  }

  /** `/rerank`: `texts` by their score against `query`, best first, each with its index in `texts`. */
  async rerank(query: string, texts: string[], options: RerankOptions = {}): Promise<RankedText[]> {
    const fields = given({ model: options.model, raw_scores: options.rawScores ?? false,
      return_text: options.returnText ?? false });
    const ranked: RankedText[] = [];
    let offset = 0;
    for (const batch of await this.split(texts, encoder.encode(JSON.stringify(query)).length)) {
      const body = await this.call("POST", "/rerank", { query, texts: batch, ...fields });
      if (!Array.isArray(body) || body.length !== batch.length
        || !body.every((r) => isObject(r) && typeof r.index === "number" && typeof r.score === "number")) {
        throw new EmbedError("PARSE_ERROR", `expected ${batch.length} ranked texts, got ${describe(body)}`);
      }
      for (const r of body as RankedText[]) {
        ranked.push({ ...r, index: r.index + offset });
      }
      offset += batch.length;
    }
    ranked.sort((a, b) => b.score - a.score || a.index - b.index); // best first; equal scores in input order
    return options.topN === undefined ? ranked : ranked.slice(0, options.topN);
  }

  /** `/tokenize`: each text's token count as the model counts it, and the model's window. */
  async tokenize(texts: string[], options: TokenizeOptions = {}): Promise<TokenizeResult> {
    const fields = { ...embedFields(options), return_ids: options.returnIds ?? false };
    const result: TokenizeResult = { model: null, max_tokens: null, counts: [], truncated: [] };
    if (options.returnIds) {
      result.ids = [];
    }
    let offset = 0;
    const batches = await this.split(texts);
    for (const batch of batches.length ? batches : [[]]) {
      const body = await this.call("POST", "/tokenize", { texts: batch, ...fields });
      if (!isObject(body) || !Array.isArray(body.counts) || body.counts.length !== batch.length) {
        throw new EmbedError("PARSE_ERROR", `expected ${batch.length} token counts`);
      }
      result.model = typeof body.model === "string" ? body.model : null;
      result.max_tokens = typeof body.max_tokens === "number" ? body.max_tokens : null;
      result.counts.push(...(body.counts as number[]));
      result.truncated.push(...((Array.isArray(body.truncated) ? body.truncated : []) as number[]).map((i) => i + offset));
      if (result.ids && Array.isArray(body.ids)) {
        result.ids.push(...(body.ids as number[][]));
      }
      offset += batch.length;
    }
    return result;
  }

  /**
   * `/embed/chunks`: every text in chunks that fit the model, in requests within the server's limits;
   * each chunk's `index` points into the `texts` you gave. `options` may name the model and its prompt too.
   */
  async embedChunks(texts: string[], options: ChunkOptions & EmbedOptions = {}): Promise<ChunksResult> {
    const chunks: TextChunk[] = [];
    const vectors: number[][] = [];
    let offset = 0;
    for (const batch of await this.split(texts)) {
      const body = await this.call("POST", "/embed/chunks", { texts: batch, ...chunkOptions(options),
        ...embedFields(options) });
      const gotChunks = isObject(body) ? body.chunks : undefined;
      const gotVectors = isObject(body) ? body.vectors : undefined;
      if (!Array.isArray(gotChunks) || !Array.isArray(gotVectors) || gotChunks.length !== gotVectors.length) {
        throw new EmbedError("PARSE_ERROR", "expected as many chunks as vectors");
      }
      for (const chunk of gotChunks as TextChunk[]) {
        chunks.push({ ...chunk, index: chunk.index + offset });
      }
      vectors.push(...(gotVectors as number[][]));
      offset += batch.length;
    }
    return { chunks, vectors };
  }

  /** `/embed/pdf`: the PDF's text in chunks, with their pages and offsets, and their vectors. */
  async embedPdf(pdf: Uint8Array | ArrayBuffer, options: ChunkOptions = {}): Promise<PdfResult> {
    const query = new URLSearchParams(
      Object.entries(chunkOptions(options)).map(([key, value]): [string, string] => [key, String(value)]),
    ).toString();
    const bytes = pdf instanceof Uint8Array ? pdf : new Uint8Array(pdf);
    const body = await this.call("POST", `/embed/pdf?${query}`, bytes, { contentType: "application/pdf" });
    if (!isObject(body) || !Array.isArray(body.chunks) || !Array.isArray(body.vectors)
      || body.chunks.length !== body.vectors.length) {
      throw new EmbedError("PARSE_ERROR", "expected as many chunks as vectors");
    }
    return body as unknown as PdfResult;
  }

  // -- splitting ------------------------------------------------------------------------------------------

  private limits(): Promise<Limits> {
    if (this.limitsPromise === undefined) {
      this.limitsPromise = this.info().then((info) => {
        const limits: Partial<InfoLimits> = isObject(info) && isObject(info.limits) ? info.limits : {};
        return {
          maxTexts: Number(limits.max_texts) || DEFAULT_MAX_TEXTS,
          maxBodyBytes: Number(limits.max_body_bytes) || 1 << 20,
        };
      });
      this.limitsPromise.catch(() => {
        this.limitsPromise = undefined; // ask again next time
      });
    }
    return this.limitsPromise;
  }

  /** Consecutive runs of `texts` that each fit in one request: at most max_texts, the body within its limit. */
  private async split(texts: string[], extraBytes = 0): Promise<string[][]> {
    if (texts.length === 0) {
      return [];
    }
    const limits = await this.limits();
    const maxTexts = Math.min(limits.maxTexts, this.maxTexts);
    const budget = Math.floor(limits.maxBodyBytes * BODY_HEADROOM) - ENVELOPE_BYTES - extraBytes;
    const batches: string[][] = [];
    let current: string[] = [];
    let size = 0;
    for (const text of texts) {
      const cost = encoder.encode(JSON.stringify(text)).length + 2;
      if (current.length > 0 && (current.length >= maxTexts || size + cost > budget)) {
        batches.push(current);
        current = [];
        size = 0;
      }
      current.push(text);
      size += cost;
    }
    batches.push(current);
    return batches;
  }

  // -- transport ------------------------------------------------------------------------------------------

  private async call(method: string, path: string, payload?: unknown, options: CallOptions = {}): Promise<unknown> {
    const retries = options.retries ?? this.retryAttempts;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.once(method, path, payload, options);
      } catch (error) {
        if (!(error instanceof EmbedError) || !error.retryable || attempt >= retries) {
          throw error;
        }
        const wait = Math.max(this.retryDelay, Math.min((error.retryAfter ?? 0) * 1000, MAX_RETRY_AFTER_MS));
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
    }
  }

  private async once(method: string, path: string, payload: unknown, options: CallOptions): Promise<unknown> {
    const okStatuses = options.okStatuses ?? [200];
    const headers: Record<string, string> = {};
    let body: Uint8Array | string | undefined;
    if (payload instanceof Uint8Array) {
      body = payload;
      headers["Content-Type"] = options.contentType ?? "application/octet-stream";
    } else if (payload !== undefined) {
      body = JSON.stringify(payload);
      headers["Content-Type"] = options.contentType ?? "application/json";
    }
    if (this.apiKey) {
      headers.Authorization = `Bearer ${this.apiKey}`;
    }
    const what = `${method} ${path.split("?")[0]}`;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.timeout);
    let status: number;
    let text: string;
    let retryAfter: number | undefined;
    try {
      const response = await fetch(this.baseUrl + path, { method, headers, body, signal: controller.signal });
      status = response.status;
      retryAfter = seconds(response.headers.get("Retry-After"));
      text = await response.text();
    } catch (error) {
      if (controller.signal.aborted) {
        throw new EmbedError("TIMEOUT", `${what} took longer than ${this.timeout} ms`, { cause: error });
      }
      throw new EmbedError("NETWORK_ERROR", `${what}: ${networkReason(error)}`, { cause: error });
    } finally {
      clearTimeout(timer);
    }
    let parsed: unknown;
    let isJson = true;
    try {
      parsed = JSON.parse(text);
    } catch (error) {
      if (okStatuses.includes(status)) {
        throw new EmbedError("PARSE_ERROR", `${what}: the response is not JSON`, { cause: error });
      }
      isJson = false;
    }
    if (okStatuses.includes(status)) {
      return parsed;
    }
    const error = isJson && isObject(parsed) && isObject(parsed.error) ? parsed.error : undefined;
    const code = typeof error?.code === "string" ? error.code : undefined;
    const message = typeof error?.message === "string" ? error.message : text.slice(0, 200);
    throw new EmbedError("HTTP_ERROR", `${what} -> ${status}: ${message}`, { status, code, retryAfter, details: error });
  }
}

function chunkOptions(options: ChunkOptions): Record<string, number | boolean> {
  const out: Record<string, number | boolean> = {};
  if (options.chunkTokens !== undefined) {
    out.chunk_tokens = options.chunkTokens;
  }
  if (options.overlapTokens !== undefined) {
    out.overlap_tokens = options.overlapTokens;
  }
  out.normalize = options.normalize ?? true;
  return out;
}


/** The fields given (undefined: the server's default). */
function given(fields: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined));
}

function embedFields(options: EmbedOptions): Record<string, unknown> {
  return given({ model: options.model, prompt_name: options.promptName, prompt: options.prompt,
    input_type: options.inputType });
}

function describe(value: unknown): string {
  return Array.isArray(value) ? `${value.length}` : value === null ? "null" : typeof value;
}

function seconds(value: string | null): number | undefined {
  if (value === null) {
    return undefined;
  }
  const parsed = Number(value);
  return Number.isFinite(parsed) && parsed >= 0 ? parsed : undefined;
}

/** fetch's TypeError says only "fetch failed"; the reason (ECONNREFUSED, ...) is in its cause. */
function networkReason(error: unknown): string {
  const cause = error instanceof Error ? error.cause : undefined;
  if (cause instanceof Error) {
    const code = (cause as NodeJS.ErrnoException).code;
    return code ? `${code} (${cause.message})` : cause.message;
  }
  return error instanceof Error ? error.message : String(error);
}
