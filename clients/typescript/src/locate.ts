/**
 * Where the `embed-cluster` executable is, as the seed's venv detection did: a `.venv` beside the app (or the
 * seed's `embedding_sidecar/.venv`), else on PATH.
 */

import { accessSync, constants, statSync } from "node:fs";
import { delimiter, join } from "node:path";

const EXECUTABLE = "embed-cluster";

function isExecutable(path: string): boolean {
  try {
    if (!statSync(path).isFile()) {
      return false;
    }
    accessSync(path, process.platform === "win32" ? constants.F_OK : constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The names a venv's script takes on this platform, below the venv's folder. */
function inVenv(venv: string): string[] {
  return process.platform === "win32"
    ? [join(venv, "Scripts", `${EXECUTABLE}.exe`), join(venv, "Scripts", EXECUTABLE)]
    : [join(venv, "bin", EXECUTABLE)];
}

/** Every place looked at, in order: `<appDir>/.venv`, `<appDir>/embedding_sidecar/.venv`, then each PATH entry. */
export function commandCandidates(appDir: string, path: string | undefined): string[] {
  const names = process.platform === "win32" ? [`${EXECUTABLE}.exe`, `${EXECUTABLE}.cmd`, EXECUTABLE] : [EXECUTABLE];
  const onPath = (path ?? "").split(delimiter).filter(Boolean).flatMap((dir) => names.map((name) => join(dir, name)));
  return [...inVenv(join(appDir, ".venv")), ...inVenv(join(appDir, "embedding_sidecar", ".venv")), ...onPath];
}

/** The first executable candidate, or undefined when there is none. */
export function findCommand(appDir: string, path: string | undefined = process.env.PATH): string | undefined {
  return commandCandidates(appDir, path).find(isExecutable);
}
