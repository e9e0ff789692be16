// The package README's Electron-style script is examples/electron-main.ts, word for word, and it runs as written:
// compiled by `npm run build`, started as an app would be (embed-cluster found on PATH), against the real cluster.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, dirname, join, resolve } from "node:path";
import { describe, it } from "node:test";

import { clusterCommand, freePort, packageDir } from "./helpers.js";

const example = resolve(packageDir, "examples/electron-main.ts");

function readmeScript() {
  const readme = readFileSync(resolve(packageDir, "README.md"), "utf8");
  const start = readme.indexOf("## From TypeScript / Electron");
  assert.ok(start >= 0, "clients/typescript/README.md has a section \"From TypeScript / Electron\"");
  const section = readme.slice(start, readme.indexOf("\n## ", start + 1));
  const blocks = [...section.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  const script = blocks.find((block) => block.includes("startSidecar()") && block.includes("stopSidecar()"));
  assert.ok(script, "the section has a ```ts block that starts and stops the cluster");
  return script;
}

/** Processes whose command line has `--port <port>`: what the example's cluster would leave behind. */
function processesOnPort(port) {
  return readdirSync("/proc").filter((entry) => /^\d+$/.test(entry)).filter((pid) => {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      return argv.some((arg, i) => arg === "--port" && argv[i + 1] === String(port));
    } catch {
      return false;
    }
  });
}

describe("the README's Electron-style script", { timeout: 200_000 }, () => {
  it("is examples/electron-main.ts", () => {
    assert.equal(readmeScript(), readFileSync(example, "utf8"));
  });

  it("runs as written: starts the cluster, embeds, stops it", async () => {
    const port = await freePort();
    const app = mkdtempSync(join(tmpdir(), "electron-app-"));
    const env = {
      ...process.env, PATH: `${dirname(clusterCommand())}${delimiter}${process.env.PATH}`, SIDECAR_PORT: String(port),
      HF_HUB_OFFLINE: "1", EMBED_WORKERS: "1", EMBED_PRECISION: "fp32", // a light cluster on a shared machine
    };
    delete env.EMBED_CLUSTER_COMMAND;
    try {
      const { stdout } = await new Promise((resolveRun, reject) => {
        execFile(process.execPath, [resolve(packageDir, "examples/dist/electron-main.js")],
          { cwd: app, env, timeout: 180_000 }, (error, out, err) => (error ? reject(Object.assign(error, { out, err }))
            : resolveRun({ stdout: out })));
      });
      assert.match(stdout, /all-MiniLM-L6-v2 loaded: 384 dimensions/);
      assert.match(stdout, /^2 vectors of 384 numbers$/m);
      assert.deepEqual(processesOnPort(port), [], "the script's cluster is gone once it exits");
    } finally {
      rmSync(app, { recursive: true, force: true });
    }
  });
});
