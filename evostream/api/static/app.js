// The evostream dashboard: reads the HTTP API, then follows /stream (server-sent events) so that tokens, risk,
// alerts, drift windows, routing decisions and governance changes appear as they are published, without a reload.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_TRACES = 30;
const traces = new Map(); // trace id -> {el, tokens, risk}
let mineId = null;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

async function api(path, opts = {}) {
  const r = await fetch(path, opts);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
    throw Object.assign(new Error(`${r.status}: ${detail}`), { status: r.status });
  }
  return body;
}

const num = (x, digits) => (typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "n/a");

function throttle(fn, ms) {
  let timer = null;
  return () => { if (!timer) timer = setTimeout(() => { timer = null; fn(); }, ms); };
}

// --- colours ---------------------------------------------------------------------------------------------------
function entropyColour(bits) {  // 0 bits: green, 2 bits: yellow, >= 4 bits: red
  const t = Math.max(0, Math.min(1, (bits || 0) / 4));
  return `hsl(${Math.round(140 - 140 * t)} 75% 83%)`;
}
function riskColour(score) {
  const t = Math.max(0, Math.min(1, score));
  return `hsl(${Math.round(140 - 140 * t)} 70% 78%)`;
}

// --- overview and header ---------------------------------------------------------------------------------------
async function refreshOverview() {
  try {
    const o = await api("/overview");
    $("rps").textContent = o.requests_per_s.toFixed(2);
    $("tps").textContent = o.tokens_per_s.toFixed(1);
    $("apm").textContent = o.alerts_per_min.toFixed(1);
    const v = Object.entries(o.versions_answering).map(([k, n]) => `${k} (${n})`).join(", ");
    $("answering").textContent = v || "none";
  } catch (e) { /* shown by the status pill */ }
}

// --- routes: self-share, escalations, cost against always the reference (GET /routes, refreshed on each decision) --
const pct = (x) => (typeof x === "number" ? `${(100 * x).toFixed(1)}%` : "–");
const usd = (x) => num(x, 6);

async function refreshRoutes() {
  try {
    const s = await api("/routes");
    const t = s.total;
    $("self-share").textContent = pct(t.self_share);
    $("escalations").textContent = `${t.escalated} of ${t.reference_answered + t.self_answered}`;
    $("cost-vs-reference").textContent = `${usd(t.paid_usd)} / ${usd(t.reference_usd)} (saved ${usd(t.saved_usd)})`;
    const body = $("route-table").querySelector("tbody");
    body.replaceChildren(...Object.entries(s.by_route).map(([name, r]) => el("tr", { "data-route": name },
      ...[name, r.requests, r.self_answered, r.reference_answered, r.escalated, r.cache_hits, r.refusals,
        pct(r.self_share), usd(r.paid_usd), usd(r.reference_usd), usd(r.saved_usd)]
        .map((x) => el("td", { text: String(x) })))));
    $("routes-note").textContent = s.unpriced.length
      ? `no price for ${s.unpriced.join(", ")}: costed at 0 (EVOSTREAM_ROUTE_PRICES)` : "";
  } catch (e) { /* shown by the status pill */ }
}
const routesSoon = throttle(refreshRoutes, 500);

// "live" once the API is healthy, the event stream is open and what was there before it has been read
const state = { health: null, streamOpen: false, loaded: false };

function showStatus() {
  const pill = $("status");
  let text = "connecting…", ok = false;
  if (state.health === "unreachable") text = "API unreachable";
  else if (state.health && state.health !== "ok") text = `degraded: ${state.health}`;
  else if (state.health === "ok" && !state.streamOpen) text = "reconnecting…";
  else if (state.health === "ok" && state.loaded) { text = "live"; ok = true; }
  pill.textContent = text;
  pill.className = "pill " + (ok ? "ok" : (text === "connecting…" ? "" : "bad"));
}

// a service the panels depend on that is not running (its consumer group has no member): said in a banner, so an
// empty panel or a risk that never comes has its reason on the page
function showNotices(notices) {
  $("notices").replaceChildren(...notices.map((n) => el("p", { class: "notice", text: n })));
}

async function refreshHealth() {
  try {
    const h = await api("/health");
    state.health = h.status === "ok" ? "ok" : (h.error || h.live.error || "broker unreachable");
    const active = Object.entries(h.active_versions || {}).map(([m, v]) => `${m}: ${v || "-"}`).join("  ");
    $("active").textContent = active ? `production ${active}` : "";
    showNotices(h.notices || []);
  } catch (e) {
    state.health = "unreachable";
    showNotices([]);
  }
  showStatus();
}

// --- live traces -----------------------------------------------------------------------------------------------
// A card is made by a trace's steps (the newest MAX_TRACES traces are kept); its risk, completion and alerts only
// update it, so a late risk report of a trace already scrolled away does not bring back an empty card.
function traceCard(rec, make = false) {
  let t = traces.get(rec.trace_id);
  if (t || !make) return t;
  const risk = el("span", { class: "risk", text: "risk …" });
  const answer = el("span", { class: "answer" });
  const verdict = el("span", { class: "verdict note" });
  const judge = (label) => el("button", { type: "button", class: `judge ${label.toLowerCase()}`, text: label.toLowerCase(),
    title: `label this answer ${label.toLowerCase()} (evo.outcomes; needs an actor key)` });
  const right = judge("RIGHT"), wrong = judge("WRONG");
  right.addEventListener("click", () => label(rec.trace_id, "RIGHT", verdict));
  wrong.addEventListener("click", () => label(rec.trace_id, "WRONG", verdict));
  const card = el("div", { class: "trace", "data-trace-id": rec.trace_id },
    el("div", { class: "meta" }, el("span", { text: rec.trace_id.slice(0, 12) }),
      el("span", { text: rec.model_version || "" }), risk, answer, right, wrong, verdict),
    el("div", { class: "tokens" }));
  t = { el: card, risk, answer, tokens: card.querySelector(".tokens"), steps: new Set() };
  traces.set(rec.trace_id, t);
  if (rec.trace_id === mineId) card.classList.add("mine");
  $("traces").prepend(card);
  while (traces.size > MAX_TRACES) {
    const [oldest] = traces.keys();
    traces.get(oldest).el.remove();
    traces.delete(oldest);
  }
  return t;
}

function onStep(s) {
  const t = traceCard(s, true);
  if (t.steps.has(s.step)) return; // a step delivered twice is shown once
  t.steps.add(s.step);
  const tok = el("span", { class: "tok", text: s.token_text, "data-step": String(s.step) });
  tok.style.background = entropyColour(s.entropy_bits);
  tok.title = `step ${s.step}: entropy ${num(s.entropy_bits, 2)} bits, margin ${num(s.top1_top2_margin, 2)}, ` +
    `surprisal ${num(s.surprisal_bits, 2)} bits, ${num(s.latency_us / 1000, 1)} ms`;
  const after = [...t.tokens.children].find((c) => Number(c.dataset.step) > s.step);
  t.tokens.insertBefore(tok, after || null);
}

function onRisk(r) {
  const t = traceCard(r);
  if (!t) return;
  if (t.riskStage === "FINAL" && r.stage !== "FINAL") return;
  t.riskStage = r.stage;
  t.risk.textContent = `risk ${num(r.score, 2)}${r.stage === "EARLY" ? " (early)" : ""}`;
  t.risk.style.background = riskColour(r.score);
  t.risk.title = `judged by ${r.policy}: ` + ((r.flags || []).join(", ") + (r.reason ? `: ${r.reason}` : ""));
  t.risk.dataset.score = String(r.score);
  t.risk.dataset.policy = r.policy || "";
}

function onCompletion(c) {
  const t = traceCard(c);
  if (!t) return;
  t.answer.textContent = c.error ? `error: ${c.error}` : `→ ${c.output_text}`;
  t.el.classList.add("done");
}

const alertsSeen = new Set();

function onAlert(a) {
  const key = `${a.trace_id}|${a.stage}|${a.severity}|${a.produced_at_us}`;
  if (alertsSeen.has(key)) return; // in the history and on the stream: shown once
  alertsSeen.add(key);
  const when = new Date(a.produced_at_us / 1000).toLocaleTimeString();
  const li = el("li", { class: a.severity, text: `${when} ${a.severity} ${num(a.score, 2)} ${a.trace_id.slice(0, 12)} ` +
    `${a.model_version} [${a.flags.join(", ")}] ${a.reason || ""}` });
  $("alerts").prepend(li);
  while ($("alerts").children.length > 200) $("alerts").lastChild.remove();
}

$("ask").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  $("send").disabled = true;
  $("mine").textContent = "asking…";
  $("mine").className = "note";
  try {
    const out = await api("/infer", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt, max_new_tokens: Number($("max-tokens").value) || 32 }),
    });
    mineId = out.trace_id;
    document.querySelectorAll(".trace.mine").forEach((e) => e.classList.remove("mine"));
    const t = traces.get(out.trace_id);
    if (t) t.el.classList.add("mine");
    const risk = out.risk ? `risk ${num(out.risk.score, 2)}` : "risk not reported yet";
    $("mine").textContent = `answer: ${out.answer} · ${out.model_version} · ${risk} · trace ${out.trace_id}`;
    $("mine").dataset.traceId = out.trace_id;
  } catch (e) {
    $("mine").textContent = String(e.message || e);
    $("mine").className = "note error";
  } finally {
    $("send").disabled = false;
  }
});

// --- drift: one chart per statistic, one line per model version, windows in time order ----------------------------
const drift = { windows: new Map(), charts: new Map() }; // "version|end" -> window
const MAX_WINDOWS = 2000;
const COLOURS = ["#2f5bd3", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e"];

function drawDrift() {
  if (!drift.windows.size || typeof uPlot === "undefined") return;
  $("drift-empty")?.remove();
  const windows = [...drift.windows.values()].sort((a, b) => a.window_end_us - b.window_end_us);
  const versions = [...new Set(windows.map((w) => w.model_version))];
  const names = [...new Set(windows.flatMap((w) => w.statistics.map((s) => s.name)))];
  const xs = [...new Set(windows.map((w) => w.window_end_us / 1e6))].sort((a, b) => a - b);
  for (const name of names) {
    const data = [xs];
    for (const v of versions) {
      const at = new Map(windows.filter((w) => w.model_version === v)
        .map((w) => [w.window_end_us / 1e6, w.statistics.find((x) => x.name === name)?.value ?? null]));
      data.push(xs.map((x) => (at.has(x) ? at.get(x) : null)));
    }
    const key = `${name}|${versions.join(",")}`;
    let chart = drift.charts.get(name);
    if (chart && chart.key === key) { chart.plot.setData(data); continue; }
    if (chart) chart.box.remove();
    const box = el("div", { class: "chart", "data-statistic": name });
    $("drift-charts").append(box);
    const plot = new uPlot({
      title: name, width: 380, height: 180,
      // a few windows still read as times of day (uPlot's own time axis spans years around a single point)
      scales: { x: { time: false, range: (u, lo, hi) => [lo - 300, hi + 60] } },
      axes: [{ values: (u, vals) => vals.map((v) => new Date(v * 1000).toLocaleTimeString()) }, {}],
      series: [{}, ...versions.map((v, i) => ({ label: v, stroke: COLOURS[i % COLOURS.length], points: { show: true },
                                                 spanGaps: true }))],
    }, data, box);
    drift.charts.set(name, { key, box, plot });
  }
}

function onDrift(w) {
  drift.windows.set(`${w.model_version}|${w.window_end_us}`, w); // a window in the history and on the stream: once
  while (drift.windows.size > MAX_WINDOWS) drift.windows.delete(drift.windows.keys().next().value);
  drawDrift();
}

// --- registry and governance -----------------------------------------------------------------------------------
let registry = null;

// a metric as text: numbers rounded, lists and nested objects spelled out (task_accuracy: copy=0.98 reverse=0.95)
function shown(x) {
  if (typeof x === "number") return Number.isFinite(x) ? String(+x.toFixed(4)) : String(x);
  if (x === null || x === undefined) return "n/a";
  if (Array.isArray(x)) return `[${x.map(shown).join(", ")}]`;
  if (typeof x === "object") return `(${Object.entries(x).map(([k, v]) => `${k}=${shown(v)}`).join(" ")})`;
  return String(x);
}

function metricText(name, x) {
  if (x === null || typeof x !== "object" || Array.isArray(x)) return `${name}=${shown(x)}`;
  return `${name}: ${Object.entries(x).map(([k, v]) => `${k}=${shown(v)}`).join(" ")}`;
}

function lineageTree(model) {
  const versions = Object.values(model.versions);
  const children = new Map();
  for (const v of versions) {
    const p = v.parent || "";
    if (!children.has(p)) children.set(p, []);
    children.get(p).push(v);
  }
  const render = (parent) => {
    const ul = el("ul");
    for (const v of children.get(parent) || []) {
      const metrics = Object.entries(v.metrics || {}).map(([k, x]) => metricText(k, x));
      const val = v.validation ? (v.validation.passed ? "validation PASS" : "validation FAIL") : "not validated";
      const li = el("li", {},
        el("div", { class: "node", "data-version": v.version },
          el("span", { text: v.version }), el("span", { class: `stage ${v.stage}`, text: v.stage }),
          el("span", { class: "metrics", text: [val, v.operator ? `by ${v.operator}` : "", ...metrics].filter(Boolean).join(" · ") })),
        render(v.version));
      ul.append(li);
    }
    return ul;
  };
  return render("");
}

async function refreshRegistry() {
  try {
    registry = await api("/registry");
  } catch (e) { return; }
  const box = $("lineage");
  box.replaceChildren();
  for (const [name, model] of Object.entries(registry.models)) {
    box.append(el("div", { class: "lineage" }, el("strong", { text: `${name} (production ${model.production || "-"})` }),
      lineageTree(model)));
  }
  const pick = $("rb-model"), chosen = pick.value;
  pick.replaceChildren(...Object.keys(registry.models).map((m) => el("option", { value: m, text: m })));
  if (chosen && registry.models[chosen]) pick.value = chosen;
  fillTargets();
  const pending = $("pending");
  pending.replaceChildren();
  for (const p of registry.pending_approvals) {
    const b = el("button", { type: "button", text: "Approve" });
    b.addEventListener("click", () => act("/governance/approve", { model: p.model_name || p.model, version: p.version, stage: p.stage }));
    pending.append(el("li", {}, `${p.version} → ${p.stage}: ${p.approvers.length}/${p.needed} `, b));
  }
  if (!registry.pending_approvals.length) pending.append(el("li", { class: "note", text: "none" }));
}

function fillTargets() {
  const model = registry?.models[$("rb-model").value];
  const to = $("rb-to"), chosen = to.value;
  const options = [el("option", { value: "previous", text: "previous production" })];
  for (const v of Object.keys(model?.versions || {})) {
    if (v !== model.production) options.push(el("option", { value: v, text: v }));
  }
  to.replaceChildren(...options);
  if ([...to.options].some((o) => o.value === chosen)) to.value = chosen;
}
$("rb-model").addEventListener("change", fillTargets);

async function refreshTimeline() {
  try {
    const audit = await api("/governance/audit");
    $("timeline").replaceChildren(...audit.events.slice().reverse().map((e) =>
      el("li", { text: `#${e.sequence} ${e.when} ${e.actor}${e.model ? ` [${e.model}]` : ""} ${e.what}${e.reason ? `: ${e.reason}` : ""}` })));
  } catch (e) { /* status pill */ }
}

const KEY = "evostream.actor-key";
$("actor-key").value = sessionStorage.getItem(KEY) || "";
$("actor-key").addEventListener("change", () => {
  sessionStorage.setItem(KEY, $("actor-key").value.trim());
  $("key-state").textContent = $("actor-key").value ? `key of ${$("actor-key").value.split(".")[0]} (kept for this tab)` : "";
});

async function act(path, body) {
  const key = $("actor-key").value.trim();
  const out = $("gov-result");
  try {
    const r = await api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) },
      body: JSON.stringify(body),
    });
    out.textContent = `${r.event} #${r.sequence} by ${r.actor}` + (r.from_version ? `: ${r.from_version} → ${r.version}` : "");
    out.className = "note";
    refreshGovernance();
  } catch (e) {
    out.textContent = String(e.message || e);
    out.className = "note error";
  }
}

// One click is one label: its Idempotency-Key is made once, and a retry after a failed request sends the same key,
// so the server records the label once however many tries it took.
async function label(traceId, verdictLabel, out) {
  const key = $("actor-key").value.trim();
  const idem = crypto.randomUUID();
  let last;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const r = await api("/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Idempotency-Key": idem,
          ...(key ? { Authorization: `Bearer ${key}` } : {}) },
        body: JSON.stringify({ trace_id: traceId, label: verdictLabel }),
      });
      out.textContent = `${r.label.toLowerCase()} (${r.actor})`;
      out.className = "verdict note";
      return;
    } catch (e) {
      last = e;
      if (e.status && e.status < 500) break; // refused: a retry would be refused too
    }
  }
  out.textContent = String(last.message || last);
  out.className = "verdict note error";
}

$("rollback").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act("/governance/rollback", { model: $("rb-model").value, to: $("rb-to").value, reason: $("rb-reason").value });
});

const refreshGovernance = throttle(() => { refreshRegistry(); refreshTimeline(); refreshHealth(); }, 300);
const refreshRates = throttle(refreshOverview, 1000);

// --- start: the stream first; once it is open, what was there before; the stream's events are held until then,
// so none is lost in between and none shown twice (steps by number, risk by stage, alerts and windows by key).
// After a reconnect (or a "dropped" notice) the history is read again the same way.
async function loadHistory() {
  for (const a of await api("/alerts?last=50")) onAlert(a);
  for (const w of await api("/drift?last=500")) onDrift(w);
  for (const t of (await api("/traces?last=10")).reverse()) {
    const doc = await api(`/traces/${encodeURIComponent(t.trace_id)}`);
    for (const s of doc.steps) onStep(s);
    if (doc.risk) onRisk(doc.risk);
    if (doc.completion) onCompletion(doc.completion);
  }
}

async function start() {
  const held = [];
  let ready = false;
  let syncing = null;
  const events = new EventSource("/stream");
  const on = (name, fn) => events.addEventListener(name, (m) => {
    const rec = JSON.parse(m.data);
    if (ready) fn(rec); else held.push([fn, rec]);
  });
  const sync = async () => {
    ready = false;
    try { await loadHistory(); } catch (e) { /* the status pill says what is wrong */ }
    ready = true;
    for (const [fn, rec] of held.splice(0)) fn(rec);
    state.loaded = true;
    refreshGovernance();
    showStatus();
  };
  on("step", onStep);
  on("risk", onRisk);
  on("completion", (c) => { onCompletion(c); refreshRates(); routesSoon(); });
  on("route", () => routesSoon());
  on("alert", (a) => { onAlert(a); refreshRates(); });
  on("drift", onDrift);
  on("governance", () => refreshGovernance());
  events.addEventListener("dropped", () => { syncing = sync(); });
  events.onerror = () => { state.streamOpen = false; state.loaded = false; showStatus(); };
  events.onopen = () => { // the first open, and every reconnect: read what may have passed meanwhile
    state.streamOpen = true;
    syncing = sync();
    refreshHealth();
  };
  await Promise.all([refreshHealth(), refreshOverview(), refreshRegistry(), refreshTimeline(), refreshRoutes()]);
  setInterval(refreshOverview, 5000); // rates decay when traffic stops
  setInterval(refreshHealth, 5000); // a service started or stopped since: its notice comes or goes
  return syncing;
}

start();
