// @ts-check
/**
 * sse-fast for the browser: one reconnecting, resuming, deduplicating and acknowledging client of an sse-fast
 * server (docs/protocol.md), in the idiom of today's browser code. No dependencies; this file is what the server
 * serves at `/sdk/sse-fast.js` and what the npm package `sse-fast` ships.
 *
 *     import { createClient } from "/sdk/sse-fast.js";
 *     const client = createClient({ url: "https://push.example.com", token, topics: ["orders.*"] });
 *     client.subscribe("json", (message) => render(message.payload));
 *     await client.sendText("hello", { target: "bob" });
 *
 * The parts mirror the Python client (sse_fast.client): the connection manager (states, backoff with full jitter,
 * `retry:`, 204 stops, 401/403 fatal after one token refresh, a watchdog, resume with `Last-Event-ID`), the
 * dispatcher (handlers by type and priority, `once`, a bounded history, dedupe by message id, acks after the
 * handlers returned), the outbound queue (bounded, by priority, retried after 1/2/5/10/30 s or `Retry-After`,
 * flushed on reconnect) and tasks (`runTask`). Two transports: `fetch` (the token in the `Authorization` header,
 * the stream parsed here by the WHATWG rules) and `eventsource` (the token exchanged for a one-time ticket first,
 * so that it never appears in a URL). Tabs of one browser share one stream per client (Web Locks elect a leader,
 * which feeds the others over a BroadcastChannel).
 */

/**
 * An envelope (docs/protocol.md section 1), as received and as sent.
 * @typedef {object} Message
 * @property {string} [id] The message id (set by the server, or by the SDK when sending).
 * @property {string} type `text`, `json`, `system`, `command`, `heartbeat`, `ack`, `error`, `progress` or a custom type.
 * @property {number} [priority] 0 LOW, 1 NORMAL, 2 HIGH, 3 CRITICAL.
 * @property {number} [timestamp] Milliseconds since the epoch, set by the server.
 * @property {string} [source] The sender's clientId (`server`, `scheduler`), set by the server.
 * @property {string} [target] One clientId.
 * @property {string} [topic] A topic.
 * @property {any} [payload] Any JSON.
 * @property {Record<string, any>} [metadata]
 * @property {boolean} [requireAck]
 * @property {string} [correlationId]
 * @property {boolean} [ephemeral]
 */

/** @typedef {"connecting" | "connected" | "reconnecting" | "disconnected" | "error"} State */

/**
 * @typedef {object} ClientOptions
 * @property {string} [url] The server's base URL (default: the page's origin).
 * @property {string} [clientId] Required without a token; with one, the token's `sub` is the clientId.
 * @property {string} [token] A JWT, sent as `Authorization: Bearer` (never in a URL).
 * @property {() => string | Promise<string>} [refreshToken] Called once when the server answers 401/403; its token
 *   is tried before the client gives up in state `error`.
 * @property {string[]} [topics] Topic patterns to subscribe to.
 * @property {"fetch" | "eventsource"} [transport] `fetch` (default) or `eventsource` (with a one-time ticket).
 * @property {number} [keepalive] The server's keepalive period in ms (SSE_FAST_KEEPALIVE, 15000): a stream silent
 *   for twice as long is dead. EventSource hides comments, so it waits for twice the larger of this and `heartbeat`.
 * @property {number} [heartbeat] The server's heartbeat period in ms (SSE_FAST_HEARTBEAT, 30000).
 * @property {number | null} [maxReconnectAttempts] Consecutive failed attempts before state `error` (10; null: forever).
 * @property {number} [reconnectBaseDelay] ms (1000).
 * @property {number} [reconnectMaxDelay] ms (30000).
 * @property {number} [queueSize] Bound of the outbound queue and of the messages held for handlers (100).
 * @property {number} [historySize] Messages kept for `history()` (1000).
 * @property {boolean} [autoConnect] Open the stream at once (true); false makes a send-only client until `connect()`.
 * @property {boolean} [autoAck] Acknowledge `requireAck` messages once their handlers returned (true).
 * @property {boolean} [shareAcrossTabs] One stream per browser for this client, url and topics (true where the
 *   Web Locks API and BroadcastChannel exist).
 * @property {boolean} [pauseWhenHidden] Close the stream while the page is hidden, resume when it shows (false).
 * @property {RequestCredentials} [credentials] fetch's `credentials` (`same-origin`); `include` also sets
 *   EventSource's `withCredentials` (cookie deployments).
 * @property {Record<string, string>} [headers] Added to every request of the fetch transport and of sends.
 */

/**
 * @typedef {object} SendOptions
 * @property {string} [target]
 * @property {string} [topic]
 * @property {number} [priority]
 * @property {boolean} [requireAck]
 */

/**
 * @typedef {object} CommandOptions
 * @property {string} [task]
 * @property {string} [taskId]
 * @property {Record<string, any>} [params]
 * @property {number} [timeout] The scheduler's deadline for the task, in ms.
 * @property {number} [priority] 2 (HIGH) unless given.
 * @property {string} [target] Relay the command to this client instead of the scheduler.
 * @property {string} [commandId]
 */

/**
 * @typedef {object} Progress
 * @property {string} taskId
 * @property {number} progress 0..100
 * @property {string} [description]
 * @property {number} [estimatedTimeRemaining]
 */

/**
 * @typedef {object} Stats
 * @property {State} state
 * @property {boolean} leader Whether this tab holds the stream (false: fed by another tab).
 * @property {number} received Messages handed to handlers (after dedupe, heartbeats excluded).
 * @property {number} sent Sends the server accepted.
 * @property {number} queued Sends waiting now.
 * @property {number} dropped Sends evicted or refused by the full queue, messages dropped while no handler listened.
 * @property {number} reconnects
 * @property {number} duplicates Messages suppressed because their id was seen already.
 * @property {number} invalid Frames that were not an envelope.
 * @property {number} handlerErrors
 * @property {number} gaps Resumes the server could not serve (`unknown_cursor`, `expired`, `failover`).
 * @property {number} heartbeats
 * @property {Record<string, number>} byType
 * @property {number} uptime ms since the current connection was established (0 when not connected).
 */

/**
 * @typedef {object} Presence What {@link Client.presence} answers (`GET /api/presence`).
 * @property {string} topic
 * @property {"cluster" | "node"} scope
 * @property {number} count Clients whose streams receive the topic (exact).
 * @property {number} connections Their streams (exact).
 * @property {{ clientId: string, connections: number }[]} clients The first `limit`, by clientId.
 * @property {boolean} truncated Whether clients were left out of `clients`.
 * @property {number} limit
 */

/** @typedef {(message: Message) => unknown} Handler */

/** @typedef {{ unsubscribe(): void, readonly active: boolean }} Subscription */

/** Delays in seconds before the retries of a send refused with 429/503 or lost on the network. */
export const RETRY_DELAYS = [1, 2, 5, 10, 30];

/** Message priorities. */
export const Priority = Object.freeze({ LOW: 0, NORMAL: 1, HIGH: 2, CRITICAL: 3 });

/** The base of every error of the SDK. */
export class SseFastError extends Error {
  /** @param {string} message @param {number} [status] @param {string} [code] @param {any} [detail] */
  constructor(message, status = 0, code = "", detail = undefined) {
    super(message);
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}
/** 401 or 403: the token is missing, bad or expired, or lacks a grant. */
export class AuthError extends SseFastError {}
/** Any other error answer of the server (`status`, `code`, `detail` as it sent them). */
export class ServerError extends SseFastError {}
/** The client was disposed, or gave up reconnecting, before the operation completed. */
export class ConnectionLostError extends SseFastError {}
/** The outbound queue was full: this send was refused or evicted by one of a higher priority. */
export class QueueFullError extends SseFastError {}
/** A task ended `failed`, `cancelled` or `timed_out` (`status`; `taskId`, `error` as the server sent them). */
export class TaskError extends SseFastError {
  /** @param {string} message @param {string} taskId @param {string} status @param {any} error */
  constructor(message, taskId, status, error) {
    super(message, 0, status, error);
    this.taskId = taskId;
    this.error = error;
  }
}

/**
 * ms to wait before reconnect `attempt` (1 for the first): `floor` plus full jitter over
 * `[0, min(cap, base * 2 ** (attempt - 1))]`.
 * @param {number} attempt @param {number} base @param {number} cap @param {number} [floor]
 */
export function backoffDelay(attempt, base, cap, floor = 0) {
  return floor + Math.random() * Math.min(cap, base * 2 ** Math.min(Math.max(attempt, 1) - 1, 32));
}

/** @typedef {{ event: string, data: string, id: string }} SseEvent */

/**
 * An incremental `text/event-stream` parser (the WHATWG rules): lines end in CR, LF or CRLF (also split across
 * chunks), `data` lines join with LF, `id` with a NUL is ignored, `retry` only with digits, comments ignored, an
 * event without data is not dispatched. Feed it decoded text (TextDecoder drops the BOM).
 */
export class SseParser {
  #buf = "";
  #cr = false;
  #data = "";
  #event = "";
  #hasData = false;
  /** The last event id (the resume cursor). */
  lastEventId = "";
  /** @type {number | null} The reconnection time the stream set, ms. */
  retry = null;

  /** @param {number} [maxLine] Longest line accepted (characters); a longer one throws (a broken stream). */
  constructor(maxLine = 2 << 20) {
    this.maxLine = maxLine;
  }

  /** @param {string} text @returns {SseEvent[]} the events completed by `text` */
  feed(text) {
    /** @type {SseEvent[]} */
    const out = [];
    let s = this.#buf + text;
    if (this.#cr && s[0] === "\n") s = s.slice(1);
    this.#cr = false;
    const re = /\r\n|\r|\n/g;
    let last = 0;
    for (let m; (m = re.exec(s)); last = re.lastIndex) {
      if (m[0] === "\r" && re.lastIndex === s.length) this.#cr = true; // maybe the first half of a CRLF
      this.#line(s.slice(last, m.index), out);
    }
    this.#buf = s.slice(last);
    if (this.#buf.length > this.maxLine) throw new SseFastError("line too long", 0, "line_too_long");
    return out;
  }

  /** Forget a partial event (a new connection). */
  reset() {
    this.#buf = this.#data = this.#event = "";
    this.#cr = this.#hasData = false;
  }

  /** @param {string} line @param {SseEvent[]} out */
  #line(line, out) {
    if (!line) {
      if (this.#hasData) out.push({ event: this.#event || "message", data: this.#data, id: this.lastEventId });
      this.#data = this.#event = "";
      this.#hasData = false;
      return;
    }
    const colon = line.indexOf(":");
    if (colon === 0) return;
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") {
      this.#data += this.#hasData ? "\n" + value : value;
      this.#hasData = true;
    } else if (field === "event") this.#event = value;
    else if (field === "id") {
      if (!value.includes("\0")) this.lastEventId = value;
    } else if (field === "retry" && /^\d+$/.test(value)) this.retry = +value;
  }
}

/** @returns {string} a new message or command id */
const newId = () => crypto.randomUUID();

const TERMINAL = /** @type {Record<string, string>} */ ({
  task_completed: "completed",
  task_failed: "failed",
  task_cancelled: "cancelled",
  task_timed_out: "timed_out",
});
const BUILTIN_TYPES = ["message", "text", "json", "system", "command", "heartbeat", "ack", "error", "progress"];
const SEEN_IDS = 10000;
const TASK_EVENTS = 256;

/** @param {Response} res @returns {Promise<SseFastError>} */
async function errorOf(res) {
  /** @type {any} */
  let body = null;
  try {
    body = await res.json();
  } catch {}
  const ok = body && typeof body.error === "string" && typeof body.code === "string";
  const args = /** @type {const} */ ([
    ok ? body.error : `HTTP ${res.status}`,
    res.status,
    ok ? body.code : `http_${res.status}`,
    ok ? body.detail : undefined,
  ]);
  return res.status === 401 || res.status === 403 ? new AuthError(...args) : new ServerError(...args);
}

/** @param {Response} res @returns {number} the `Retry-After` in ms, 0 when none */
const retryAfter = (res) => Math.min(Math.max(+(res.headers.get("retry-after") ?? 0) || 0, 0), 3600) * 1000;

/** The server answered 204: stop reconnecting. */
class Stop extends Error {}

/** @param {any} m @returns {m is Message} */
const isEnvelope = (m) => m !== null && typeof m === "object" && typeof m.type === "string";

/** Whether two lists of distinct patterns hold the same ones. @param {string[]} a @param {string[]} b */
const same = (a, b) => a.length === b.length && a.every((t) => b.includes(t));

/**
 * @typedef {object} Outgoing
 * @property {string} path
 * @property {string} body
 * @property {number} priority
 * @property {number} attempts
 * @property {(value: any) => void} resolve
 * @property {(error: any) => void} reject
 */

/**
 * @typedef {object} TaskWaiter
 * @property {string} commandId
 * @property {string | null} taskId
 * @property {Message[]} events
 * @property {(() => void) | null} wake
 * @property {any} error
 */

/**
 * @typedef {object} HandlerEntry
 * @property {string} type
 * @property {Handler} fn
 * @property {number} priority
 * @property {number} order
 * @property {boolean} once
 * @property {Subscription} sub
 */

/**
 * A client of an sse-fast server: one event stream in, HTTP publishes out. Make one with {@link createClient}.
 */
export class Client {
  /** @type {Required<Omit<ClientOptions, "clientId" | "token" | "refreshToken" | "maxReconnectAttempts">> & ClientOptions} */
  #o;
  #url;
  /** @type {string | undefined} */
  #token;
  /** @type {State} */
  #state = "disconnected";
  /** @type {Set<(old: State, state: State) => void>} */
  #stateCbs = new Set();
  /** @type {Set<() => void>} resolved on every state change */
  #changed = new Set();
  /** @type {Set<() => void>} wakes the waits of the reconnect backoff and of the send retries */
  #wakers = new Set();
  #wanted = false;
  #stopped = false;
  #disposed = false;
  #paused = false;
  #leader = false;
  /** @type {SseFastError | null} */
  #fatal = null;
  #refreshed = false;
  /** @type {string | null} */
  #cursor = null;
  /** @type {Record<string, any>} */
  #info = {};
  #connectedAt = 0;
  #delivered = false;
  /** @type {number | null} */
  #maintenance = null;
  #parser = new SseParser();
  /** @type {AbortController | null} */
  #abort = null;
  /** @type {Promise<void> | null} */
  #runner = null;
  /** @type {EventSource | null} */
  #es = null;
  /** @type {((e: Event) => void) | null} */
  #esListener = null;
  /** @type {BroadcastChannel | null} */
  #bc = null;
  /** @type {AbortController | null} */
  #lock = null;
  /** @type {(() => void) | null} */
  #release = null;
  /** @type {Array<() => void>} */
  #cleanup = [];

  /** @type {HandlerEntry[]} */
  #handlers = [];
  #order = 0;
  /** @type {Message[]} */
  #inbound = [];
  /** @type {Array<() => void>} */
  #room = [];
  #pumping = false;
  /** @type {Message[]} */
  #history = [];
  /** @type {Map<string, number>} message id -> 0 handlers pending, 1 handled */
  #seen = new Map();

  /** @type {Outgoing[][]} one FIFO per priority */
  #queue = [[], [], [], []];
  #queued = 0;
  #sending = false;
  /** @type {Outgoing | null} */
  #inFlight = null;

  /** @type {Set<TaskWaiter>} */
  #waiters = new Set();
  /** @type {Message[]} */
  #taskEvents = [];

  #counts = {
    received: 0,
    sent: 0,
    dropped: 0,
    reconnects: 0,
    duplicates: 0,
    invalid: 0,
    handlerErrors: 0,
    gaps: 0,
    heartbeats: 0,
  };
  /** @type {Record<string, number>} */
  #byType = {};
  /** @type {Promise<any>} */
  #topicsChange = Promise.resolve();
  /**
   * The patterns the live stream holds, as its request asked or a change set them (null in a tab that listens).
   * @type {string[] | null}
   */
  #opened = null;

  /** @param {ClientOptions} options */
  constructor(options = {}) {
    const shareable = typeof navigator !== "undefined" && !!navigator.locks && typeof BroadcastChannel === "function";
    this.#o = {
      url: globalThis.location?.origin ?? "",
      topics: [],
      transport: "fetch",
      keepalive: 15000,
      heartbeat: 30000,
      reconnectBaseDelay: 1000,
      reconnectMaxDelay: 30000,
      queueSize: 100,
      historySize: 1000,
      autoConnect: true,
      autoAck: true,
      shareAcrossTabs: shareable,
      pauseWhenHidden: false,
      credentials: "same-origin",
      headers: {},
      ...options,
    };
    if (!options.token && !options.clientId) throw new TypeError("clientId is required without a token");
    this.#o.shareAcrossTabs &&= shareable;
    this.#url = this.#o.url.replace(/\/+$/, "");
    this.#token = options.token;
    this.#listen(globalThis, "online", () => this.#wake());
    if (this.#o.pauseWhenHidden && typeof document !== "undefined") {
      this.#listen(document, "visibilitychange", () => this.#visibility(document.hidden));
    }
    if (this.#o.autoConnect) this.connect().catch(() => {});
  }

  /** @param {any} target @param {string} type @param {() => void} fn */
  #listen(target, type, fn) {
    target?.addEventListener?.(type, fn);
    this.#cleanup.push(() => target?.removeEventListener?.(type, fn));
  }

  // -- state ---------------------------------------------------------------------------------------------------

  /** `connecting`, `connected`, `reconnecting`, `disconnected` or `error`. */
  get state() {
    return this.#state;
  }
  /** The clientId given (with a token and none given: the server's, from the `connect` event). */
  get clientId() {
    return this.#o.clientId ?? this.#info.clientId;
  }
  /** The resume cursor held (sent as `Last-Event-ID`), or null before any. */
  get lastEventId() {
    return this.#cursor;
  }
  /** `detail` of the last `connect` event: `clientId`, `connectionId`, `resumed`, `missed`, `reason`... */
  get connectionInfo() {
    return { ...this.#info };
  }
  /** Whether this tab holds the stream (false while another tab feeds it). */
  get isLeader() {
    return this.#leader;
  }
  /** The error that stopped the client (state `error`), or null. */
  get error() {
    return this.#fatal;
  }

  /**
   * Call `callback(old, state)` on every state change.
   * @param {(old: State, state: State) => void} callback
   * @returns {Subscription}
   */
  onStateChange(callback) {
    this.#stateCbs.add(callback);
    return subscription(() => this.#stateCbs.delete(callback));
  }

  /** @param {State} state */
  #setState(state) {
    const old = this.#state;
    if (old === state) return;
    this.#state = state;
    this.#connectedAt = state === "connected" ? Date.now() : 0;
    if (state === "connected") this.#wake(); // flush the sends waiting out a retry delay
    this.#postState();
    for (const resolve of this.#changed) resolve();
    this.#changed.clear();
    for (const callback of [...this.#stateCbs]) {
      try {
        callback(old, state);
      } catch (err) {
        console.error("sse-fast: state callback failed", err);
      }
    }
  }

  /** Tell the other tabs the state (and the error or the 204 that stopped the stream), if this tab leads. */
  #postState() {
    const f = this.#fatal;
    const e = f && { m: f.message, s: f.status, c: f.code };
    this.#post({ k: "state", s: this.#state, c: this.#cursor, i: this.#info, e, x: this.#stopped });
  }

  #nextChange() {
    return new Promise((resolve) => this.#changed.add(() => resolve(undefined)));
  }

  /** Resolves once connected, or once the stream stopped (204, 401/403, attempts spent, disposed). */
  async #untilConnected() {
    while (this.#wanted && !this.#disposed && !this.#fatal && this.#state !== "connected") {
      if (this.#stopped) return;
      await this.#nextChange();
    }
  }

  /** @param {number} ms */
  #sleep(ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#wakers.delete(done);
        resolve(undefined);
      };
      const timer = setTimeout(done, ms);
      this.#wakers.add(done);
    });
  }

  #wake() {
    for (const wake of [...this.#wakers]) wake();
  }

  // -- connecting ----------------------------------------------------------------------------------------------

  /**
   * Open the stream (if it is not open) and wait until it is connected. Rejects with {@link AuthError} on 401/403
   * (state `error`) and {@link ConnectionLostError} when the reconnect attempts are spent; resolves in state
   * `disconnected` when the server answered 204.
   */
  async connect() {
    if (this.#disposed) throw new ConnectionLostError("the client is disposed");
    if (!this.#wanted || this.#fatal || this.#stopped) {
      this.#wanted = true;
      this.#fatal = null;
      this.#stopped = false;
      this.#refreshed = false;
      // Again after a 204 or an error: the leader restarts its stream (it holds the lock still), a follower asks it.
      if (this.#leader || !this.#o.shareAcrossTabs) {
        this.#leader = true;
        this.#start();
      } else if (this.#bc) this.#post({ k: "go" }, true);
      else this.#share();
    }
    await this.#untilConnected();
    if (this.#fatal) throw this.#fatal;
  }

  #start() {
    this.#runner ??= this.#run()
      .catch((err) => this.#finish(err instanceof SseFastError ? err : new SseFastError(String(err))))
      .finally(() => (this.#runner = null));
  }

  async #run() {
    let failures = 0;
    let first = true;
    while (this.#wanted && !this.#disposed) {
      if (this.#paused) {
        this.#setState("disconnected");
        await this.#nextChange();
        continue;
      }
      this.#setState(first ? "connecting" : "reconnecting");
      if (!first) this.#counts.reconnects++;
      first = false;
      this.#maintenance = null;
      this.#delivered = false;
      let floor = 0;
      let reason = "the server closed the stream";
      try {
        await (this.#o.transport === "eventsource" ? this.#attemptEventSource() : this.#attemptFetch());
      } catch (err) {
        if (err instanceof Stop) return this.#finish(null);
        if (err instanceof AuthError) {
          if (await this.#refresh()) continue;
          return this.#finish(err);
        }
        floor = /** @type {any} */ (err)?.floor ?? 0;
        reason = String(err);
      } finally {
        this.#abort = null;
      }
      if (this.#disposed || !this.#wanted) return;
      if (this.#state === "connected") this.#setState("reconnecting");
      if (this.#paused) continue;
      let delay;
      if (this.#maintenance !== null) {
        delay = this.#maintenance; // spread at random by the server already
        failures = 0;
      } else {
        failures = this.#delivered ? 0 : failures + 1;
        const max = this.#o.maxReconnectAttempts === undefined ? 10 : this.#o.maxReconnectAttempts;
        if (max !== null && failures > max) {
          return this.#finish(new ConnectionLostError(`gave up after ${max} reconnect attempts: ${reason}`));
        }
        floor = Math.max(floor, this.#parser.retry ?? 0);
        delay = backoffDelay(failures || 1, this.#o.reconnectBaseDelay, this.#o.reconnectMaxDelay, floor);
      }
      await this.#sleep(delay); // cut short by `online`
    }
  }

  /** The token refresh, once per failure streak: whether a new token was obtained. */
  async #refresh() {
    const refresh = this.#o.refreshToken;
    if (!refresh || this.#refreshed) return false;
    this.#refreshed = true;
    try {
      this.#token = await refresh();
      return !!this.#token;
    } catch (err) {
      console.warn("sse-fast: refreshToken failed", err);
      return false;
    }
  }

  /** The stream stops for good: 204 (`error` null), 401/403 or the attempts spent. @param {SseFastError | null} error */
  #finish(error) {
    this.#fatal = error;
    this.#stopped = !error;
    this.#abort?.abort();
    this.#setState(error ? "error" : "disconnected");
    if (error) this.#failPending(error);
  }

  /** @param {boolean} hidden */
  #visibility(hidden) {
    if (!this.#leader) return;
    this.#paused = hidden;
    if (hidden) this.#abort?.abort();
    else this.#setState("reconnecting"); // wakes the paused manager
  }

  #streamUrl() {
    const q = new URLSearchParams();
    if (this.#o.clientId) q.set("clientId", this.#o.clientId);
    if (this.#o.topics.length) q.set("topics", this.#o.topics.join(","));
    this.#opened = [...this.#o.topics];
    return q;
  }

  /** @param {boolean} [json] */
  #headers(json) {
    /** @type {Record<string, string>} */
    const h = { ...this.#o.headers };
    if (this.#token) h.Authorization = `Bearer ${this.#token}`;
    else if (this.#o.clientId) h["X-Client-Id"] = this.#o.clientId;
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  /**
   * The watchdog of one attempt: each call re-arms it (`stop`: disarms it); when it fires, the attempt is aborted.
   * @param {AbortController} abort @param {number} ms @returns {(stop?: boolean) => void}
   */
  #watchdog(abort, ms) {
    /** @type {any} */
    let timer;
    return (stop) => {
      clearTimeout(timer);
      if (!stop) timer = setTimeout(() => abort.abort(), ms);
    };
  }

  async #attemptFetch() {
    const abort = (this.#abort = new AbortController());
    const headers = this.#headers();
    headers.Accept = "text/event-stream";
    if (this.#cursor) headers["Last-Event-ID"] = this.#cursor;
    const res = await fetch(`${this.#url}/sse?${this.#streamUrl()}`, {
      headers,
      signal: abort.signal,
      cache: "no-store",
      credentials: this.#o.credentials,
    });
    if (res.status === 204) throw new Stop();
    const type = res.headers.get("content-type") ?? "";
    if (!res.ok || !type.startsWith("text/event-stream") || !res.body) {
      const err = /** @type {any} */ (await errorOf(res));
      err.floor = retryAfter(res);
      throw err;
    }
    const parser = this.#parser;
    parser.reset();
    const kick = this.#watchdog(abort, 2 * this.#o.keepalive);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      kick();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        kick();
        for (const event of parser.feed(value)) {
          if (event.id) this.#cursor = event.id;
          await this.#onFrame(event.data);
        }
      }
    } finally {
      kick(true);
      abort.abort();
      reader.cancel().catch(() => {});
    }
  }

  async #attemptEventSource() {
    const abort = (this.#abort = new AbortController());
    const q = this.#streamUrl();
    if (this.#cursor) q.set("lastEventId", this.#cursor);
    if (this.#token) q.set("ticket", await this.#ticket());
    const es = (this.#es = new EventSource(`${this.#url}/sse?${q}`, {
      withCredentials: this.#o.credentials === "include",
    }));
    const kick = this.#watchdog(abort, 2 * Math.max(this.#o.keepalive, this.#o.heartbeat));
    kick();
    try {
      await new Promise((resolve, reject) => {
        abort.signal.addEventListener("abort", resolve);
        /** @param {Event} e */
        const listener = (this.#esListener = (e) => {
          if (!(e instanceof MessageEvent)) return resolve(undefined); // a connection error: reconnect ourselves
          kick();
          if (e.lastEventId) this.#cursor = e.lastEventId;
          this.#onFrame(e.data).catch(reject);
        });
        for (const type of this.#esTypes()) es.addEventListener(type, listener);
      });
    } finally {
      kick(true);
      es.close();
      this.#es = this.#esListener = null;
      abort.abort();
    }
  }

  /** The event types an EventSource must listen to: the protocol's and every subscribed one. */
  #esTypes() {
    return new Set([...BUILTIN_TYPES, ...this.#handlers.map((h) => h.type).filter((t) => t !== "*")]);
  }

  /** Exchange the token for a one-time ticket (`POST /api/tickets`), so that no token goes into a URL. */
  async #ticket() {
    const res = await fetch(`${this.#url}/api/tickets`, {
      method: "POST",
      headers: this.#headers(),
      credentials: this.#o.credentials,
    });
    if (!res.ok) {
      const err = /** @type {any} */ (await errorOf(res));
      err.floor = retryAfter(res);
      throw err;
    }
    return /** @type {{ ticket: string }} */ (await res.json()).ticket;
  }

  /** One frame of the stream. @param {string} data */
  async #onFrame(data) {
    let m;
    try {
      m = JSON.parse(data);
    } catch {}
    if (!isEnvelope(m)) {
      this.#counts.invalid++;
      return;
    }
    this.#delivered = true;
    if (this.#state !== "connected") {
      this.#refreshed = false;
      this.#setState("connected");
    }
    if (m.type === "system") this.#onSystem(m);
    else if (m.type === "heartbeat") this.#counts.heartbeats++;
    if (m.type !== "heartbeat") this.#post({ k: "msg", m, c: this.#cursor });
    await this.#accept(m);
  }

  /** A message from the stream or from the leader tab. @param {Message} m */
  async #accept(m) {
    if (m.type === "heartbeat") {
      if (!this.#handlers.some((h) => h.type === "heartbeat")) return;
    } else if (m.type !== "system" && m.id != null && this.#isDuplicate(m)) return;
    this.#routeTask(m);
    await this.#handOver(m);
  }

  /** @param {Message} m */
  #onSystem(m) {
    const { event, detail } = m.payload ?? {};
    if (event === "connect" && detail) {
      this.#info = detail;
      const opened = this.#opened;
      if (opened && !same(opened, this.#o.topics)) {
        // changed while this stream's request was on its way: apply the change to this stream too
        this.#changeTopics([], []).catch((err) => console.warn("sse-fast: topics not changed:", err));
      }
      if (detail.reason) {
        this.#counts.gaps++;
        console.warn(`sse-fast: resume failed (${detail.reason}): messages may have been lost`);
      }
    } else if (event === "subscribed" && Array.isArray(detail?.topics)) {
      this.#setTopics(detail.topics.map(String)); // changed live (by us or an admin): reconnect with these
    } else if (event === "maintenance") {
      this.#maintenance = Math.max(0, detail?.retryMs ?? this.#parser.retry ?? 0);
    }
  }

  // -- live topic changes --------------------------------------------------------------------------------------

  /** The topic patterns of the stream (those the client reconnects and resumes with). */
  get topics() {
    return [...this.#o.topics];
  }

  /**
   * Add topic patterns to the live stream without reconnecting (`POST /api/subscriptions`); resolves with the
   * stream's patterns from now on. Rejects with {@link AuthError} for a pattern not granted (403), with
   * {@link ServerError} for an invalid one or past the stream's bounds (400). Without a live stream the patterns
   * are kept for the next connect. With `shareAcrossTabs` the change applies to the stream the tabs share.
   * @param {...string} patterns @returns {Promise<string[]>}
   */
  subscribeTopics(...patterns) {
    return this.#changeTopics(patterns, []);
  }

  /**
   * Remove topic patterns from the live stream (and from those the client reconnects with); resolves with the
   * stream's patterns from now on. Patterns the stream does not have are ignored.
   * @param {...string} patterns @returns {Promise<string[]>}
   */
  unsubscribeTopics(...patterns) {
    return this.#changeTopics([], patterns);
  }

  /** @param {string[]} add @param {string[]} remove @returns {Promise<string[]>} */
  #changeTopics(add, remove) {
    const run = async () => {
      const wanted = [...new Set([...this.#o.topics.filter((t) => !remove.includes(t)), ...add])];
      for (let i = 0; i < 3; i++) {
        const id = this.#state === "connected" ? this.#info.connectionId : null;
        if (!id) break;
        const had = this.#opened ?? this.#o.topics; // the live stream's set (a listening tab: the last it heard)
        const change = { add: wanted.filter((t) => !had.includes(t)), remove: had.filter((t) => !wanted.includes(t)) };
        const body = JSON.stringify({ connectionId: id, ...change });
        const init = { method: "POST", body, credentials: this.#o.credentials };
        let res = await fetch(`${this.#url}/api/subscriptions`, { ...init, headers: this.#headers(true) });
        if (res.status === 401 && (await this.#refresh())) {
          res = await fetch(`${this.#url}/api/subscriptions`, { ...init, headers: this.#headers(true) });
        }
        if (res.ok) {
          const { topics } = await res.json();
          if (this.#info.connectionId === id) return this.#setTopics(topics);
          continue; // a new stream opened meanwhile, maybe with the old set: change it too
        }
        if (res.status !== 404) throw await errorOf(res);
        if (this.#info.connectionId === id) break; // the stream is gone and no other yet
      }
      return (this.#o.topics = wanted); // no live stream: the next connect asks for these
    };
    return (this.#topicsChange = this.#topicsChange.then(run, run)); // one change at a time, in order
  }

  /** The live stream's patterns, as the server said. @param {string[]} topics */
  #setTopics(topics) {
    if (this.#opened) this.#opened = topics;
    return (this.#o.topics = topics);
  }

  // -- tabs ----------------------------------------------------------------------------------------------------

  /** Join the tabs of this client: the Web Lock's holder streams, the others listen on the channel. */
  #share() {
    const name = `sse-fast ${this.#url} ${this.#o.clientId ?? this.#token} ${[...this.#o.topics].sort()} ${this.#o.transport}`;
    const bc = (this.#bc = new BroadcastChannel(name));
    this.#setState("connecting");
    bc.onmessage = (e) => this.#onPeer(e.data);
    this.#lock = new AbortController();
    navigator.locks
      .request(name, { signal: this.#lock.signal }, () => {
        if (this.#disposed) return;
        this.#leader = true;
        this.#start();
        return new Promise((resolve) => (this.#release = () => resolve(undefined)));
      })
      .catch(() => {});
    this.#post({ k: "hello" }, true);
  }

  /** @param {any} data @param {boolean} [always] */
  #post(data, always) {
    if (this.#leader || always) this.#bc?.postMessage(data);
  }

  /** @param {any} d */
  #onPeer(d) {
    if (this.#leader) {
      if (d.k === "hello") this.#postState();
      if (d.k === "go") this.connect().catch(() => {});
      return;
    }
    if (d.c) this.#cursor = d.c;
    if (d.i) this.#info = d.i;
    if (d.k === "state") {
      if (d.e) this.#fatal = new (d.e.s === 401 || d.e.s === 403 ? AuthError : ConnectionLostError)(d.e.m, d.e.s, d.e.c);
      if (d.s === "error" && this.#fatal) this.#failPending(this.#fatal);
      this.#stopped = !!d.x;
      this.#setState(d.s);
    } else if (d.k === "msg") {
      if (d.m.type === "system") this.#onSystem(d.m);
      this.#accept(d.m).catch((err) => console.error("sse-fast:", err));
    }
  }

  // -- the dispatcher ------------------------------------------------------------------------------------------

  /** @param {Message} m */
  #isDuplicate(m) {
    const id = /** @type {string} */ (m.id);
    const seen = this.#seen.get(id);
    if (seen === undefined) {
      this.#seen.set(id, 0);
      if (this.#seen.size > SEEN_IDS) this.#seen.delete(/** @type {string} */ (this.#seen.keys().next().value));
      return false;
    }
    this.#counts.duplicates++;
    if (seen === 1 && m.requireAck && this.#o.autoAck) this.#queueAck(id); // a redelivery: our ack was lost
    return true;
  }

  /** @param {Message} m */
  async #handOver(m) {
    while (this.#inbound.length >= this.#o.queueSize) {
      if (!this.#handlers.length || this.#o.transport === "eventsource") {
        const dropped = /** @type {Message} */ (this.#inbound.shift());
        this.#counts.dropped++;
        if (dropped.id && this.#seen.get(dropped.id) === 0) this.#seen.delete(dropped.id);
        continue;
      }
      await new Promise((resolve) => this.#room.push(() => resolve(undefined))); // backpressure on the stream
    }
    this.#inbound.push(m);
    this.#pump();
  }

  async #pump() {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      while (this.#inbound.length && this.#handlers.length && !this.#disposed) {
        const m = /** @type {Message} */ (this.#inbound.shift());
        this.#room.splice(0).forEach((wake) => wake());
        await this.#dispatch(m);
      }
    } finally {
      this.#pumping = false;
    }
  }

  /** @param {Message} m */
  async #dispatch(m) {
    const plain = m.type !== "system" && m.type !== "heartbeat";
    if (m.type !== "heartbeat") {
      this.#counts.received++;
      const key = m.type in this.#byType || Object.keys(this.#byType).length < 256 ? m.type : "other";
      this.#byType[key] = (this.#byType[key] ?? 0) + 1;
    }
    if (plain) {
      this.#history.push(m);
      if (this.#history.length > this.#o.historySize) this.#history.shift();
    }
    let failed = false;
    const handlers = this.#handlers
      .filter((h) => h.type === m.type || (plain && h.type === "*"))
      .sort((a, b) => b.priority - a.priority || a.order - b.order);
    for (const h of handlers) {
      if (h.once) {
        if (!h.sub.active) continue;
        h.sub.unsubscribe();
      }
      try {
        await h.fn(m);
      } catch (err) {
        failed = true;
        this.#counts.handlerErrors++;
        console.error(`sse-fast: a ${m.type} handler failed on ${m.id}`, err);
      }
    }
    if (m.id == null || !plain) return;
    if (failed) this.#seen.delete(m.id); // the server's redelivery runs the handlers again
    else {
      if (this.#seen.has(m.id)) this.#seen.set(m.id, 1);
      if (m.requireAck && this.#o.autoAck) this.#queueAck(m.id);
    }
  }

  /**
   * Call `handler(message)` for every message of `type`; higher `priority` handlers run first, an async handler
   * is awaited before the next one runs. `"*"` is every type but `system` and `heartbeat`, which only handlers
   * naming them get. A handler that throws is logged, and its message is not acknowledged.
   * @param {string} type @param {Handler} handler @param {{ priority?: number }} [options]
   * @returns {Subscription}
   */
  subscribe(type, handler, options) {
    return this.#addHandler(type, handler, options?.priority ?? 0, false);
  }

  /**
   * Like {@link Client.subscribe}, for the next message of `type` only.
   * @param {string} type @param {Handler} handler @param {{ priority?: number }} [options]
   * @returns {Subscription}
   */
  once(type, handler, options) {
    return this.#addHandler(type, handler, options?.priority ?? 0, true);
  }

  /** @param {string} type @param {Handler} fn @param {number} priority @param {boolean} once */
  #addHandler(type, fn, priority, once) {
    const entry = /** @type {HandlerEntry} */ ({ type, fn, priority, order: ++this.#order, once });
    entry.sub = subscription(() => {
      const i = this.#handlers.indexOf(entry);
      if (i >= 0) this.#handlers.splice(i, 1);
    });
    this.#handlers.push(entry);
    if (this.#esListener && type !== "*") this.#es?.addEventListener(type, this.#esListener);
    this.#pump();
    return entry.sub;
  }

  /**
   * A promise of the next message of `type` (for which `filter` holds).
   * @param {string} type @param {(message: Message) => boolean} [filter]
   * @returns {Promise<Message>}
   */
  next(type, filter) {
    return new Promise((resolve) => {
      const sub = this.subscribe(type, (m) => {
        if (filter && !filter(m)) return;
        sub.unsubscribe();
        resolve(m);
      });
    });
  }

  /**
   * The last `n` (default: all kept) messages received, oldest first, without `system` and `heartbeat`.
   * @param {number} [n] @returns {Message[]}
   */
  history(n) {
    return n === undefined ? [...this.#history] : n > 0 ? this.#history.slice(-n) : [];
  }

  // -- acks ----------------------------------------------------------------------------------------------------

  /** Acknowledge a `requireAck` message (what `autoAck` does after the handlers returned). @param {string} messageId */
  ack(messageId) {
    return this.#submit("/api/ack", JSON.stringify({ messageIds: [messageId] }), 2);
  }

  /** @param {string} id */
  #queueAck(id) {
    if (!this.#disposed) this.ack(id).catch((err) => console.warn(`sse-fast: could not acknowledge ${id}`, err));
  }

  // -- sending -------------------------------------------------------------------------------------------------

  /**
   * Send an envelope (an id is added when it has none): a command without `target` goes to `/api/commands`, the
   * rest to `/api/messages`. While the stream is reconnecting, or when the server answers 429/503 or is
   * unreachable, it waits in the bounded outbound queue (retried after {@link RETRY_DELAYS}, a `Retry-After`
   * lengthening a delay, at once when the stream comes back); when the queue is full the oldest message of a
   * lower priority is evicted, else this one is refused ({@link QueueFullError}). Resolves with the server's
   * answer (`{success, messageId, delivered, queued}`, or `{success, taskId, status}` for a command).
   * @param {Message} message @returns {Promise<any>}
   */
  send(message) {
    const m = { ...message, id: message.id ?? newId() };
    const path = m.type === "command" && m.target == null ? "/api/commands" : "/api/messages";
    return this.#submit(path, JSON.stringify(m), m.priority ?? 1);
  }

  /** Send a `text` message (no target and no topic: a broadcast). @param {string} text @param {SendOptions} [options] */
  sendText(text, options) {
    return this.send({ type: "text", payload: text, ...options });
  }

  /** Send a `json` message with `value` as its payload. @param {any} value @param {SendOptions} [options] */
  sendJSON(value, options) {
    return this.send({ type: "json", payload: value, ...options });
  }

  /**
   * Send a command (docs/protocol.md section 4) to the scheduler, or to the client `target`.
   * @param {"execute" | "cancel" | "pause" | "resume" | "query" | "sync"} action @param {CommandOptions} [options]
   * @returns {Promise<any>}
   */
  sendCommand(action, options = {}) {
    const { task, taskId, params, timeout, priority = 2, target, commandId = newId() } = options;
    const payload = { commandId, action, task, taskId, params, timeout };
    return this.send({ type: "command", priority, target, payload });
  }

  /** @param {string} path @param {string} body @param {number} priority @returns {Promise<any>} */
  #submit(path, body, priority) {
    if (this.#disposed) return Promise.reject(new ConnectionLostError("the client is disposed"));
    if (this.#fatal) return Promise.reject(this.#fatal);
    const p = Math.min(Math.max(priority | 0, 0), 3);
    return new Promise((resolve, reject) => {
      if (this.#queued >= this.#o.queueSize) {
        const lower = this.#queue.slice(0, p).find((level) => level.length);
        this.#counts.dropped++;
        if (!lower) return reject(new QueueFullError(`the outbound queue is full (${this.#queued} messages)`));
        this.#queued--;
        /** @type {Outgoing} */ (lower.shift()).reject(new QueueFullError(`evicted by a priority ${p} message`));
      }
      this.#queue[p].push({ path, body, priority: p, attempts: 0, resolve, reject });
      this.#queued++;
      this.#sendLoop();
    });
  }

  async #sendLoop() {
    if (this.#sending) return;
    this.#sending = true;
    try {
      for (let item; (item = this.#queue.findLast((level) => level.length)?.shift()); ) {
        this.#queued--;
        this.#inFlight = item;
        await this.#deliver(item);
        this.#inFlight = null;
      }
    } finally {
      this.#sending = false;
    }
  }

  /** @param {Outgoing} item */
  async #deliver(item) {
    for (;;) {
      if (this.#wanted) await this.#untilConnected(); // while the server is unreachable, wait for the stream
      if (this.#disposed || this.#fatal) return item.reject(this.#fatal ?? new ConnectionLostError("disposed"));
      const [error, floor] = await this.#postItem(item);
      if (!error) return;
      if (++item.attempts > RETRY_DELAYS.length) return item.reject(error);
      await this.#sleep(Math.max(RETRY_DELAYS[item.attempts - 1] * 1000, floor));
    }
  }

  /** One attempt: settles the item, or returns the retryable error and the Retry-After. @param {Outgoing} item */
  async #postItem(item) {
    /** @type {Response} */
    let res;
    try {
      res = await fetch(this.#url + item.path, {
        method: "POST",
        headers: this.#headers(true),
        body: item.body,
        credentials: this.#o.credentials,
      });
    } catch (err) {
      return /** @type {const} */ ([new ConnectionLostError(String(err)), 0]);
    }
    if (res.status === 429 || res.status === 503) return /** @type {const} */ ([await errorOf(res), retryAfter(res)]);
    if ((res.status === 401 || res.status === 403) && (await this.#refresh())) {
      return /** @type {const} */ ([new AuthError("retrying with a refreshed token", res.status), 0]);
    }
    if (res.ok) {
      this.#counts.sent++;
      item.resolve(await res.json());
    } else item.reject(await errorOf(res));
    return /** @type {const} */ ([null, 0]);
  }

  // -- tasks ---------------------------------------------------------------------------------------------------

  /** @param {Message} m */
  #routeTask(m) {
    const p = m.payload;
    if ((m.type !== "command" && m.type !== "progress") || !p || typeof p !== "object") return;
    if (m.type === "command" && !("event" in p)) return; // a command relayed to us, not a scheduler event
    this.#taskEvents.push(m);
    if (this.#taskEvents.length > TASK_EVENTS) this.#taskEvents.shift();
    for (const w of this.#waiters) {
      if (matches(w, m)) {
        w.events.push(m);
        w.wake?.();
      }
    }
  }

  /**
   * Run `task` on the server's scheduler and resolve with its result. `onProgress(progress)` is called with each
   * progress event; rejects with {@link TaskError} when the task ends `failed` (with no retry to come),
   * `cancelled` or `timed_out`. `timeout` (ms) is the scheduler's deadline.
   * @param {string} task @param {Record<string, any>} [params]
   * @param {{ onProgress?: (progress: Progress) => void, onStart?: (taskId: string) => void, timeout?: number, priority?: number }} [options]
   * @returns {Promise<any>}
   */
  async runTask(task, params, options = {}) {
    if (!this.#wanted) this.connect().catch(() => {});
    /** @type {TaskWaiter} */
    const w = { commandId: newId(), taskId: null, events: [], wake: null, error: null };
    this.#waiters.add(w);
    try {
      const { timeout, priority } = options;
      const answer = await this.sendCommand("execute", { task, params, timeout, priority, commandId: w.commandId });
      if (!answer.taskId) throw new ServerError("the command was relayed, not scheduled", 202, "relayed");
      const taskId = (w.taskId = answer.taskId);
      for (const m of this.#taskEvents) if (matches(w, m) && !w.events.includes(m)) w.events.push(m);
      options.onStart?.(taskId);
      for (;;) {
        while (!w.events.length) {
          if (w.error) throw w.error;
          await new Promise((resolve) => (w.wake = () => resolve(undefined)));
        }
        const m = /** @type {Message} */ (w.events.shift());
        const p = m.payload;
        if (m.type === "progress") {
          try {
            options.onProgress?.(p);
          } catch (err) {
            console.error("sse-fast: onProgress failed", err);
          }
        } else if (p.event === "task_completed") return p.result;
        else if (TERMINAL[p.event] && !(p.event === "task_failed" && p.willRetry)) {
          const status = TERMINAL[p.event];
          throw new TaskError(`task ${taskId} ${status}${p.error ? `: ${p.error}` : ""}`, taskId, status, p.error);
        }
      }
    } finally {
      this.#waiters.delete(w);
    }
  }

  /** The server's record of a task (`GET /api/tasks/{taskId}`). @param {string} taskId @returns {Promise<any>} */
  async queryProgress(taskId) {
    const res = await fetch(`${this.#url}/api/tasks/${encodeURIComponent(taskId)}`, {
      headers: this.#headers(),
      credentials: this.#o.credentials,
    });
    if (!res.ok) throw await errorOf(res);
    return res.json();
  }

  /**
   * Who receives `topic` now (`GET /api/presence`; admin, or a `topics` grant covering it). `scope` "cluster"
   * (default) or "node"; `limit` clients listed (server default 100, at most 1000; 0: the counts only).
   * @param {string} topic @param {{ scope?: "cluster" | "node", limit?: number }} [options]
   * @returns {Promise<Presence>}
   */
  async presence(topic, { scope = "cluster", limit } = {}) {
    const q = new URLSearchParams({ topic, scope });
    if (limit !== undefined) q.set("limit", String(limit));
    const res = await fetch(`${this.#url}/api/presence?${q}`, {
      headers: this.#headers(),
      credentials: this.#o.credentials,
    });
    if (!res.ok) throw await errorOf(res);
    return res.json();
  }

  /** @param {string} taskId */
  cancelTask(taskId) {
    return this.sendCommand("cancel", { taskId });
  }
  /** @param {string} taskId */
  pauseTask(taskId) {
    return this.sendCommand("pause", { taskId });
  }
  /** @param {string} taskId */
  resumeTask(taskId) {
    return this.sendCommand("resume", { taskId });
  }

  // -- the rest ------------------------------------------------------------------------------------------------

  /** A snapshot of the counters. @returns {Stats} */
  getStats() {
    return {
      state: this.#state,
      leader: this.#leader,
      ...this.#counts,
      queued: this.#queued + (this.#inFlight ? 1 : 0),
      byType: { ...this.#byType },
      uptime: this.#connectedAt ? Date.now() - this.#connectedAt : 0,
    };
  }

  /** Replace the token (used by the next connection and send). @param {string} token */
  setToken(token) {
    this.#token = token;
  }

  /** @param {SseFastError} error */
  #failPending(error) {
    for (const level of this.#queue) for (const item of level.splice(0)) item.reject(error);
    this.#queued = 0;
    for (const w of this.#waiters) {
      w.error = error;
      w.wake?.();
    }
  }

  /**
   * Stop the stream (another tab takes it over), fail what is still queued with {@link ConnectionLostError},
   * and drop every listener. Idempotent.
   */
  dispose() {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#wanted = false;
    this.#abort?.abort();
    this.#release?.();
    this.#lock?.abort();
    this.#cleanup.forEach((fn) => fn());
    this.#failPending(new ConnectionLostError("the client was disposed"));
    this.#inFlight?.reject(new ConnectionLostError("the client was disposed"));
    this.#wake();
    this.#setState("disconnected"); // before the channel closes: a leader tells the other tabs
    this.#bc?.close();
    this.#bc = null;
    this.#handlers.length = 0;
  }
}

/** @param {TaskWaiter} w @param {Message} m */
function matches(w, m) {
  const p = m.payload ?? {};
  return (w.taskId !== null && p.taskId === w.taskId) || p.commandId === w.commandId || m.correlationId === w.commandId;
}

/** @param {() => void} remove @returns {Subscription} */
function subscription(remove) {
  let active = true;
  return {
    get active() {
      return active;
    },
    unsubscribe() {
      if (active) remove();
      active = false;
    },
  };
}

/**
 * A client of the sse-fast server at `options.url` (default: this page's origin). It connects at once unless
 * `autoConnect` is false; watch `client.state` with `onStateChange`.
 * @param {ClientOptions} [options]
 * @returns {Client}
 */
export function createClient(options) {
  return new Client(options);
}
