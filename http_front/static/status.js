// The status page: polls /status.json every second and draws it. No library, no build step.
// Every value is written with textContent (never as HTML): host names and reasons come from the workers.
"use strict";

const POLL_MS = 1000;
const KEY_STORE = "embed-cluster-api-key";
const SVG = "http://www.w3.org/2000/svg";
const W = 600, H = 120; // the charts' viewBox
const COLUMNS = [
  ["id", "Worker"], ["host", "Host"], ["where", "Where"], ["device", "Device"], ["precision", "Precision"],
  ["backend", "Engine"], ["state", "State"], ["texts_per_s", "Texts/s"], ["served_texts", "Served"], ["restarts", "Restarts"],
  ["credit", "Credit"],
];
const NUMERIC = new Set(["texts_per_s", "served_texts", "restarts", "credit"]);
const EVENT_NAMES = {
  worker_joined: "joined", worker_restarted: "restarted", worker_exited: "exited", worker_lost: "lost",
  worker_failed: "failed", worker_refused: "refused", broker_restarted: "broker restarted",
  broker_unreachable: "broker unreachable", broker_back: "broker back",
};

const $ = (id) => document.getElementById(id);
let timer = null;

function key() { return sessionStorage.getItem(KEY_STORE); }

function fmt(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "-";
  if (typeof value !== "number") return String(value);
  return value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function fmtInt(value) { return fmt(value, 0); }

function duration(seconds) {
  if (typeof seconds !== "number") return "-";
  const s = Math.floor(seconds), d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60), sec = s % 60;
  const two = (n) => String(n).padStart(2, "0");
  return (d ? `${d}d ` : "") + `${two(h)}:${two(m)}:${two(sec)}`;
}

function clock(epoch) {
  return new Date(epoch * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

function show(view) {
  document.body.dataset.view = view;
  $("key-form").hidden = view !== "key";
  $("data").hidden = view !== "data";
}

async function poll() {
  clearTimeout(timer);
  const headers = { Accept: "application/json" };
  const k = key();
  if (k) headers.Authorization = `Bearer ${k}`;
  try {
    const reply = await fetch("/status.json", { headers, cache: "no-store" });
    if (reply.status === 401) {
      needKey(k ? "That key was refused." : "");
      return; // polling resumes when a key is given
    }
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    render(await reply.json());
    $("banner").hidden = true;
  } catch (error) {
    $("banner").textContent = `The front does not answer (${error.message}); the figures below are from before.`;
    $("banner").hidden = false;
    setBadge("unreachable");
  }
  timer = setTimeout(poll, POLL_MS);
}

function needKey(message) {
  sessionStorage.removeItem(KEY_STORE);
  // drop whatever was shown under another key: nothing is revealed without a valid one
  $("workers").replaceChildren();
  $("events").replaceChildren();
  for (const el of document.querySelectorAll("#data dd, #data [data-series], #data .ymax")) el.textContent = "-";
  for (const svg of document.querySelectorAll("#data svg")) svg.replaceChildren();
  $("updated").textContent = "-";
  show("key");
  setBadge("locked");
  $("key-error").textContent = message;
  $("key-input").focus();
}

function setBadge(state) {
  const badge = $("overall");
  badge.dataset.state = state;
  badge.textContent = state.replace(/_/g, " ");
}

function render(data) {
  show("data");
  setBadge(data.status);
  $("updated").textContent = clock(data.now);
  const models = data.models || [];  // every model, the default first; one: the seed's model_id
  $("f-model").textContent = models.length > 1
    ? models.map((m) => `${m.alias} (${m.kind || "?"}, ${m.workers} worker${m.workers === 1 ? "" : "s"})`).join(", ")
    : data.model_id || "-";
  $("f-dim").textContent = fmtInt(data.dim);
  $("f-precision").textContent = (data.precision || []).join(", ") || "-";
  $("f-engine").textContent = (data.backend || []).join(", ") || "-";
  $("f-cosine").textContent = fmt(data.cosine, 5);
  $("f-version").textContent = data.version;
  $("f-uptime").textContent = duration(data.uptime_s);
  const history = data.history;
  const last = (name) => latest(history[name]);
  $("cluster-texts-per-s").textContent = fmt(last("texts_per_s"));
  $("f-queue").textContent = `${fmtInt(data.queue_texts)} texts in ${fmtInt(data.queue_jobs)} jobs`;
  const l = data.limits || {};
  $("f-limits").textContent = `${fmtInt(l.max_texts)} texts, ${fmtInt(l.max_text_chars)} chars a text, ` +
    `${fmtInt(l.max_body_bytes)} bytes, ${fmt(l.request_timeout, 0)} s, queue ${fmtInt(l.max_queue_texts)} texts`;
  $("f-cache").textContent = cacheText(data.cache);
  renderWorkers(data.workers);
  renderEvents(data.events);
  for (const el of document.querySelectorAll("[data-series]")) {
    const name = el.dataset.series;
    el.textContent = name === "queue_texts" ? fmtInt(last(name)) : fmt(last(name));
  }
  const t = history.t, end = data.now, start = end - data.window;
  chart("chart-texts", t, start, end, [["s-main", history.texts_per_s]]);
  chart("chart-requests", t, start, end, [["s-ok", history.ok_per_s], ["s-4xx", history.client_errors_per_s],
    ["s-5xx", history.server_errors_per_s]]);
  chart("chart-queue", t, start, end, [["s-queue", history.queue_texts]], true);
  chart("chart-latency", t, start, end, [["s-p50", history.p50_ms], ["s-p95", history.p95_ms]]);
}

function cacheText(c) {
  if (!c) return "off";
  const looked = c.hits + c.misses;
  const rate = looked ? `${fmt((100 * c.hits) / looked, 1)}% hits` : "no lookups yet";
  return `${rate} (${fmtInt(c.hits)} hits, ${fmtInt(c.misses)} misses), ${fmtInt(c.entries)} vectors, ` +
    `${fmt(c.bytes / 1048576, 1)} of ${fmt(c.max_bytes / 1048576, 0)} MiB, ${fmtInt(c.evictions)} evicted`;
}

function latest(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
  return null;
}

function cellText(worker, name) {
  switch (name) {
    case "where": return worker.remote === true ? "remote" : worker.remote === false ? "local" : "-";
    case "texts_per_s": return fmt(worker.texts_per_s);
    case "served_texts": case "restarts": case "credit": return fmtInt(worker[name]);
    default: return worker[name] === null || worker[name] === undefined ? "-" : String(worker[name]);
  }
}

function renderWorkers(workers) {
  const body = $("workers");
  const rows = new Map([...body.children].map((tr) => [tr.dataset.worker, tr]));
  const seen = new Set();
  workers.forEach((worker, index) => {
    seen.add(worker.id);
    let tr = rows.get(worker.id);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.worker = worker.id;
      for (const [name, label] of COLUMNS) {
        const td = document.createElement("td");
        td.className = name + (NUMERIC.has(name) ? " num" : "");
        td.dataset.label = label;
        tr.append(td);
      }
    }
    if (body.children[index] !== tr) body.insertBefore(tr, body.children[index] || null);
    tr.className = worker.state === "left" ? "left" : "";
    tr.dataset.state = worker.state;
    tr.dataset.pid = worker.pid ?? "";
    COLUMNS.forEach(([name], i) => {
      const td = tr.children[i];
      if (name !== "state") { td.textContent = cellText(worker, name); return; }
      const label = document.createElement("span");
      label.className = "state-label";
      label.dataset.state = worker.state;
      label.textContent = worker.state;
      const parts = [label];
      if (worker.reason && worker.state !== "ready" && worker.state !== "busy") {
        const reason = document.createElement("span");
        reason.className = "reason";
        reason.textContent = worker.reason;
        parts.push(reason);
      }
      td.replaceChildren(...parts);
    });
  });
  for (const [id, tr] of rows) if (!seen.has(id)) tr.remove();
  $("no-workers").hidden = workers.length > 0;
}

function renderEvents(events) {
  const items = events.map((event) => {
    const li = document.createElement("li");
    li.dataset.kind = event.kind;
    const when = document.createElement("time");
    when.dateTime = new Date(event.t * 1000).toISOString();
    when.textContent = clock(event.t);
    const what = document.createElement("span");
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = (EVENT_NAMES[event.kind] || event.kind) + ": ";
    what.append(kind, document.createTextNode(event.text));
    li.append(when, what);
    return li;
  });
  $("events").replaceChildren(...items);
  $("no-events").hidden = events.length > 0;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (value <= m * step) return m * step;
  return 10 * step;
}

function chart(id, times, start, end, series, integer = false) {
  const figure = $(id);
  const svg = figure.querySelector("svg");
  let top = 0;
  for (const [, values] of series) for (const v of values) if (v !== null && v > top) top = v;
  top = niceMax(top);
  figure.querySelector(".ymax").textContent = integer ? fmtInt(top) : fmt(top, top < 10 ? 1 : 0);
  const paths = [];
  for (const y of [0.25, 0.5, 0.75]) {
    const grid = document.createElementNS(SVG, "path");
    grid.setAttribute("class", "grid");
    grid.setAttribute("d", `M0 ${H * y} H${W}`);
    paths.push(grid);
  }
  const span = Math.max(1, end - start);
  for (const [cls, values] of series) {
    let d = "", pen = false;
    values.forEach((v, i) => {
      if (v === null || times[i] < start) { pen = false; return; }
      const x = ((times[i] - start) / span) * W, y = H - (v / top) * (H - 4) - 1;
      d += `${pen ? "L" : "M"}${x.toFixed(1)} ${y.toFixed(1)} `;
      pen = true;
    });
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("class", cls);
    path.setAttribute("d", d.trim() || "M0 0");
    paths.push(path);
  }
  svg.replaceChildren(...paths);
}

function renderHead() {  // the header from COLUMNS, so that it always names the cells renderWorkers writes
  $("workers-head").replaceChildren(...COLUMNS.map(([name, label]) => {
    const th = document.createElement("th");
    th.scope = "col";
    th.className = `col-${name}` + (NUMERIC.has(name) ? " num" : "");  // its width: status.css
    th.textContent = label;
    return th;
  }));
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("key-input").value.trim();
  if (!value) return;
  sessionStorage.setItem(KEY_STORE, value);
  $("key-input").value = "";
  $("key-error").textContent = "";
  poll();
});

renderHead();
poll();
