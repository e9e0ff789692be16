// The real path: EmbedClusterService runs the real `embed-cluster up` (the bundled model, real sockets), and
// EmbedClusterClient talks to it. One cluster for the whole file; the steps run in order.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { EmbedClusterService, EmbedError, PythonSidecarService } from "../dist/index.js";
import { clusterCommand, clusterEnv, descendants, freePort, isAlive, lightArgs, waitFor } from "./helpers.js";

const events = [];
let service;
let client;
let port;
let readyAtEvent;

async function metric(name, labels) {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && wanted.every((w) => l.includes(w)));
  return line ? Number(line.split(" ").at(-1)) : 0;
}

async function rawEmbed(texts, normalize) {
  const response = await fetch(`http://127.0.0.1:${port}/embed`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ texts, normalize }),
  });
  assert.equal(response.status, 200);
  return (await response.json()).vectors;
}

describe("the service and the client against a real cluster", { timeout: 360_000 }, () => {
  before(async () => {
    port = await freePort();
    service = new PythonSidecarService({
      command: clusterCommand(), port, args: lightArgs, env: clusterEnv, restartDelay: 500, startTimeout: 150_000,
      onProgress: (event) => events.push({ ...event, at: Date.now() }),
    });
    assert.ok(service instanceof EmbedClusterService);
    await service.startSidecar();
    readyAtEvent = events.length;
    client = service.client({ retryDelay: 300 });
  });

  after(async () => {
    await service?.stopSidecar();
  });

  it("startSidecar() resolved after model_loaded, with /health 200", async () => {
    const types = events.slice(0, readyAtEvent).map((e) => e.type);
    for (const type of ["model_cached", "front_listening", "worker_started", "worker_loaded", "worker_ready", "model_loaded"]) {
      assert.ok(types.includes(type), `${type} before ready; saw ${types.join(", ")}`);
    }
    const loaded = events.find((e) => e.type === "model_loaded");
    assert.deepEqual(loaded.data, { model: "all-MiniLM-L6-v2", dimensions: 384 });
    assert.equal(events.find((e) => e.type === "front_listening").data.port, port);
    assert.equal(await client.checkHealth(), true);
    const status = await service.getStatus();
    assert.equal(status.running, true);
    assert.equal(status.healthy, true);
    assert.equal(status.port, port);
    assert.equal(status.restarts, 0);
    assert.equal(status.workers.length, 1);
    assert.equal(status.workers[0].state, "ready");
    assert.ok(isAlive(status.pid));
  });

  it("embedBatch() gives /embed's vectors, and info() the model", async () => {
    const texts = ["The cat sat on the mat.", "Ein Hund bellt.", "", "🙂 emoji and ünïcode"];
    assert.deepEqual(await client.embedBatch(texts), await rawEmbed(texts, true));
    const raw = await client.embedBatch(texts, false);
    assert.deepEqual(raw, await rawEmbed(texts, false));
    assert.equal(raw[0].length, 384);
    const norm = Math.hypot(...raw[0]);
    assert.ok(Math.abs(norm - 1) > 0.01, `normalize=false should be unnormalized, norm ${norm}`);
    const info = await client.info();
    assert.equal(info.dim, 384);
    assert.equal(typeof info.limits.max_texts, "number");
  });

  it("embedChunks() indexes chunks into the texts given, with /embed's vectors", async () => {
    const texts = ["First sentence here. And a second one.", "Short."];
    const result = await client.embedChunks(texts, { chunkTokens: 8, overlapTokens: 0 });
    assert.ok(result.chunks.length > 2);
    assert.deepEqual([...new Set(result.chunks.map((c) => c.index))], [0, 1]);
    for (const chunk of result.chunks) {
      assert.equal(texts[chunk.index].slice(chunk.start, chunk.end), chunk.text);
    }
    const direct = await rawEmbed(result.chunks.map((c) => c.text), true);
    const cosine = (a, b) => a.reduce((sum, x, j) => sum + x * b[j], 0) / (Math.hypot(...a) * Math.hypot(...b));
    // the same texts in other batches (other padding) may differ in the last bits, no more
    result.vectors.forEach((v, i) => assert.ok(cosine(v, direct[i]) > 0.99999, `chunk ${i}: ${cosine(v, direct[i])}`));
  });

  it("bad input is HTTP_ERROR 400 BAD_REQUEST, sent once (never retried)", async () => {
    const before = await metric("embed_http_requests_total", { route: "/embed", code: "BAD_REQUEST" });
    await assert.rejects(client.embedBatch(["fine", 42]), (error) => {
      assert.ok(error instanceof EmbedError);
      assert.deepEqual([error.kind, error.status, error.code], ["HTTP_ERROR", 400, "BAD_REQUEST"]);
      return true;
    });
    assert.equal(await metric("embed_http_requests_total", { route: "/embed", code: "BAD_REQUEST" }), before + 1);
  });

  it("a cluster killed with SIGKILL is started again, and the app hears of it", async () => {
    const { pid } = await service.getStatus();
    const children = descendants(pid);
    assert.ok(children.length >= 3, `broker, front and a worker below ${pid}: ${children}`);
    const from = events.length;
    process.kill(pid, "SIGKILL");
    await waitFor(() => events.slice(from).some((e) => e.type === "sidecar_restarted"), 150_000, "sidecar_restarted");
    const exited = events.slice(from).find((e) => e.type === "sidecar_exited");
    assert.deepEqual({ ...exited.data, restart_in: typeof exited.data.restart_in },
      { pid, code: null, signal: "SIGKILL", restart_in: "number", restarts: 0 });
    const status = await service.getStatus();
    assert.notEqual(status.pid, pid);
    assert.equal(status.restarts, 1);
    assert.equal(status.healthy, true);
    assert.equal((await client.embedBatch(["after the restart"]))[0].length, 384);
    await waitFor(() => !children.some(isAlive), 15_000, `the old cluster's children ${children} to exit`);
  });

  it("stopSidecar() waits for shutdown_complete and leaves no process; then NETWORK_ERROR", async () => {
    const { pid } = await service.getStatus();
    const all = [pid, ...descendants(pid)];
    assert.ok(all.length >= 4);
    const from = events.length;
    await service.stopSidecar();
    const types = events.slice(from).map((e) => e.type);
    assert.ok(types.includes("shutdown_started") && types.at(-1) === "shutdown_complete", types.join(", "));
    assert.deepEqual(all.filter(isAlive), [], "processes left after stopSidecar()");
    assert.ok(!events.slice(from).some((e) => e.type === "sidecar_exited"), "a requested stop is no crash");
    const status = await service.getStatus();
    assert.deepEqual([status.running, status.healthy, status.pid, status.state], [false, false, undefined, "stopped"]);
    await assert.rejects(client.embedBatch(["x"]), { kind: "NETWORK_ERROR" });
    assert.equal(await client.checkHealth(), false);
  });
});
