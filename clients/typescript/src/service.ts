/**
 * `EmbedClusterService`: the seed's `PythonSidecarService` for embed-cluster. It runs `embed-cluster up` as a
 * child process, follows its PROGRESS events on stdout, restarts it when it dies, and stops it in order.
 *
 * - `startSidecar()`: pre-flight checks (`embed-cluster doctor --json`), then `up`; resolves once
 *   `model_loaded` has been seen and `/health` is 200; rejects with a {@link SidecarError} otherwise, leaving
 *   no process behind.
 * - `stopSidecar()`: SIGTERM, waits for `shutdown_complete` and the exit (the cluster stops its own children
 *   first), SIGKILL after `stopTimeout`; resolves when the process and its output pipes are gone.
 * - With `autoRestart`, a cluster that dies is started again after `restartDelay`, doubling on each quick
 *   failure up to `maxRestartDelay`; the app hears of it through `sidecar_*` events on `onProgress`.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";

import { EmbedClusterClient, type EmbedClusterClientConfig, type WorkerInfo } from "./client.js";
import { SidecarError } from "./errors.js";
import { LineReader, parseProgressLine, type ProgressEvent, type SidecarEvent } from "./events.js";
import { isObject } from "./json.js";
import { commandCandidates, findCommand } from "./locate.js";

export interface EmbedClusterServiceConfig {
  /** The `embed-cluster` executable. Default: a `.venv` in `cwd` (or `cwd/embedding_sidecar/.venv`), else PATH. */
  command?: string;
  /** More arguments for `embed-cluster up` (e.g. `["--workers", "1"]`). */
  args?: string[];
  /** Default: 127.0.0.1 (another address needs `apiKey`, as `up` requires). */
  host?: string;
  /** Default: 8421. 0 lets the front pick a free port; `getStatus().port` and `client()` follow it. */
  port?: number;
  /** `--model`: a model id or a local directory. Default: the cluster's (all-MiniLM-L6-v2, bundled). */
  model?: string;
  /** `--device`: auto, cpu, cuda, cuda:N or mps. Default: the cluster's (auto). */
  device?: string;
  /** Added to this process's environment for the cluster (an `undefined` value removes a variable). */
  env?: Record<string, string | undefined>;
  /** Working directory of the cluster, and where the default `command` is looked for. Default: process.cwd(). */
  cwd?: string;
  /** Given to the cluster as `EMBED_API_KEY` (never on its command line) and used by `client()`. */
  apiKey?: string;
  /** Start the cluster again when it dies. Default: true. */
  autoRestart?: boolean;
  /** Milliseconds before the first restart after a crash (the seed's 2 s). Default: 2000. */
  restartDelay?: number;
  /** The backoff's cap, in milliseconds. Default: 30000. */
  maxRestartDelay?: number;
  /** Quick failures in a row (a crash within a minute of being ready, or a failed restart) before giving up. Default: 5. */
  maxRestarts?: number;
  /** Every PROGRESS event of the cluster, typed, and the service's own `sidecar_*` events. */
  onProgress?: (event: ProgressEvent) => void;
  /** Every line the cluster logs on stderr. */
  onLog?: (line: string) => void;
  /** Milliseconds `startSidecar()` waits for the cluster to be ready (pre-flight included). Default: 180000. */
  startTimeout?: number;
  /** Milliseconds `stopSidecar()` waits after SIGTERM before SIGKILL. Default: 60000. */
  stopTimeout?: number;
  /** Run `embed-cluster doctor --json` before the first start. Default: true. */
  preflight?: boolean;
}

export interface SidecarStatus {
  /** The cluster's process is alive (starting, serving or restarting). */
  running: boolean;
  pid: number | undefined;
  /** `/health` answered 200 just now. */
  healthy: boolean;
  port: number;
  /** `/health`'s workers, when it answered. */
  workers: WorkerInfo[];
  lastEvent: ProgressEvent | undefined;
  /** Times the service started the cluster again after it died. */
  restarts: number;
  state: ServiceState;
}

export type ServiceState = "stopped" | "starting" | "running" | "restarting" | "stopping";

const HEALTH_POLL_MS = 200;
const HEALTHY_AFTER_MS = 60_000; // a cluster that served this long before dying starts the backoff afresh
const DOCTOR_TIMEOUT_MS = 180_000; // doctor probes the devices in a subprocess that imports torch
const CLOSE_WAIT_MS = 5_000; // after the exit, how long the output pipes may stay open (a child still holding them)
const STDERR_LINES = 50;

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** One `embed-cluster up` process and what it said. */
class Run {
  readonly proc: ChildProcess;
  readonly stderr: string[] = [];
  readonly exited: Promise<Exit>;
  readonly closed: Promise<void>;
  exit: Exit | undefined;
  spawnError: NodeJS.ErrnoException | undefined;
  startupFailed: { code: string; reason: string; part: string } | undefined;
  modelLoaded = false;
  readyAt = 0;
  port: number;

  constructor(proc: ChildProcess, port: number) {
    this.proc = proc;
    proc.on("error", () => undefined); // spawn failures are handled below; a failed kill() needs no handler
    this.port = port;
    this.exited = new Promise((resolve) => {
      proc.once("exit", (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
      proc.once("error", (error: NodeJS.ErrnoException) => {
        if (proc.pid === undefined) { // spawning failed: no exit event follows
          this.spawnError = error;
          this.exit = { code: null, signal: null };
          resolve(this.exit);
        }
      });
    });
    this.closed = new Promise((resolve) => {
      proc.once("close", () => resolve());
      proc.once("error", () => {
        if (proc.pid === undefined) {
          resolve();
        }
      });
    });
  }

  get alive(): boolean {
    return this.exit === undefined;
  }

  lastStderrLine(): string | undefined {
    for (let i = this.stderr.length - 1; i >= 0; i--) {
      const line = this.stderr[i]?.trim();
      if (line) {
        return line;
      }
    }
    return undefined;
  }
}

export class EmbedClusterService {
  private readonly config: EmbedClusterServiceConfig;
  private run: Run | undefined;
  private state: ServiceState = "stopped";
  private starting: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;
  private restartTimer: NodeJS.Timeout | undefined;
  private restarts = 0;
  private failures = 0; // quick failures in a row
  private lastEvent: ProgressEvent | undefined;
  private port: number;
  private generation = 0; // bumped by stopSidecar(): a start or restart begun before it gives up
  private doctor: ChildProcess | undefined; // the pre-flight check in progress
  private readonly onProcessExit = (): void => {
    this.run?.proc.kill("SIGTERM"); // the app is exiting: do not leave the cluster behind
  };

  constructor(config: EmbedClusterServiceConfig = {}) {
    this.config = config;
    this.port = config.port ?? 8421;
  }

  /** The cluster process's pid while it is alive (starting, serving or restarting). */
  get pid(): number | undefined {
    return this.run?.alive ? this.run.proc.pid : undefined;
  }

  /** A client for this cluster (its port, its API key); `config` adds to or overrides that. */
  client(config: EmbedClusterClientConfig = {}): EmbedClusterClient {
    return new EmbedClusterClient({ baseUrl: this.baseUrl(), apiKey: this.config.apiKey, ...config });
  }

  /** Starts the cluster; resolves when it serves. Calling it while it starts or runs waits for that same start. */
  startSidecar(): Promise<void> {
    if (this.state === "running" && this.run?.alive) {
      return Promise.resolve();
    }
    if (this.starting) {
      return this.starting;
    }
    if (this.stopping) {
      return this.stopping.then(() => this.startSidecar());
    }
    clearTimeout(this.restartTimer); // a restart was pending: this start replaces it
    this.restartTimer = undefined;
    const generation = ++this.generation;
    this.state = "starting";
    this.failures = 0;
    this.starting = this.firstStart(generation).then(
      () => {
        this.starting = undefined;
      },
      (error: unknown) => {
        this.starting = undefined;
        if (generation === this.generation) {
          this.state = "stopped";
        }
        throw error;
      },
    );
    return this.starting;
  }

  /** Stops the cluster (and any pending restart); resolves when no process of it is left. */
  stopSidecar(): Promise<void> {
    if (this.stopping) {
      return this.stopping;
    }
    this.generation++;
    clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
    const run = this.run;
    if (!run) {
      const starting = this.starting;
      this.state = "stopped";
      if (starting && this.doctor) { // still in the pre-flight checks: end them, and resolve once they are gone
        this.doctor.kill("SIGKILL");
        return starting.then(() => undefined, () => undefined);
      }
      return Promise.resolve();
    }
    this.state = "stopping";
    this.stopping = this.terminate(run, this.config.stopTimeout ?? 60_000).finally(() => {
      this.stopping = undefined;
      if (this.run === run) {
        this.run = undefined;
      }
      this.state = "stopped";
      process.off("exit", this.onProcessExit);
    });
    return this.stopping;
  }

  async restartSidecar(): Promise<void> {
    await this.stopSidecar();
    await this.startSidecar();
  }

  async getStatus(): Promise<SidecarStatus> {
    const run = this.run;
    let healthy = false;
    let workers: WorkerInfo[] = [];
    if (run?.alive) {
      try {
        const health = await this.client({ timeout: 2000, retryAttempts: 0 }).health();
        healthy = health.status === "ok";
        workers = Array.isArray(health.workers) ? health.workers : [];
      } catch {
        healthy = false;
      }
    }
    return {
      running: run?.alive ?? false,
      pid: run?.alive ? run.proc.pid : undefined,
      healthy,
      port: this.port,
      workers,
      lastEvent: this.lastEvent,
      restarts: this.restarts,
      state: this.state,
    };
  }

  // -- starting -------------------------------------------------------------------------------------------

  private command(): string {
    const cwd = this.config.cwd ?? process.cwd();
    const command = this.config.command ?? findCommand(cwd, this.childEnv().PATH);
    if (!command) {
      throw new SidecarError("PYTHON_NOT_FOUND",
        `embed-cluster not found (looked in ${commandCandidates(cwd, undefined).join(", ")} and on PATH); `
        + "install it in a .venv beside the app or pass `command`",
        { fix: "install embed-cluster in a .venv beside the app (its README, \"Quick start\"), or pass `command`" });
    }
    return command;
  }

  private async firstStart(generation: number): Promise<void> {
    const deadline = Date.now() + (this.config.startTimeout ?? 180_000);
    const command = this.command();
    if (this.run) { // a restart after a crash was under way: this start replaces it
      await this.terminate(this.run, this.config.stopTimeout ?? 60_000);
      this.run = undefined;
    }
    if (this.config.preflight ?? true) {
      try {
        await this.preflight(command, deadline);
      } catch (error) {
        this.checkGeneration(generation); // stopped meanwhile: say that, not what the killed doctor left
        throw error;
      }
    }
    this.checkGeneration(generation);
    await this.launch(command, deadline, generation);
  }

  /** `embed-cluster doctor --json`: the first failing check becomes the SidecarError. */
  private async preflight(command: string, deadline: number): Promise<void> {
    const args = ["doctor", "--json", "--host", this.config.host ?? "127.0.0.1", "--port", String(this.config.port ?? 8421),
      ...this.modelArgs()];
    const timeout = Math.max(1000, Math.min(DOCTOR_TIMEOUT_MS, deadline - Date.now()));
    const result = await runToEnd(command, args, { cwd: this.config.cwd, env: this.childEnv() }, timeout,
      (proc) => {
        this.doctor = proc;
      });
    this.doctor = undefined;
    if (result.spawnError) {
      throw spawnFailure(command, result.spawnError);
    }
    let report: unknown;
    try {
      report = JSON.parse(result.stdout);
    } catch {
      const why = result.timedOut ? `did not answer within ${timeout} ms` : lastLine(result.stderr)
        ?? `exited with code ${result.code} and no report`;
      throw new SidecarError("SIDECAR_START_FAILED", `${command} doctor: ${why}`, { part: "doctor" });
    }
    const checks = isObject(report) && Array.isArray(report.checks) ? report.checks.filter(isObject) : [];
    const failed = checks.find((check) => check.ok === false);
    if (failed) {
      throw new SidecarError(typeof failed.code === "string" ? failed.code : "SIDECAR_START_FAILED",
        typeof failed.message === "string" ? failed.message : `the ${String(failed.name)} check failed`,
        { fix: typeof failed.fix === "string" ? failed.fix : undefined, part: String(failed.name) });
    }
  }

  /** Runs `up` and resolves once it serves; on failure, rejects only after its process is gone. */
  private async launch(command: string, deadline: number, generation: number): Promise<void> {
    // --parent-pid: should this app die without stopping the cluster (even by SIGKILL), the cluster stops itself
    const args = ["up", "--host", this.config.host ?? "127.0.0.1", "--port", String(this.config.port ?? 8421),
      "--parent-pid", String(process.pid), ...this.modelArgs(), ...(this.config.args ?? [])];
    const proc = spawn(command, args, {
      cwd: this.config.cwd, env: this.childEnv(), stdio: ["ignore", "pipe", "pipe"], windowsHide: true,
    });
    const run = new Run(proc, this.config.port ?? 8421);
    this.run = run;
    this.port = run.port;
    process.off("exit", this.onProcessExit);
    process.on("exit", this.onProcessExit);
    const stdout = new LineReader((line) => this.onStdoutLine(run, line));
    const stderr = new LineReader((line) => {
      run.stderr.push(line);
      if (run.stderr.length > STDERR_LINES) {
        run.stderr.shift();
      }
      this.config.onLog?.(line);
    });
    proc.stdout?.on("data", (chunk: Buffer) => stdout.push(chunk));
    proc.stdout?.on("end", () => stdout.end());
    proc.stderr?.on("data", (chunk: Buffer) => stderr.push(chunk));
    proc.stderr?.on("end", () => stderr.end());
    void run.exited.then(() => this.onExit(run));

    try {
      await this.waitReady(run, deadline, generation, command);
    } catch (error) {
      await this.terminate(run, 10_000);
      if (this.run === run) {
        this.run = undefined;
        process.off("exit", this.onProcessExit);
      }
      throw error;
    }
    run.readyAt = Date.now();
    if (generation === this.generation) {
      this.state = "running";
    }
  }

  private async waitReady(run: Run, deadline: number, generation: number, command: string): Promise<void> {
    for (;;) {
      this.checkGeneration(generation);
      if (!run.alive || run.startupFailed) {
        if (run.startupFailed && run.alive) { // the contract: it exits within seconds; give it those
          await within(run.exited, 5000);
        }
        throw this.startFailure(run, command);
      }
      if (Date.now() >= deadline) {
        throw new SidecarError("SIDECAR_START_FAILED",
          `not ready within ${this.config.startTimeout ?? 180_000} ms (last event: ${describeEvent(this.lastEvent)})`);
      }
      // a client each poll: with port 0 the port is known only once front_listening has come
      if (run.modelLoaded && await this.client({ timeout: 2000, retryAttempts: 0 }).checkHealth()) {
        return;
      }
      await within(run.exited, HEALTH_POLL_MS);
    }
  }

  private checkGeneration(generation: number): void {
    if (generation !== this.generation) {
      throw new SidecarError("SIDECAR_START_FAILED", "stopped before it was ready");
    }
  }

  private startFailure(run: Run, command: string | undefined): SidecarError {
    if (run.spawnError) {
      return spawnFailure(command ?? this.config.command ?? "embed-cluster", run.spawnError);
    }
    if (run.startupFailed) {
      return new SidecarError(run.startupFailed.code, run.startupFailed.reason, { part: run.startupFailed.part });
    }
    const exit = run.exit ? ` (exit code ${run.exit.code ?? run.exit.signal})` : "";
    return new SidecarError("SIDECAR_START_FAILED", `${run.lastStderrLine() ?? "embed-cluster up exited"}${exit}`);
  }

  // -- following ------------------------------------------------------------------------------------------

  private onStdoutLine(run: Run, line: string): void {
    const event = parseProgressLine(line);
    if (event === null) {
      return; // stdout is the cluster's protocol; anything else there is not for us
    }
    switch (event.type) {
      case "model_loaded":
        run.modelLoaded = true;
        break;
      case "front_listening":
        if (typeof event.data.port === "number" && event.data.port > 0) {
          run.port = event.data.port;
          this.port = run.port;
        }
        break;
      case "startup_failed":
        run.startupFailed = {
          code: String(event.data.code ?? "SIDECAR_START_FAILED"),
          reason: String(event.data.reason ?? "embed-cluster up could not start"),
          part: String(event.data.part ?? ""),
        };
        break;
      default:
        break;
    }
    this.deliver(event);
  }

  private deliver(event: ProgressEvent): void {
    this.lastEvent = event;
    try {
      this.config.onProgress?.(event);
    } catch (error) {
      process.emitWarning(`embed-cluster-client: onProgress threw: ${String(error)}`);
    }
  }

  private emit(event: SidecarEvent): void {
    this.deliver(event);
  }

  /** The process of `run` exited: if it was serving and nobody asked it to stop, it crashed. */
  private onExit(run: Run): void {
    if (this.run !== run || run.readyAt === 0 || this.state !== "running") {
      return; // stopped by us, or a start that failed (its caller hears of that)
    }
    this.run = undefined;
    process.off("exit", this.onProcessExit);
    this.failures = Date.now() - run.readyAt >= HEALTHY_AFTER_MS ? 1 : this.failures + 1;
    const delay = this.nextDelay();
    this.emit({ type: "sidecar_exited", data: {
      pid: run.proc.pid ?? 0, code: run.exit?.code ?? null, signal: run.exit?.signal ?? null, restart_in: delay,
      restarts: this.restarts,
    } });
    this.scheduleRestart(delay);
  }

  /** Milliseconds before the next restart, or null when the service gives up (or does not restart). */
  private nextDelay(): number | null {
    const maxRestarts = this.config.maxRestarts ?? 5;
    if (!(this.config.autoRestart ?? true) || this.failures > maxRestarts) {
      return null;
    }
    const first = this.config.restartDelay ?? 2000;
    return Math.min(first * 2 ** Math.max(0, this.failures - 1), this.config.maxRestartDelay ?? 30_000);
  }

  private scheduleRestart(delay: number | null): void {
    if (delay === null) {
      this.state = "stopped";
      return;
    }
    this.state = "restarting";
    const generation = this.generation;
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      void this.restartAfterCrash(generation);
    }, delay);
  }

  private async restartAfterCrash(generation: number): Promise<void> {
    try {
      const deadline = Date.now() + (this.config.startTimeout ?? 180_000);
      await this.launch(this.command(), deadline, generation);
    } catch (error) {
      if (generation !== this.generation) {
        return; // stopped meanwhile
      }
      this.failures += 1;
      const delay = this.nextDelay();
      const failure = error instanceof SidecarError ? error : new SidecarError("SIDECAR_START_FAILED", String(error));
      this.emit({ type: "sidecar_restart_failed", data: {
        code: failure.code, reason: failure.reason, restart_in: delay, restarts: this.restarts,
      } });
      this.scheduleRestart(delay);
      return;
    }
    this.restarts += 1;
    this.emit({ type: "sidecar_restarted", data: { pid: this.run?.proc.pid ?? 0, restarts: this.restarts } });
  }

  // -- stopping -------------------------------------------------------------------------------------------

  /** SIGTERM, wait up to `grace` ms for the exit, SIGKILL (the process and its descendants), wait for the pipes. */
  private async terminate(run: Run, grace: number): Promise<void> {
    let below: number[] = [];
    if (run.alive) {
      below = descendants(run.proc.pid);
      run.proc.kill("SIGTERM");
      if (!await within(run.exited, grace)) {
        below = [...below, ...descendants(run.proc.pid)];
        kill([run.proc.pid, ...below]);
        await run.exited;
      }
    }
    // The cluster's children write to the same stderr pipe: it closes when the last of them is gone. A child
    // that outlived it (its parent did not stop it) is killed.
    if (!await within(run.closed, CLOSE_WAIT_MS)) {
      kill(below);
      if (!await within(run.closed, CLOSE_WAIT_MS)) {
        run.proc.stdout?.destroy();
        run.proc.stderr?.destroy();
      }
    }
  }

  // -- helpers --------------------------------------------------------------------------------------------

  private modelArgs(): string[] {
    return [
      ...(this.config.model ? ["--model", this.config.model] : []),
      ...(this.config.device ? ["--device", this.config.device] : []),
    ];
  }

  private childEnv(): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { ...process.env, PYTHONUNBUFFERED: "1" };
    for (const [key, value] of Object.entries(this.config.env ?? {})) {
      if (value === undefined) {
        delete env[key];
      } else {
        env[key] = value;
      }
    }
    if (this.config.apiKey) {
      env.EMBED_API_KEY = this.config.apiKey;
    }
    return env;
  }

  private baseUrl(): string {
    const host = this.config.host ?? "127.0.0.1";
    const connect = host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "::1" : host;
    return `http://${connect.includes(":") ? `[${connect}]` : connect}:${this.port}`;
  }
}

function spawnFailure(command: string, error: NodeJS.ErrnoException): SidecarError {
  if (error.code === "ENOENT" || error.code === "EACCES") {
    return new SidecarError("PYTHON_NOT_FOUND", `cannot run ${command}: ${error.code} (${error.message})`,
      { cause: error });
  }
  return new SidecarError("SIDECAR_START_FAILED", `cannot run ${command}: ${error.message}`, { cause: error });
}

interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  spawnError: NodeJS.ErrnoException | undefined;
}

/** Runs a command to its end (killed after `timeout` ms), collecting its output. */
function runToEnd(command: string, args: string[], options: { cwd: string | undefined; env: NodeJS.ProcessEnv },
  timeout: number, onSpawn: (proc: ChildProcess) => void): Promise<Finished> {
  return new Promise((resolve) => {
    const proc = spawn(command, args, { ...options, stdio: ["ignore", "pipe", "pipe"], windowsHide: true });
    onSpawn(proc);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      proc.kill("SIGKILL");
    }, timeout);
    proc.stdout?.on("data", (chunk: Buffer) => out.push(chunk));
    proc.stderr?.on("data", (chunk: Buffer) => err.push(chunk));
    proc.once("error", (error: NodeJS.ErrnoException) => {
      if (proc.pid === undefined) {
        clearTimeout(timer);
        resolve({ code: null, stdout: "", stderr: "", timedOut, spawnError: error });
      }
    });
    proc.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8"),
        timedOut, spawnError: undefined });
    });
  });
}

/** SIGKILL each of `pids` that is still there. */
function kill(pids: (number | undefined)[]): void {
  for (const pid of pids) {
    if (pid === undefined) {
      continue;
    }
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone already
    }
  }
}

/** Every process below `root`, from the parent pids in /proc (Linux; elsewhere none). */
function descendants(root: number | undefined): number[] {
  if (root === undefined || process.platform !== "linux") {
    return [];
  }
  const children = new Map<number, number[]>();
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return [];
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) {
      continue;
    }
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
    } catch {
      // exited while we looked
    }
  }
  const found: number[] = [];
  const queue = [root];
  while (queue.length > 0) {
    for (const child of children.get(queue.shift() as number) ?? []) {
      found.push(child);
      queue.push(child);
    }
  }
  return found;
}

/** True when `promise` settles within `ms`; the timer is cleared either way, so it never holds the process. */
async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true as const), expired]);
  } finally {
    clearTimeout(timer);
  }
}

function lastLine(text: string): string | undefined {
  return text.split("\n").map((line) => line.trim()).filter(Boolean).at(-1);
}


function describeEvent(event: ProgressEvent | undefined): string {
  return event === undefined ? "none" : event.type === "unknown" ? event.event : event.type;
}
