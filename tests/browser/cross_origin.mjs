// Web pages against a cluster on loopback, in Debian's chromium (playwright-core); run by
// tests/integration/test_browser_origins.py, which checks what it reports against the cluster's /metrics.
//
//   node cross_origin.mjs   with CLUSTER (http://127.0.0.1:PORT), FOREIGN and ALLOWED (a page's URL on an origin
//                           the cluster does not, and does, let in), REBIND_HOST (a name the browser resolves to
//                           127.0.0.1, as a DNS-rebinding page's does), MARK (a word in every text sent)
//
// From the foreign page: fetch with text/plain (a "simple" request, no preflight), the same with mode no-cors,
// fetch with JSON (preflighted), a text/plain and an urlencoded form posted into a frame, and reads of /info and
// /status.json. From a page of REBIND_HOST on the cluster's own port (same-origin with it, as after a rebinding):
// the same /embed and /status.json. From the allowed page: /embed with JSON, read back. It prints one JSON line
// with what each attempt could read, and exits 0; or prints the failing step and exits 1.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const cluster = process.env.CLUSTER;
const mark = process.env.MARK;
const rebindHost = process.env.REBIND_HOST;
const seen = {};
let step = "launch";

// Run in a page: every way a page may send texts to the cluster, and what the page could read of each answer.
async function attack({ cluster, mark }) {
  const body = JSON.stringify({ texts: [`${mark} fetch`] });
  const out = {};
  async function tryFetch(name, url, init) {
    try {
      const r = await fetch(url, init);
      out[name] = { read: true, status: r.status, type: r.type, text: await r.text() };
    } catch (error) {
      out[name] = { read: false, error: String(error) };
    }
  }
  await tryFetch("text_plain", `${cluster}/embed`, { method: "POST", headers: { "Content-Type": "text/plain" }, body });
  await tryFetch("no_cors", `${cluster}/embed`, { method: "POST", mode: "no-cors",
    headers: { "Content-Type": "text/plain" }, body });
  await tryFetch("json", `${cluster}/embed`, { method: "POST", headers: { "Content-Type": "application/json" },
    body });
  await tryFetch("info", `${cluster}/info`, {});
  await tryFetch("status_json", `${cluster}/status.json`, {});
  for (const [name, enctype] of [["form_text_plain", "text/plain"],
    ["form_urlencoded", "application/x-www-form-urlencoded"]]) {
    const frame = document.createElement("iframe");
    frame.name = name;
    document.body.append(frame);
    const form = document.createElement("form");
    form.method = "POST";
    form.action = `${cluster}/embed`;
    form.enctype = enctype;
    form.target = name;
    const input = document.createElement("input");
    // text/plain sends name=value: this makes the body {"texts": ["MARK form"], "x": "="} (valid JSON)
    input.name = `{"texts": ["${mark} ${name}"], "x": "`;
    input.value = `"}`;
    form.append(input);
    document.body.append(form);
    const loaded = new Promise((resolve) => frame.addEventListener("load", resolve, { once: true }));
    form.submit();
    await Promise.race([loaded, new Promise((resolve) => setTimeout(resolve, 10000))]);
    let text = null;
    try {
      text = frame.contentDocument ? frame.contentDocument.body.innerText : null;
    } catch (error) {
      text = null; // cross-origin: the page may not look into the frame
    }
    out[name] = { read: text !== null, text };
  }
  return out;
}

const profile = mkdtempSync(join(tmpdir(), "embed-origins-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run",
      `--host-resolver-rules=MAP ${rebindHost} 127.0.0.1`],
  });
  const page = context.pages()[0] || await context.newPage();

  step = "the foreign page";
  await page.goto(process.env.FOREIGN, { waitUntil: "load" });
  seen.foreign = await page.evaluate(attack, { cluster, mark });

  step = "a rebinding page (its own name, resolved to 127.0.0.1, on the cluster's port)";
  const port = new URL(cluster).port;
  const rebound = `http://${rebindHost}:${port}`;
  const landing = await page.goto(`${rebound}/livez`, { waitUntil: "load" });
  seen.rebind_landing = { status: landing.status(), text: await landing.text() };
  seen.rebind = await page.evaluate(async ({ mark }) => {
    const out = {};
    for (const [name, url, init] of [
      ["embed", "/embed", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ texts: [`${mark} rebind`] }) }],
      ["status_json", "/status.json", {}]]) {
      const r = await fetch(url, init); // same-origin: the page reads whatever is answered
      out[name] = { status: r.status, text: await r.text() };
    }
    return out;
  }, { mark });

  step = "the allowed page";
  await page.goto(process.env.ALLOWED, { waitUntil: "load" });
  seen.allowed = await page.evaluate(async ({ cluster, mark }) => {
    const r = await fetch(`${cluster}/embed`, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ texts: [`${mark} allowed one`, `${mark} allowed two`] }) });
    const body = await r.json();
    const plain = await fetch(`${cluster}/embed`, { method: "POST", headers: { "Content-Type": "text/plain" },
      body: "{}" });
    return { status: r.status, rows: body.vectors ? body.vectors.length : null,
      dim: body.vectors ? body.vectors[0].length : null, plain: { status: plain.status, text: await plain.text() } };
  }, { cluster, mark });
  process.stdout.write(JSON.stringify(seen) + "\n");
} catch (error) {
  process.stdout.write(JSON.stringify({ ...seen, failed: step, error: String(error && error.stack || error) }) + "\n");
  process.exitCode = 1;
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}
