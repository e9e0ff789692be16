// PROGRESS lines: parsed into the typed union, unknown ones kept, lines split across chunks joined.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, it } from "node:test";

import { LineReader, parseProgressLine } from "../dist/index.js";
import { repoDir } from "./helpers.js";

/** The event names README "PROGRESS events" documents (its table and its list of per-part events). */
function readmeEventNames() {
  const readme = readFileSync(resolve(repoDir, "README.md"), "utf8");
  const start = readme.indexOf("## PROGRESS events");
  const end = readme.indexOf("\n## ", start + 1);
  const section = readme.slice(start, end).split("\n### ")[0];
  return [...new Set([...section.matchAll(/`([a-z]+(?:_[a-z]+)+)`/g)].map((m) => m[1]))];
}

describe("parseProgressLine", () => {
  it("knows every event the README documents, and the start-up contract's", () => {
    const names = [...readmeEventNames(), "startup_failed", "model_preparing"];
    assert.ok(names.includes("model_loaded") && names.includes("shutdown_complete") && names.length >= 17,
      `README events: ${names.join(", ")}`);
    for (const name of names) {
      const event = parseProgressLine(`PROGRESS:{"type":"${name}","data":{"worker":"w"}}`);
      assert.equal(event?.type, name, `${name} should parse as itself, got ${JSON.stringify(event)}`);
      assert.deepEqual(event.data, { worker: "w" });
    }
  });

  it("gives the data as the cluster printed it", () => {
    const line = 'PROGRESS:{"type": "startup_failed", "data": {"code": "PORT_IN_USE", "reason": "in use", "part": "front"}}';
    assert.deepEqual(parseProgressLine(line),
      { type: "startup_failed", data: { code: "PORT_IN_USE", reason: "in use", part: "front" } });
    assert.deepEqual(parseProgressLine('PROGRESS:{"type":"model_loaded","data":{"model":"m","dimensions":384}}\r'),
      { type: "model_loaded", data: { model: "m", dimensions: 384 } });
  });

  it("keeps an event it does not know as `unknown`, with its name", () => {
    assert.deepEqual(parseProgressLine('PROGRESS:{"type":"brand_new","data":{"x":1}}'),
      { type: "unknown", event: "brand_new", data: { x: 1 } });
  });

  it("reads missing or non-object data as {}", () => {
    assert.deepEqual(parseProgressLine('PROGRESS:{"type":"shutdown_started"}'), { type: "shutdown_started", data: {} });
    assert.deepEqual(parseProgressLine('PROGRESS:{"type":"shutdown_started","data":[1]}'),
      { type: "shutdown_started", data: {} });
  });

  it("returns null for anything that is not a well-formed event", () => {
    for (const line of ["", "hello", "PROGRESS:", "PROGRESS:{", 'PROGRESS:{"data":{}}', 'PROGRESS:{"type":3}',
      "PROGRESS:[1,2]", ' PROGRESS:{"type":"model_loaded"}', 'progress:{"type":"model_loaded"}']) {
      assert.equal(parseProgressLine(line), null, JSON.stringify(line));
    }
  });
});

describe("LineReader", () => {
  const collect = () => {
    const lines = [];
    return { lines, reader: new LineReader((line) => lines.push(line)) };
  };

  it("joins a line that arrives in several chunks", () => {
    const { lines, reader } = collect();
    const line = 'PROGRESS:{"type":"model_loaded","data":{"model":"m","dimensions":384}}';
    reader.push(Buffer.from(line.slice(0, 7)));
    reader.push(Buffer.from(line.slice(7, 30)));
    assert.deepEqual(lines, []);
    reader.push(Buffer.from(`${line.slice(30)}\nPROGRESS:{"type":"shu`));
    assert.deepEqual(lines, [line]);
    reader.push(Buffer.from('tdown_started","data":{}}\n'));
    assert.deepEqual(lines.map(parseProgressLine).map((e) => e.type), ["model_loaded", "shutdown_started"]);
  });

  it("splits a chunk that holds several lines, and keeps empty ones", () => {
    const { lines, reader } = collect();
    reader.push("a\nb\n\nc");
    assert.deepEqual(lines, ["a", "b", ""]);
    reader.end();
    assert.deepEqual(lines, ["a", "b", "", "c"]);
  });

  it("decodes a character whose bytes are cut between chunks", () => {
    const { lines, reader } = collect();
    const bytes = Buffer.from('PROGRESS:{"type":"model_cached","data":{"model":"müller-ø"}}\n');
    const cut = bytes.indexOf(0xbc); // the second byte of "ü"
    reader.push(bytes.subarray(0, cut));
    reader.push(bytes.subarray(cut));
    assert.equal(parseProgressLine(lines[0]).data.model, "müller-ø");
  });
});
