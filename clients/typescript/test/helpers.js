// Shared by the tests: the real embed-cluster command, free ports, and what /proc says about processes.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const repoDir = resolve(packageDir, "../..");

/** The worktree's venv (../../.venv relative to the package), or EMBED_CLUSTER_COMMAND. */
export function clusterCommand() {
  const command = process.env.EMBED_CLUSTER_COMMAND || resolve(repoDir, ".venv/bin/embed-cluster");
  if (!existsSync(command)) {
    throw new Error(`${command} does not exist: create the Python venv first (README, "Quick start") `
      + "or set EMBED_CLUSTER_COMMAND");
  }
  return command;
}

/**
 * The cluster's environment: the bundled model only, and without EMBED_CLUSTER_COMMAND (the cluster refuses an
 * EMBED_* variable it does not know).
 */
export const clusterEnv = { HF_HUB_OFFLINE: "1", EMBED_CLUSTER_COMMAND: undefined };

/** A light cluster for tests on a shared 2-core machine: one worker, no precision probe at start-up. */
export const lightArgs = ["--workers", "1", "--precision", "fp32"];

export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

/** The process's state letter (R, S, Z, ...), or undefined when there is no such process. */
export function processState(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
  } catch {
    return undefined;
  }
}

/** Alive: it exists and is not a zombie (a zombie has exited; only its exit status waits to be read). */
export function isAlive(pid) {
  const state = processState(pid);
  return state !== undefined && state !== "Z" && state !== "X";
}

/** Every process below `root`, from the parent pids in /proc. */
export function descendants(root) {
  const children = new Map();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
    } catch {
      // exited while we looked
    }
  }
  const found = [];
  const queue = [root];
  while (queue.length) {
    for (const child of children.get(queue.shift()) ?? []) {
      found.push(child);
      queue.push(child);
    }
  }
  return found;
}

/** Resolves when `predicate()` is true; rejects after `ms` saying what it waited for. */
export async function waitFor(predicate, ms, what) {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
