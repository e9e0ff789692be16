// Start-up failures: each rejects with the seed's code (or the cluster's own) and its one-line reason, within
// seconds, and leaves no process. The real command where the real one can fail so; a stand-in script for the
// `startup_failed` event of the start-up contract and for a doctor that reports missing dependencies.
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import { EmbedClusterService, SidecarError, commandCandidates, findCommand } from "../dist/index.js";
import { clusterCommand, clusterEnv, descendants, freePort, isAlive, lightArgs } from "./helpers.js";

let dir;

before(() => {
  dir = mkdtempSync(join(tmpdir(), "embed-cluster-client-"));
});

after(() => rmSync(dir, { recursive: true, force: true }));

function script(name, body) {
  const path = join(dir, name);
  writeFileSync(path, `#!/bin/sh\n${body}\n`);
  chmodSync(path, 0o755);
  return path;
}

/** Starts `config`, expects a SidecarError; returns it with the seconds it took and the processes left. */
async function failedStart(config) {
  const events = [];
  const service = new EmbedClusterService({ env: clusterEnv, ...config, onProgress: (e) => events.push(e) });
  const started = Date.now();
  const error = await service.startSidecar().then(() => undefined, (e) => e);
  const seconds = (Date.now() - started) / 1000;
  const status = await service.getStatus();
  await service.stopSidecar();
  assert.ok(error instanceof SidecarError, `expected a SidecarError, got ${error}`);
  assert.equal(status.running, false);
  return { error, seconds, events, status };
}

describe("startSidecar() failures", { timeout: 120_000 }, () => {
  it("a port that is taken: PORT_IN_USE within seconds (doctor's pre-flight)", async () => {
    const port = await freePort();
    const holder = createServer().listen(port, "127.0.0.1");
    await new Promise((r) => holder.once("listening", r));
    try {
      const { error, seconds } = await failedStart({ command: clusterCommand(), port, args: lightArgs });
      assert.equal(error.code, "PORT_IN_USE");
      assert.match(error.reason, new RegExp(`127\\.0\\.0\\.1:${port}`));
      assert.equal(error.part, "port");
      assert.ok(seconds < 30, `took ${seconds} s`);
    } finally {
      holder.close();
    }
  });

  it("a model that is not there: MODEL_UNAVAILABLE with doctor's fix", async () => {
    const { error } = await failedStart({ command: clusterCommand(), port: await freePort(), model: join(dir, "no-model") });
    assert.equal(error.code, "MODEL_UNAVAILABLE");
    assert.match(error.reason, /no-model/);
    assert.ok(error.fix);
  });

  it("no embed-cluster to run: PYTHON_NOT_FOUND", async () => {
    const { error } = await failedStart({ command: join(dir, "missing", "embed-cluster") });
    assert.equal(error.code, "PYTHON_NOT_FOUND");
    const none = new EmbedClusterService({ cwd: dir, env: { PATH: join(dir, "empty") } });
    await assert.rejects(none.startSidecar(), { code: "PYTHON_NOT_FOUND" });
  });

  it("`up` that exits at once: SIDECAR_START_FAILED with stderr's last line", async () => {
    const { error, seconds } = await failedStart({
      command: clusterCommand(), port: await freePort(), args: ["--no-such-flag"], preflight: false,
    });
    assert.equal(error.code, "SIDECAR_START_FAILED");
    assert.match(error.reason, /unrecognized arguments: --no-such-flag/);
    assert.ok(seconds < 30, `took ${seconds} s`);
  });

  it("a startup_failed event: its code and reason, also when the line comes in pieces", async () => {
    const command = script("startup-failed", [
      'echo "starting" >&2',
      "printf 'PROGRESS:{\"type\":\"startup_fa'",
      "sleep 0.3",
      "printf 'iled\",\"data\":{\"code\":\"KEYS_INVALID\",\"reason\":\"no broker.key in /k\",\"part\":\"broker\"}}\\n'",
      'echo "embed-cluster: KEYS_INVALID" >&2',
      "exit 1",
    ].join("\n"));
    const { error, events } = await failedStart({ command, preflight: false });
    assert.deepEqual([error.code, error.reason, error.part], ["KEYS_INVALID", "no broker.key in /k", "broker"]);
    assert.deepEqual(events, [{ type: "startup_failed", data: { code: "KEYS_INVALID", reason: "no broker.key in /k", part: "broker" } }]);
  });

  it("a startup_failed event from a process that does not exit: rejected, and the process is gone", async () => {
    const command = script("startup-failed-stays", [
      "printf 'PROGRESS:{\"type\":\"startup_failed\",\"data\":{\"code\":\"DEVICE_UNAVAILABLE\",\"reason\":\"no cuda:3\",\"part\":\"worker\"}}\\n'",
      "sleep 600 & wait",
    ].join("\n"));
    const service = new EmbedClusterService({ command, preflight: false });
    const starting = service.startSidecar();
    let pids = [];
    const watch = setInterval(() => {
      const { pid } = service;
      if (pid) pids = [pid, ...descendants(pid)];
    }, 50);
    const error = await starting.then(() => undefined, (e) => e);
    clearInterval(watch);
    assert.equal(error?.code, "DEVICE_UNAVAILABLE");
    assert.ok(pids.length >= 1);
    assert.deepEqual(pids.filter(isAlive), []);
  });

  it("doctor's failing check gives the seed's code: PYTHON_DEPS_MISSING with its fix", async () => {
    const report = JSON.stringify({ ok: false, checks: [
      { name: "python", ok: true, message: "Python 3.11", code: null, fix: null, details: {} },
      { name: "dependencies", ok: false, message: "missing: pyzmq", code: "PYTHON_DEPS_MISSING",
        fix: "python -m pip install 'pyzmq>=25'", details: { missing: ["pyzmq"] } },
      { name: "port", ok: false, message: "cannot listen", code: "PORT_IN_USE", fix: null, details: {} },
    ] });
    writeFileSync(join(dir, "report.json"), report);
    const command = script("deps-missing", `[ "$1" = doctor ] && { cat "${join(dir, "report.json")}"; exit 1; }\necho "up ran" >&2; exit 3`);
    const { error } = await failedStart({ command });
    assert.deepEqual([error.code, error.reason, error.fix], ["PYTHON_DEPS_MISSING", "missing: pyzmq", "python -m pip install 'pyzmq>=25'"]);
  });
});

describe("findCommand()", () => {
  it("takes a .venv beside the app first, then the seed's embedding_sidecar/.venv, then PATH", () => {
    const app = join(dir, "app");
    const bin = join(dir, "bin");
    mkdirSync(join(app, "embedding_sidecar", ".venv", "bin"), { recursive: true });
    mkdirSync(bin, { recursive: true });
    const onPath = join(bin, "embed-cluster");
    writeFileSync(onPath, "#!/bin/sh\n");
    assert.equal(findCommand(app, bin), undefined, "not executable: not taken");
    chmodSync(onPath, 0o755);
    assert.equal(findCommand(app, bin), onPath);
    const seedVenv = join(app, "embedding_sidecar", ".venv", "bin", "embed-cluster");
    writeFileSync(seedVenv, "#!/bin/sh\n");
    chmodSync(seedVenv, 0o755);
    assert.equal(findCommand(app, bin), seedVenv);
    mkdirSync(join(app, ".venv", "bin"), { recursive: true });
    const venv = join(app, ".venv", "bin", "embed-cluster");
    writeFileSync(venv, "#!/bin/sh\n");
    chmodSync(venv, 0o755);
    assert.equal(findCommand(app, bin), venv);
    assert.deepEqual(commandCandidates(app, bin), [venv, seedVenv, onPath]);
  });
});
