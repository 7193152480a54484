// The admin page of sse-fast (/admin), built on the browser SDK. No build step: the server serves this file as it is.
//
// Everything it shows comes from admin endpoints (GET /api/connections, /api/tasks?all=true, /api/admin/recent) and
// /metrics, read once a second with the credential entered on the page: a JWT with `admin: true` (sent as
// `Authorization: Bearer`) or an API key (`X-API-Key`). The credential stays in this page's memory, or in
// sessionStorage when "keep for this tab" is ticked, and never goes into a URL. The page holds no stream: API keys do
// not open streams (docs/protocol.md section 6), and the tail of the log shows every scope, which no one stream sees.
// Publishes and task controls go through the SDK's client (its queue, retries and errors). Every value is written
// with textContent, never as HTML.

// @ts-ignore -- served at /sdk/sse-fast.js (./sse-fast.js in the package); typed just below.
import * as served from "/sdk/sse-fast.js";

/** @type {typeof import("./sse-fast.js")} */
const sdk = served;

const STORE = "sse-fast-admin";
const POLL_MS = 1000;
const CHART_POINTS = 60;
const RECENT = 50;
const FINISHED = new Set(["completed", "failed", "cancelled", "timed_out"]);

/** @typedef {{ kind: "jwt" | "apikey", value: string }} Credential */

/** @param {string} id @returns {any} */
const $ = (id) => document.getElementById(id);

/** @type {Credential | null} */
let credential = null;
/** @type {import("./sse-fast.js").Client | null} */
let client = null;
let polling = false;
/** Whether the server refused the credential: polling waits for the next sign-in. */
let refused = false;
/** @type {{ t: number, delivered: number } | null} */
let lastDelivered = null;
/** @type {Record<string, number[]>} */
const series = { deliveries: [], streams: [], slow: [] };

// -- the credential ----------------------------------------------------------------------------------------------

/** @returns {Record<string, string>} */
function authHeaders() {
  if (!credential) return {};
  if (credential.kind === "jwt") return { Authorization: `Bearer ${credential.value}` };
  return { "X-API-Key": credential.value };
}

/** A send-only SDK client with the current credential (no stream: see the top of this file). */
function newClient() {
  client?.dispose();
  const common = { autoConnect: false, shareAcrossTabs: false, queueSize: 20 };
  client =
    credential?.kind === "jwt"
      ? sdk.createClient({ ...common, token: credential.value })
      : sdk.createClient({ ...common, clientId: "admin-page", headers: authHeaders() });
}

function loadCredential() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(STORE) ?? "null");
    if (saved && (saved.kind === "jwt" || saved.kind === "apikey") && typeof saved.value === "string") {
      credential = saved;
      $("cred-kind").value = saved.kind;
      $("remember").checked = true;
    }
  } catch {
    sessionStorage.removeItem(STORE);
  }
}

/** @param {SubmitEvent} event */
function signIn(event) {
  event.preventDefault();
  const value = $("cred").value.trim();
  const kind = $("cred-kind").value === "apikey" ? "apikey" : "jwt";
  credential = value ? { kind, value } : null;
  $("cred").value = "";
  if (credential && $("remember").checked) sessionStorage.setItem(STORE, JSON.stringify(credential));
  else sessionStorage.removeItem(STORE);
  newClient();
  refused = false;
  poll();
}

function signOut() {
  credential = null;
  sessionStorage.removeItem(STORE);
  $("remember").checked = false;
  newClient();
  clearViews();
  refused = false;
  poll();
}

/** @param {string} text @param {"ok" | "error" | ""} [kind] */
function setStatus(text, kind = "") {
  const status = $("status");
  status.textContent = text;
  status.className = kind;
}

// -- reading the server ------------------------------------------------------------------------------------------

/** GET `path` with the credential; the JSON answer, or an SDK error with the server's status and code. */
async function getJSON(/** @type {string} */ path) {
  const res = await fetch(path, { headers: authHeaders(), cache: "no-store", credentials: "same-origin" });
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const ok = body && typeof body.code === "string";
    const Err = res.status === 401 || res.status === 403 ? sdk.AuthError : sdk.ServerError;
    throw new Err(ok ? body.error : `HTTP ${res.status}`, res.status, ok ? body.code : `http_${res.status}`);
  }
  return body;
}

async function poll() {
  if (polling) return;
  polling = true;
  try {
    const [connections, tasks, recent] = await Promise.all([
      getJSON("/api/connections"),
      getJSON("/api/tasks?all=true"),
      getJSON(`/api/admin/recent?limit=${RECENT}`),
    ]);
    const who = credential ? (credential.kind === "jwt" ? "JWT" : "API key") : "no credential (SSE_FAST_AUTH=none)";
    setStatus(`signed in: ${who}; updated ${new Date().toLocaleTimeString()}`, "ok");
    renderConnections(connections);
    renderTasks(tasks.tasks);
    renderRecent(recent.messages);
    const metrics = await fetch("/metrics", { cache: "no-store" });
    if (metrics.ok) renderCharts(parseMetrics(await metrics.text()));
  } catch (err) {
    const e = /** @type {any} */ (err);
    if (e instanceof sdk.AuthError) {
      refused = true;
      clearViews();
      const why = e.status === 401 ? "a credential is needed" : "this credential is not an admin";
      setStatus(`${why} (${e.code}): sign in with a JWT that has admin: true, or an API key`, "error");
    } else setStatus(`cannot read the server: ${e.message ?? e}`, "error");
  } finally {
    polling = false;
  }
}

// -- rendering (textContent only) --------------------------------------------------------------------------------

/**
 * A table cell with `text`.
 * @param {unknown} text @param {string} [className] @returns {HTMLTableCellElement}
 */
function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) td.className = className;
  return td;
}

/** @param {number | undefined} ms */
const time = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "");

function clearViews() {
  for (const id of ["conn-rows", "task-rows", "recent-rows"]) $(id).replaceChildren();
  for (const id of ["conn-summary", "task-summary", "recent-summary"]) $(id).textContent = "";
}

/** @param {any[]} rows */
function renderConnections(rows) {
  const byNode = new Map();
  for (const row of rows) byNode.set(row.node || "", (byNode.get(row.node || "") ?? 0) + 1);
  const sorted = [...rows].sort((a, b) => String(a.node).localeCompare(String(b.node)) || a.connectedAt - b.connectedAt);
  $("conn-rows").replaceChildren(
    ...sorted.map((c) => {
      const tr = document.createElement("tr");
      tr.dataset.connectionId = c.connectionId;
      tr.append(
        cell(c.node, "mono"),
        cell(c.clientId),
        cell(c.connectionId, "mono"),
        cell((c.topics ?? []).join(", ") || "(none)", "mono"),
        cell(c.queuedFrames, "num"),
        cell(c.queuedBytes, "num"),
        cell(c.droppedFrames, "num"),
        cell(time(c.connectedAt)),
        cell(time(c.lastActiveAt)),
      );
      return tr;
    }),
  );
  const nodes = [...byNode].map(([node, n]) => `${node}: ${n}`).join(", ");
  $("conn-summary").textContent = `${rows.length} open${nodes ? ` (${nodes})` : ""}`;
}

/** @param {string} action @param {string} label @returns {HTMLButtonElement} */
function taskButton(action, label) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.dataset.action = action;
  return button;
}

/**
 * A task's row: made once, then updated in place on every poll (so that a button is never replaced under the
 * pointer that is about to click it).
 * @param {string} taskId @returns {HTMLTableRowElement}
 */
function taskRow(taskId) {
  const tr = document.createElement("tr");
  tr.dataset.taskId = taskId;
  for (let i = 0; i < 8; i++) tr.append(document.createElement("td"));
  const bar = document.createElement("progress");
  bar.max = 100;
  tr.cells[4].append(bar, document.createElement("span"));
  tr.cells[4].className = "num";
  tr.cells[0].className = "mono";
  tr.cells[5].className = "num";
  tr.cells[7].append(taskButton("pause", "Pause"), taskButton("resume", "Resume"), taskButton("cancel", "Cancel"));
  for (const button of tr.cells[7].querySelectorAll("button")) button.dataset.taskId = taskId;
  return tr;
}

/** @param {any[]} tasks */
function renderTasks(tasks) {
  const tbody = $("task-rows");
  /** @type {Map<string, HTMLTableRowElement>} */
  const existing = new Map([...tbody.rows].map((tr) => [tr.dataset.taskId, tr]));
  const sorted = [...tasks].sort((a, b) => b.createdAt - a.createdAt || String(a.taskId).localeCompare(b.taskId));
  const wanted = sorted.map((t) => {
    const tr = existing.get(t.taskId) ?? taskRow(t.taskId);
    const progress = Number(t.progress) || 0;
    const texts = [t.taskId, t.clientId, t.task, t.status, null, t.attempts, time(t.createdAt)];
    texts.forEach((text, i) => {
      if (text !== null && tr.cells[i].textContent !== String(text ?? "")) tr.cells[i].textContent = String(text ?? "");
    });
    tr.cells[3].className = `status status-${t.status}`;
    /** @type {HTMLProgressElement} */ (tr.cells[4].firstChild).value = progress;
    /** @type {HTMLElement} */ (tr.cells[4].lastChild).textContent = ` ${Math.round(progress)}%`;
    const [pause, resume, cancel] = tr.cells[7].querySelectorAll("button");
    pause.disabled = !(t.status === "running" || t.status === "pending");
    resume.disabled = t.status !== "paused";
    cancel.disabled = FINISHED.has(t.status);
    return tr;
  });
  const same = wanted.length === tbody.rows.length && wanted.every((tr, i) => tbody.rows[i] === tr);
  if (!same) tbody.replaceChildren(...wanted);
  const running = tasks.filter((t) => t.status === "running").length;
  $("task-summary").textContent = `${tasks.length} known, ${running} running`;
}

/** @param {HTMLElement} target */
async function onTaskClick(target) {
  const button = target.closest("button");
  if (!button || !client) return;
  const { action, taskId } = button.dataset;
  if (!taskId) return;
  try {
    if (action === "cancel") await client.cancelTask(taskId);
    else if (action === "pause") await client.pauseTask(taskId);
    else if (action === "resume") await client.resumeTask(taskId);
    setStatus(`${action}: ${taskId}`, "ok");
  } catch (err) {
    setStatus(`${action} ${taskId} refused: ${/** @type {any} */ (err).message}`, "error");
  }
  poll();
}

/** @param {any} m */
function scope(m) {
  if (m.target) return `→ ${m.target}`;
  if (m.topic) return `# ${m.topic}`;
  return "everyone";
}

/** @param {any[]} messages */
function renderRecent(messages) {
  $("recent-rows").replaceChildren(
    ...messages.map(({ cursor, message: m }) => {
      const tr = document.createElement("tr");
      tr.dataset.messageId = m.id;
      const payload = JSON.stringify(m.payload) ?? "";
      tr.append(
        cell(time(m.timestamp)),
        cell(m.type),
        cell(scope(m)),
        cell(m.source),
        cell(m.priority ?? 1, "num"),
        cell(payload.length > 300 ? `${payload.slice(0, 300)}…` : payload, "payload"),
        cell(m.id, "mono"),
        cell(cursor, "mono"),
      );
      return tr;
    }),
  );
  $("recent-summary").textContent = `newest ${messages.length}, every scope`;
}

// -- publishing --------------------------------------------------------------------------------------------------

/** @param {SubmitEvent} event */
async function publish(event) {
  event.preventDefault();
  const result = $("pub-result");
  result.className = "";
  const scopeKind = $("pub-scope").value;
  const dest = $("pub-dest").value.trim();
  const type = $("pub-type").value.trim() || "text";
  const raw = $("pub-payload").value;
  /** @type {any} */
  const message = { type, priority: Number($("pub-priority").value) };
  if ($("pub-ack").checked) message.requireAck = true;
  try {
    message.payload = type === "text" ? raw : JSON.parse(raw);
  } catch (err) {
    result.className = "error";
    result.textContent = `the payload is not JSON: ${/** @type {any} */ (err).message}`;
    return;
  }
  if (scopeKind === "topic") message.topic = dest;
  if (scopeKind === "direct") message.target = dest;
  if (scopeKind !== "broadcast" && !dest) {
    result.className = "error";
    result.textContent = scopeKind === "topic" ? "name a topic" : "name a client";
    return;
  }
  if (!client) return;
  try {
    const answer = await client.send(message);
    result.textContent = `published ${answer.messageId}: delivered to ${answer.delivered ?? answer.sentCount ?? 0}`;
  } catch (err) {
    const e = /** @type {any} */ (err);
    result.className = "error";
    result.textContent = `refused: ${e.code ? `${e.code}: ` : ""}${e.message}`;
  }
  poll();
}

// -- charts from /metrics ----------------------------------------------------------------------------------------

/**
 * The samples of a Prometheus text exposition without labels, by name (`sse_fast_delivered_total` also as
 * `sse_fast_delivered`); with several workers, each sample's only label is `worker`, and they are added up.
 * @param {string} text @returns {Map<string, number>}
 */
export function parseMetrics(text) {
  const values = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!match || (match[2] && !/^\{worker="\d+"\}$/.test(match[2]))) continue;
    const value = Number(match[3]) + (match[2] ? (values.get(match[1]) ?? 0) : 0);
    values.set(match[1], value);
    if (match[1].endsWith("_total")) values.set(match[1].slice(0, -6), value);
  }
  return values;
}

/** @param {Map<string, number>} metrics */
function renderCharts(metrics) {
  const now = performance.now();
  const delivered = metrics.get("sse_fast_delivered") ?? 0;
  if (lastDelivered && now > lastDelivered.t) {
    const rate = Math.max(0, ((delivered - lastDelivered.delivered) * 1000) / (now - lastDelivered.t));
    push("deliveries", rate);
  }
  lastDelivered = { t: now, delivered };
  push("streams", metrics.get("sse_fast_connections") ?? 0);
  push("slow", metrics.get("sse_fast_slow_consumer_closes") ?? 0);
  for (const name of Object.keys(series)) draw(name);
}

/** @param {string} name @param {number} value */
function push(name, value) {
  series[name].push(value);
  if (series[name].length > CHART_POINTS) series[name].shift();
}

/** @param {string} name */
function draw(name) {
  const points = series[name];
  const svg = $(`chart-${name}`);
  const ns = "http://www.w3.org/2000/svg";
  const max = Math.max(1, ...points);
  const line = document.createElementNS(ns, "polyline");
  const step = 300 / (CHART_POINTS - 1);
  const offset = CHART_POINTS - points.length;
  line.setAttribute("points", points.map((v, i) => `${(offset + i) * step},${78 - (v / max) * 74}`).join(" "));
  const base = document.createElementNS(ns, "line");
  for (const [k, v] of Object.entries({ x1: 0, y1: 78, x2: 300, y2: 78 })) base.setAttribute(k, String(v));
  svg.replaceChildren(base, line);
  const last = points.at(-1);
  $(`value-${name}`).textContent = last === undefined ? "-" : String(Math.round(last * 10) / 10);
  svg.dataset.points = String(points.length);
  svg.dataset.last = last === undefined ? "" : String(last);
}

// -- start -------------------------------------------------------------------------------------------------------

function start() {
  loadCredential();
  newClient();
  $("login").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("publish-form").addEventListener("submit", publish);
  $("task-rows").addEventListener("click", (/** @type {MouseEvent} */ e) => onTaskClick(/** @type {any} */ (e.target)));
  poll();
  setInterval(() => refused || poll(), POLL_MS);
}

start();
