// Drives Debian's chromium (playwright-core, no bundled browser) through the live /status page of a real
// cluster with two workers; run by tests/integration/test_status_page_browser.py, which checks what it reports.
//
//   node status_page.mjs   with STATUS_URL, EMBED_API_KEY (optional), SCREENSHOT, PHONE_SCREENSHOT set
//
// Steps: (with a key) the page shows no data before the key is given; both workers ready; load sent ->
// texts/s above zero on the page; SIGKILL a worker -> its row shows restarting, then ready; screenshots.
// It prints one JSON line with what it saw and exits 0, or prints the failing step and exits 1.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const url = process.env.STATUS_URL;
const key = process.env.EMBED_API_KEY || "";
const base = new URL(url).origin;
const auth = key ? { Authorization: `Bearer ${key}` } : {};
const seen = { steps: [] };
let step = "launch";

function note(name, data = {}) {
  seen.steps.push({ step: name, at: Date.now() / 1000, ...data });
  process.stderr.write(`status_page.mjs: ${name} ${JSON.stringify(data)}\n`);
}

async function rowState(page, worker) {
  return page.locator(`tr[data-worker="${worker}"] td.state .state-label`).textContent({ timeout: 1000 })
    .catch(() => null);
}

async function waitFor(what, check, timeoutMs) {
  step = what;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs / 1000} s: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function embedLoop(stop) {
  const texts = Array.from({ length: 32 }, (_, i) => `status page load text ${i}: the quick brown fox`);
  let sent = 0;
  while (!stop.done) {
    const r = await fetch(`${base}/embed`, { method: "POST", headers: { "Content-Type": "application/json", ...auth },
      body: JSON.stringify({ texts, cache: false }) });  // the workers must compute them: the page shows their rate
    const body = await r.text(); // read to the end: an unread body keeps its connection from being reused
    if (r.status !== 200) throw new Error(`/embed answered ${r.status}: ${body}`);
    sent += texts.length;
  }
  return sent;
}

const profile = mkdtempSync(join(tmpdir(), "embed-status-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run"],
    viewport: { width: 1280, height: 800 },
  });
  const page = context.pages()[0] || await context.newPage();
  const consoleErrors = [];
  page.on("console", (m) => { // the 401s before the key is given are the browser logging what we asked for
    if (m.type() === "error" && !m.text().includes("status of 401")) consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  step = "open /status";
  await page.goto(url, { waitUntil: "load" });

  if (key) {
    step = "the key form, and no data, before the key";
    await page.locator("#key-form").waitFor({ state: "visible", timeout: 15000 });
    await page.waitForTimeout(2500); // a couple of polls: still nothing may show
    const html = await page.content();
    const leaked = ["worker-0", "worker-1", "all-MiniLM", "texts in"].filter((s) => html.includes(s));
    const dataVisible = await page.locator("#data").isVisible();
    note("locked", { leaked, dataVisible, rows: await page.locator("#workers tr").count() });
    if (leaked.length || dataVisible) throw new Error(`data shown before the key: ${leaked} ${dataVisible}`);
    await page.fill("#key-input", "wrong-key");
    await page.click("#key-form button");
    await waitFor("a wrong key refused", async () =>
      (await page.locator("#key-error").textContent()).includes("refused"), 15000);
    await page.fill("#key-input", key);
    await page.click("#key-form button");
    await page.locator("#data").waitFor({ state: "visible", timeout: 15000 });
    note("unlocked");
  }

  await waitFor("both workers ready", async () =>
    (await rowState(page, "worker-0")) === "ready" && (await rowState(page, "worker-1")) === "ready", 60000);
  note("both ready");

  const stop = { done: false };
  const loads = [embedLoop(stop), embedLoop(stop)];
  const rate = await waitFor("texts/s above zero on the page", async () => {
    const text = await page.locator("#cluster-texts-per-s").textContent();
    const value = Number.parseFloat(text.replace(/,/g, ""));
    return value > 0 ? value : null;
  }, 60000);
  note("texts/s", { rate });
  await page.waitForTimeout(3000); // a few seconds of load for the charts
  stop.done = true;
  const sent = (await Promise.all(loads)).reduce((a, b) => a + b, 0);
  note("load done", { sent });

  const victim = "worker-1";
  await waitFor(`${victim} ready after the load`, async () => (await rowState(page, victim)) === "ready", 30000);
  const pid = Number(await page.locator(`tr[data-worker="${victim}"]`).getAttribute("data-pid"));
  step = `SIGKILL ${victim} (pid ${pid})`;
  process.kill(pid, "SIGKILL");
  note("killed", { pid });
  const states = [];
  const record = async () => {
    const s = await rowState(page, victim);
    if (s && states[states.length - 1] !== s) states.push(s);
    return s;
  };
  await waitFor(`${victim} shows restarting`, async () => (await record()) === "restarting", 30000);
  const reason = await page.locator(`tr[data-worker="${victim}"] .reason`).textContent().catch(() => null);
  note("restarting", { reason });
  await waitFor(`${victim} back to ready`, async () => (await record()) === "ready", 120000);
  const newPid = Number(await page.locator(`tr[data-worker="${victim}"]`).getAttribute("data-pid"));
  const restarts = await page.locator(`tr[data-worker="${victim}"] td.restarts`).textContent();
  note("ready again", { states, newPid, restarts });
  seen.killed = { worker: victim, pid, newPid, states, reason, restarts };

  step = "the event list";
  await waitFor("the restart in the events", async () =>
    (await page.locator('#events li[data-kind="worker_restarted"]').count()) > 0, 15000);
  seen.events = await page.locator("#events li").allTextContents();
  seen.rate = rate;
  seen.sent = sent;

  step = "layout under load";
  const more = { done: false };
  const moreLoads = [embedLoop(more), embedLoop(more)];
  const box = async () => page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth }));
  // no layout jump as numbers change: the worker table's cells, the facts, the charts' figures and legends
  // keep their boxes across polls under load
  const boxes = () => page.evaluate(() => [...document.querySelectorAll(
    "#workers td, .facts div, .chart .now, .legend li, .chart svg")].map((el) => {
    const r = el.getBoundingClientRect();
    return [Math.round(r.left), Math.round(r.top), Math.round(r.width), Math.round(r.height)];
  }));
  await page.waitForTimeout(2500);
  const before = await boxes();
  await page.waitForTimeout(2500);
  seen.stableWidths = JSON.stringify(before) === JSON.stringify(await boxes());
  seen.desktop = await box();
  note("layout checked");
  step = "screenshot at 1280 wide";
  await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  step = "phone width (390x844)";
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(1500);
  seen.phone = await box();
  if (process.env.PHONE_SCREENSHOT) await page.screenshot({ path: process.env.PHONE_SCREENSHOT, fullPage: true });
  more.done = true;
  note("load stopped");
  seen.sent += (await Promise.all(moreLoads)).reduce((a, b) => a + b, 0);
  seen.consoleErrors = consoleErrors;
  process.stdout.write(JSON.stringify(seen) + "\n");
} catch (error) {
  process.stdout.write(JSON.stringify({ ...seen, failed: step, error: String(error) }) + "\n");
  process.exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
