// autoRestart's backoff and giving up, and a stop during a start, with a stand-in `embed-cluster up`: a Node
// script that serves /health, prints model_loaded, and exits with code 1 after FAKE_LIFETIME_MS (long enough
// for the service to see it healthy on a busy machine). cluster.test.js restarts the real cluster.
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import { EmbedClusterService } from "../dist/index.js";
import { descendants, freePort, isAlive, waitFor } from "./helpers.js";

let dir;
let crashing;
let silent;

const FAKE_UP = `
import { createServer } from "node:http";
const port = Number(process.argv[process.argv.indexOf("--port") + 1]);
const server = createServer((req, res) => res.end(JSON.stringify({ status: "ok", workers: [] })));
server.listen(port, "127.0.0.1", () => {
  console.log('PROGRESS:{"type":"model_loaded","data":{"model":"fake","dimensions":2}}');
  setTimeout(() => process.exit(1), Number(process.env.FAKE_LIFETIME_MS));
});
`;

before(() => {
  dir = mkdtempSync(join(tmpdir(), "embed-cluster-client-"));
  writeFileSync(join(dir, "fake-up.mjs"), FAKE_UP);
  crashing = join(dir, "crashing");
  writeFileSync(crashing, `#!/bin/sh\nshift\nexec "${process.execPath}" "${join(dir, "fake-up.mjs")}" "$@"\n`);
  silent = join(dir, "silent");
  writeFileSync(silent, "#!/bin/sh\nexec sleep 600\n");
  chmodSync(crashing, 0o755);
  chmodSync(silent, 0o755);
});

after(() => rmSync(dir, { recursive: true, force: true }));

describe("autoRestart", { timeout: 60_000 }, () => {
  it("restarts after restartDelay, doubling on quick failures, and gives up after maxRestarts", async () => {
    const events = [];
    const service = new EmbedClusterService({
      command: crashing, port: await freePort(), preflight: false, restartDelay: 100, maxRestarts: 2,
      env: { FAKE_LIFETIME_MS: "1500" }, onProgress: (event) => events.push(event),
    });
    try {
      await service.startSidecar();
      await waitFor(() => events.filter((e) => e.type === "sidecar_exited").length === 3, 30_000, "three exits");
      const exits = events.filter((e) => e.type === "sidecar_exited").map((e) => e.data);
      assert.deepEqual(exits.map((d) => [d.code, d.restart_in, d.restarts]), [[1, 100, 0], [1, 200, 1], [1, null, 2]]);
      assert.deepEqual(events.filter((e) => e.type === "sidecar_restarted").map((e) => e.data.restarts), [1, 2]);
      const status = await service.getStatus();
      assert.deepEqual([status.running, status.state, status.restarts], [false, "stopped", 2]);
    } finally {
      await service.stopSidecar();
    }
  });

  it("is off with autoRestart: false", async () => {
    const events = [];
    const service = new EmbedClusterService({
      command: crashing, port: await freePort(), preflight: false, autoRestart: false,
      env: { FAKE_LIFETIME_MS: "1000" }, onProgress: (event) => events.push(event),
    });
    await service.startSidecar();
    await waitFor(() => events.some((e) => e.type === "sidecar_exited"), 10_000, "the exit");
    await new Promise((r) => setTimeout(r, 500));
    assert.deepEqual(events.filter((e) => e.type.startsWith("sidecar_")).map((e) => [e.type, e.data.restart_in]),
      [["sidecar_exited", null]]);
    assert.equal((await service.getStatus()).state, "stopped");
  });

  it("stopSidecar() during a start: the start rejects, the process is gone", async () => {
    const service = new EmbedClusterService({ command: silent, port: await freePort(), preflight: false });
    const starting = service.startSidecar();
    await waitFor(() => service.pid !== undefined, 5000, "the process");
    const { pid } = service;
    await service.stopSidecar();
    await assert.rejects(starting, { code: "SIDECAR_START_FAILED", reason: "stopped before it was ready" });
    assert.equal(isAlive(pid), false);
  });

  it("stopSidecar() during the pre-flight checks: the start rejects, doctor is gone", async () => {
    const service = new EmbedClusterService({ command: silent, port: await freePort() }); // its doctor never answers
    const starting = service.startSidecar();
    await waitFor(() => descendants(process.pid).some(isAlive), 5000, "doctor to start");
    await service.stopSidecar();
    await assert.rejects(starting, { code: "SIDECAR_START_FAILED", reason: "stopped before it was ready" });
    assert.deepEqual(descendants(process.pid).filter(isAlive), []);
  });
});

describe("port 0", { timeout: 60_000 }, () => {
  it("follows the port front_listening names: the start waits on it, and client() uses it", async () => {
    const script = join(dir, "free-port-up.mjs");
    writeFileSync(script, `
import { createServer } from "node:http";
const server = createServer((req, res) => res.end(JSON.stringify({ status: "ok", workers: [] })));
server.listen(0, "127.0.0.1", () => {
  const port = server.address().port;
  console.log('PROGRESS:' + JSON.stringify({ type: "front_listening", data: { host: "127.0.0.1", port } }));
  console.log('PROGRESS:{"type":"model_loaded","data":{"model":"fake","dimensions":2}}');
});
`);
    const command = join(dir, "free-port");
    writeFileSync(command, `#!/bin/sh\nshift\nexec "${process.execPath}" "${script}" "$@"\n`);
    chmodSync(command, 0o755);
    const service = new EmbedClusterService({ command, port: 0, preflight: false, startTimeout: 20_000 });
    try {
      await service.startSidecar();
      const status = await service.getStatus();
      assert.ok(status.port > 0, `the port it listens on, not 0: ${status.port}`);
      assert.equal(await service.client().checkHealth(), true);
    } finally {
      await service.stopSidecar();
    }
  });
});
