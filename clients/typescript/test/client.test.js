// The client's rules against a scripted HTTP server on a real socket: retries, error kinds, splitting.
// (The same calls against the real cluster are in cluster.test.js.)
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, beforeEach, describe, it } from "node:test";

import { EmbedClusterClient, EmbedError, PythonSidecarClient } from "../dist/index.js";
import { freePort } from "./helpers.js";

const requests = [];
let script = []; // per path: functions (request, body) -> [status, headers, body]; the last one repeats
let server;
let baseUrl;

function reply(res, [status, headers, body]) {
  res.writeHead(status, { "Content-Type": "application/json", ...headers });
  res.end(typeof body === "string" ? body : JSON.stringify(body));
}

const info = (limits) => [200, {}, { model: "m", dim: 2, limits }];
/** /embed answers: a vector [i, length of text] per text, so order and splitting show in the result. */
const echo = (req, body) => [200, {}, { vectors: JSON.parse(body).texts.map((t) => [Number.parseInt(t.split("-")[1] ?? "0", 10), t.length]) }];

before(async () => {
  server = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      requests.push({ method: req.method, url: req.url, headers: req.headers, body, at: Date.now() });
      const path = req.url.split("?")[0];
      const handlers = script[path] ?? [() => [404, {}, { error: { code: "NOT_FOUND", message: "no route" } }]];
      const handler = handlers.length > 1 ? handlers.shift() : handlers[0];
      const answer = handler(req, body);
      if (answer === "hang") return; // never answer
      reply(res, answer);
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  baseUrl = `http://127.0.0.1:${server.address().port}`;
});

after(() => new Promise((r) => { server.closeAllConnections(); server.close(r); }));

beforeEach(() => {
  requests.length = 0;
  script = {};
});

const client = (config = {}) => new EmbedClusterClient({ baseUrl, retryDelay: 50, ...config });

describe("EmbedClusterClient", () => {
  it("takes the seed's defaults and name", () => {
    const c = new PythonSidecarClient();
    assert.equal(c.baseUrl, "http://127.0.0.1:8421");
    assert.deepEqual([c.timeout, c.retryAttempts, c.retryDelay], [30000, 2, 1000]);
    assert.equal(new PythonSidecarClient({ port: 9000 }).baseUrl, "http://127.0.0.1:9000");
    assert.equal(PythonSidecarClient, EmbedClusterClient);
  });

  it("retries a 5xx and honours Retry-After", async () => {
    script = {
      "/info": [() => info({ max_texts: 100, max_body_bytes: 1 << 20 })],
      "/embed": [() => [503, { "Retry-After": "1" }, { error: { code: "OVERLOADED", message: "full" } }], echo],
    };
    const vectors = await client().embedBatch(["a-1", "b-2"]);
    assert.deepEqual(vectors, [[1, 3], [2, 3]]);
    const embeds = requests.filter((r) => r.url === "/embed");
    assert.equal(embeds.length, 2);
    assert.ok(embeds[1].at - embeds[0].at >= 950, `waited ${embeds[1].at - embeds[0].at} ms, not Retry-After's 1 s`);
  });

  it("gives up after retryAttempts with HTTP_ERROR, status and code", async () => {
    script = { "/info": [() => [500, {}, { error: { code: "INTERNAL", message: "boom" } }]] };
    await assert.rejects(client({ retryAttempts: 2 }).info(), (error) => {
      assert.ok(error instanceof EmbedError);
      assert.deepEqual([error.kind, error.status, error.code], ["HTTP_ERROR", 500, "INTERNAL"]);
      return true;
    });
    assert.equal(requests.length, 3);
  });

  it("never retries a 4xx, and keeps the server's error details", async () => {
    script = {
      "/info": [() => info({ max_texts: 100, max_body_bytes: 1 << 20 })],
      "/embed": [() => [422, {}, { error: { code: "INPUT_TOO_LONG", message: "too long", indices: [1], max_tokens: 256 } }]],
    };
    await assert.rejects(client().embedBatch(["a", "b"]), (error) => {
      assert.deepEqual([error.kind, error.status, error.code], ["HTTP_ERROR", 422, "INPUT_TOO_LONG"]);
      assert.deepEqual(error.details.indices, [1]);
      assert.equal(error.retryable, false);
      return true;
    });
    assert.equal(requests.filter((r) => r.url === "/embed").length, 1);
  });

  it("says PARSE_ERROR for a 200 that is not JSON or lacks vectors, without retrying", async () => {
    script = { "/info": [() => [200, {}, "<html>"]] };
    await assert.rejects(client().info(), { kind: "PARSE_ERROR" });
    assert.equal(requests.length, 1);
    script = { "/info": [() => info({ max_texts: 10, max_body_bytes: 1000 })], "/embed": [() => [200, {}, { vectors: [[1]] }]] };
    await assert.rejects(client().embedBatch(["a", "b"]), { kind: "PARSE_ERROR" });
  });

  it("says TIMEOUT when the server does not answer in time, after its retries", async () => {
    script = { "/info": [() => "hang"] };
    const started = Date.now();
    await assert.rejects(client({ timeout: 200, retryAttempts: 1 }).info(), { kind: "TIMEOUT" });
    assert.equal(requests.length, 2);
    assert.ok(Date.now() - started < 5000);
  });

  it("says NETWORK_ERROR when nothing listens, and checkHealth() is false", async () => {
    const c = new EmbedClusterClient({ port: await freePort(), retryAttempts: 1, retryDelay: 10 });
    await assert.rejects(c.info(), (error) => error.kind === "NETWORK_ERROR" && /ECONNREFUSED/.test(error.message));
    assert.equal(await c.checkHealth(), false);
  });

  it("checkHealth() is true only for a 200 with status ok", async () => {
    script = { "/health": [() => [503, {}, { status: "starting" }], () => [200, {}, { status: "ok" }]] };
    assert.equal(await client().checkHealth(), false);
    assert.equal(await client().checkHealth(), true);
    assert.deepEqual(await client().health(), { status: "ok" });
  });

  it("splits within /info's max_texts and body limit and reassembles in order", async () => {
    script = { "/info": [() => info({ max_texts: 3, max_body_bytes: 400 })], "/embed": [echo] };
    const texts = Array.from({ length: 10 }, (_, i) => `t-${i}${"x".repeat(i === 6 ? 60 : 0)}`);
    const c = client({ apiKey: "secret" });
    const vectors = await c.embedBatch(texts, false);
    assert.deepEqual(vectors.map((v) => v[0]), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const bodies = requests.filter((r) => r.url === "/embed").map((r) => JSON.parse(r.body));
    assert.ok(bodies.every((b) => b.texts.length <= 3 && b.normalize === false));
    assert.ok(requests.filter((r) => r.url === "/embed").every((r) => Buffer.byteLength(r.body) <= 400 || JSON.parse(r.body).texts.length === 1));
    assert.deepEqual(bodies.flatMap((b) => b.texts), texts);
    assert.deepEqual(bodies.map((b) => b.texts.length), [3, 3, 1, 3], "the long text goes alone: the body limit");
    assert.ok(requests.every((r) => r.headers.authorization === "Bearer secret"));
    await c.embedBatch(["t-1"]);
    assert.equal(requests.filter((r) => r.url === "/info").length, 1, "/info is read once");
    assert.deepEqual(await client().embedBatch([]), []);
  });

  it("embedChunks keeps `index` pointing into the texts given, across requests", async () => {
    script = {
      "/info": [() => info({ max_texts: 2, max_body_bytes: 1 << 20 })],
      "/embed/chunks": [(req, body) => {
        const { texts, chunk_tokens } = JSON.parse(body);
        assert.equal(chunk_tokens, 16);
        const chunks = texts.flatMap((text, index) => [{ index, text, start: 0, end: text.length }, { index, text: "", start: 0, end: 0 }]);
        return [200, {}, { chunks, vectors: chunks.map((c) => [c.index]) }];
      }],
    };
    const result = await client().embedChunks(["a", "b", "c"], { chunkTokens: 16, model: "e5", inputType: "document" });
    assert.ok(requests.filter((r) => r.url === "/embed/chunks").every((r) => {
      const sent = JSON.parse(r.body);
      return sent.model === "e5" && sent.input_type === "document";
    }));
    assert.deepEqual(result.chunks.map((c) => c.index), [0, 0, 1, 1, 2, 2]);
    assert.deepEqual(result.chunks.filter((c) => c.text).map((c) => c.text), ["a", "b", "c"]);
  });

  it("embedPdf sends the bytes as application/pdf with the options in the query", async () => {
    script = { "/embed/pdf": [(req, body) => [200, {}, { pages: 1, text_layer: true, pages_without_text: [], chunks: [{ page: 1, text: body, start: 0, end: 4 }], vectors: [[1]] }]] };
    const result = await client().embedPdf(new TextEncoder().encode("%PDF"), { chunkTokens: 64, overlapTokens: 8, normalize: false });
    assert.equal(result.chunks[0].text, "%PDF");
    assert.equal(requests[0].url, "/embed/pdf?chunk_tokens=64&overlap_tokens=8&normalize=false");
    assert.equal(requests[0].headers["content-type"], "application/pdf");
  });
  it("embedBatch sends the model and prompt options given, and the seed's request without them", async () => {
    script = { "/info": [() => info({ max_texts: 10, max_body_bytes: 1 << 20 })], "/embed": [echo] };
    await client().embedBatch(["a-1"], true, { model: "e5", inputType: "query" });
    await client().embedBatch(["a-1"]);
    const bodies = requests.filter((r) => r.url === "/embed").map((r) => JSON.parse(r.body));
    assert.deepEqual(bodies, [{ texts: ["a-1"], normalize: true, model: "e5", input_type: "query" },
      { texts: ["a-1"], normalize: true }]);
  });

  it("a split rerank is ranked again as one, and retried as embed is", async () => {
    const score = (t) => t.length;
    let failed = false;
    script = {
      "/info": [() => info({ max_texts: 3, max_body_bytes: 1 << 20 })],
      "/rerank": [(req, body) => {
        if (!failed) {
          failed = true;
          return [503, { "Retry-After": "0" }, { error: { code: "NO_WORKERS", message: "later" } }];
        }
        const { texts, model } = JSON.parse(body);
        assert.equal(model, "reranker");
        const order = texts.map((_, i) => i).sort((a, b) => score(texts[b]) - score(texts[a]));
        return [200, {}, order.map((i) => ({ index: i, score: score(texts[i]) }))];
      }],
    };
    const texts = ["a", "bbbb", "cc", "ddddd", "e", "ffffff", "gg"];
    const ranked = await client().rerank("q", texts, { model: "reranker", topN: 4 });
    assert.deepEqual(ranked.map((r) => r.index), [5, 3, 1, 2]);
    assert.equal(requests.filter((r) => r.url === "/rerank").length, 4, "three requests, the first tried twice");
  });

  it("tokenize keeps the indices of a split list and names the model's window", async () => {
    script = {
      "/info": [() => info({ max_texts: 2, max_body_bytes: 1 << 20 })],
      "/tokenize": [(req, body) => {
        const counts = JSON.parse(body).texts.map((t) => t.length);
        return [200, {}, { model: "m", max_tokens: 3, counts, truncated: counts.flatMap((c, i) => (c > 3 ? [i] : [])) }];
      }],
    };
    const result = await client().tokenize(["a", "bbbb", "cc", "ddddd", "e"], { promptName: "query" });
    assert.deepEqual(result.counts, [1, 4, 2, 5, 1]);
    assert.deepEqual(result.truncated, [1, 3]);
    assert.equal(result.max_tokens, 3);
    assert.ok(requests.filter((r) => r.url === "/tokenize").every((r) => JSON.parse(r.body).prompt_name === "query"));
  });

  it("an unknown model is a 404 HTTP_ERROR, not retried", async () => {
    script = { "/info": [() => info({ max_texts: 2, max_body_bytes: 1 << 20 })],
      "/rerank": [() => [404, {}, { error: { code: "MODEL_NOT_FOUND", message: "no" } }]] };
    await assert.rejects(client().rerank("q", ["a"], { model: "nope" }),
      (error) => error instanceof EmbedError && error.code === "MODEL_NOT_FOUND" && error.status === 404);
    assert.equal(requests.filter((r) => r.url === "/rerank").length, 1);
  });
});
