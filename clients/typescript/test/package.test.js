// The package as an app gets it: main/types/exports point into the built dist/, no runtime dependencies, and
// the seed's names are the same classes as the new ones.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { it } from "node:test";

import * as byName from "embed-cluster-client"; // the package's own name, resolved through its exports
import { packageDir } from "./helpers.js";

const pkg = JSON.parse(readFileSync(resolve(packageDir, "package.json"), "utf8"));

it("points main, types and exports at the built files", () => {
  const targets = [pkg.main, pkg.types, ...Object.values(pkg.exports["."])];
  for (const target of targets) {
    assert.match(target, /^\.\/dist\//);
    assert.ok(existsSync(resolve(packageDir, target)), `${target} is built`);
  }
  assert.equal(pkg.type, "module");
});

it("has no runtime dependencies", () => {
  assert.equal(pkg.dependencies, undefined);
  assert.deepEqual(Object.keys(pkg.devDependencies).sort(), ["@types/node", "typescript"]);
});

it("exports the seed's names as the same classes", () => {
  assert.equal(byName.PythonSidecarClient, byName.EmbedClusterClient);
  assert.equal(byName.PythonSidecarService, byName.EmbedClusterService);
  for (const name of ["EmbedError", "SidecarError", "parseProgressLine", "LineReader", "findCommand"]) {
    assert.equal(typeof byName[name], "function", name);
  }
});
