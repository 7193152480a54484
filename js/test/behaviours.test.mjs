// The SDK's connection manager and outbox in a real Chromium, against a real sse-fast server (and, for what the
// server never sends, a 204 and hand-crafted stream bytes, a small real HTTP server started here): the heartbeat
// watchdog, `online`, pauseWhenHidden, 204, 403, `retry:`, `Retry-After`, the bounded outbox, the task controls.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { after, before, describe, test } from "node:test";
import { JWT_ENV, SDK, jwt, launchBrowser, openPage, waitFor, withServer } from "./helpers.mjs";

/** @type {any} */
let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.cleanup();
});

/**
 * A small real HTTP server for what sse-fast never answers: it serves a blank page and the SDK, and hands every
 * `GET /sse` to `onStream(req, res, n)` (n: 1 for the first). Returns { url, streams (their request headers and
 * times), close() }.
 */
async function streamServer(onStream) {
  const streams = [];
  const server = createServer((req, res) => {
    if (req.url === "/") return res.writeHead(200, { "content-type": "text/html" }).end("<!doctype html><title>t</title>");
    if (req.url === "/sdk/sse-fast.js") {
      return res.writeHead(200, { "content-type": "text/javascript" }).end(readFileSync(SDK));
    }
    if (req.url?.startsWith("/sse")) {
      streams.push({ headers: req.headers, at: Date.now() });
      return onStream(req, res, streams.length);
    }
    res.writeHead(404).end();
  });
  await new Promise((done) => server.listen(0, "127.0.0.1", done));
  const url = `http://127.0.0.1:${server.address().port}`;
  return {
    url,
    streams,
    close: () => new Promise((done) => (server.closeAllConnections(), server.close(done))),
  };
}

/** Evaluate `fn(arg)` on `page` until it returns something truthy. */
const until = (page, fn, arg, what, timeout = 15000) => waitFor(() => page.evaluate(fn, arg), timeout, what);

/** A client on `page` (`window.client`) that records its json payloads' `n` in `window.seen` and its states. */
async function seenClient(page, options) {
  await page.evaluate(async (options) => {
    const c = (window.client = window.sdk.createClient(options));
    window.seen = [];
    window.states = [];
    c.onStateChange((old, state) => window.states.push([state, performance.now()]));
    c.subscribe("json", (m) => window.seen.push(m.payload.n));
    await c.connect();
  }, options);
}

/** Direct json messages {n} for n in [from, to) to `clientId`, one after the other. */
async function publish(server, clientId, from, to) {
  for (let n = from; n < to; n++) {
    const [status] = await server.post(`/api/direct/${clientId}`, { type: "json", payload: { n } });
    assert.equal(status, 202);
  }
}

/** `window.seen` holds exactly [0, count) in any order, each once. */
async function assertAllOnce(page, count) {
  await until(page, (count) => window.seen.length >= count, count, `${count} messages`);
  const seen = await page.evaluate(() => window.seen);
  assert.deepEqual([...seen].sort((a, b) => a - b), Array.from({ length: count }, (_, i) => i), "loss or duplicate");
}

/** Make `page` hidden (or visible again) as far as its scripts can tell, and fire visibilitychange. */
const setHidden = (page, hidden) =>
  page.evaluate((hidden) => {
    Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
    Object.defineProperty(document, "visibilityState", { configurable: true, get: () => (hidden ? "hidden" : "visible") });
    document.dispatchEvent(new Event("visibilitychange"));
  }, hidden);

const connections = async (server, clientId) =>
  (await server.get("/api/connections"))[1].filter((c) => c.clientId === clientId).length;

describe("the SDK's connection manager in Chromium", () => {
  test("the watchdog reconnects a stream silent for twice the keepalive, and resumes with no loss", async () => {
    await withServer({ SSE_FAST_KEEPALIVE: "0.5" }, async (server) => {
      const page = await openPage(browser, server);
      await seenClient(page, { clientId: "wanda", keepalive: 500, reconnectBaseDelay: 50, shareAcrossTabs: false });
      await publish(server, "wanda", 0, 10);
      await until(page, () => window.seen.length === 10, null, "the first ten");
      const before = await page.evaluate(() => window.client.connectionInfo.connectionId);
      const group = -server.proc.pid; // `sse-fast serve` and granian's workers: nothing is written, nothing closed
      process.kill(group, "SIGSTOP");
      let late;
      try {
        late = publish(server, "wanda", 10, 20); // answered once the server runs again
        late.catch(() => {});
        // Only the watchdog can end the stream now: the server process is stopped, its sockets stay open.
        await until(page, () => window.client.state === "reconnecting", null, "the watchdog fired", 10000);
      } finally {
        process.kill(group, "SIGCONT");
      }
      await late;
      await assertAllOnce(page, 20);
      await until(page, () => window.client.state === "connected", null, "connected again");
      const after = await page.evaluate(() => ({ stats: window.client.getStats(), info: window.client.connectionInfo }));
      assert.ok(after.stats.reconnects >= 1, `reconnects ${after.stats.reconnects}`);
      assert.notEqual(after.info.connectionId, before);
      assert.equal(after.info.resumed, true);
      assert.equal(after.stats.gaps, 0);
      await page.close();
    });
  });

  test("`online` ends the reconnect wait at once (SSE_FAST_RETRY of 60 s would hold it), no loss", async () => {
    await withServer({ SSE_FAST_RETRY: "60000", SSE_FAST_MAX_CONNECTIONS_PER_CLIENT: "1" }, async (server) => {
      const page = await openPage(browser, server);
      await seenClient(page, { clientId: "otto", reconnectBaseDelay: 50, shareAcrossTabs: false });
      await page.evaluate(() => {
        window.online = 0;
        window.addEventListener("online", () => window.online++);
      });
      await publish(server, "otto", 0, 5);
      await until(page, () => window.seen.length === 5, null, "the first five");
      await browser.setOffline(true);
      try {
        // Offline, the stream is lost (Chromium's emulation keeps open sockets, so the server ends it: another
        // connection of otto replaces it); the SDK now waits out the stream's retry: 60 s.
        const thief = new AbortController();
        const res = await fetch(`${server.url}/sse?clientId=otto`, { signal: thief.signal });
        await res.body.getReader().read();
        thief.abort();
        await until(page, () => window.client.state === "reconnecting", null, "the stream lost offline");
        await publish(server, "otto", 5, 10);
        await waitFor(async () => (await connections(server, "otto")) === 0, 15000, "no stream of otto");
      } finally {
        await browser.setOffline(false);
      }
      await until(page, () => window.online >= 1, null, "the online event");
      // Only the `online` wake-up reconnects within the deadline, far below the 60 s.
      await until(page, () => window.client.state === "connected", null, "reconnected on online", 20000);
      await assertAllOnce(page, 10);
      assert.equal(await page.evaluate(() => window.client.connectionInfo.resumed), true);
      await page.close();
    });
  });

  test("pauseWhenHidden: the stream closes while the page is hidden and resumes when it shows, no loss", async () => {
    await withServer({}, async (server) => {
      const page = await openPage(browser, server);
      await seenClient(page, { clientId: "pia", pauseWhenHidden: true });
      const setHidden = (hidden) =>
        page.evaluate((hidden) => {
          Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
          Object.defineProperty(document, "visibilityState", {
            configurable: true,
            get: () => (hidden ? "hidden" : "visible"),
          });
          document.dispatchEvent(new Event("visibilitychange"));
        }, hidden);
      await publish(server, "pia", 0, 3);
      await until(page, () => window.seen.length === 3, null, "the first three");
      assert.equal(await connections(server, "pia"), 1);
      await setHidden(true);
      await until(page, () => window.client.state === "disconnected", null, "paused");
      await waitFor(async () => (await connections(server, "pia")) === 0, 15000, "the stream closed on the server");
      await publish(server, "pia", 3, 8); // while hidden: to the mailbox and the log
      assert.equal(await connections(server, "pia"), 0, "the hidden page reconnected");
      assert.equal(await page.evaluate(() => window.seen.length), 3);
      await setHidden(false);
      await until(page, () => window.client.state === "connected", null, "resumed on visible");
      await assertAllOnce(page, 8);
      assert.equal(await connections(server, "pia"), 1);
      await publish(server, "pia", 8, 10);
      await assertAllOnce(page, 10);
      await page.close();
    });
  });

  test("the watchdog with transport eventsource: twice the larger of keepalive and heartbeat, no loss", async () => {
    await withServer({ SSE_FAST_KEEPALIVE: "0.5", SSE_FAST_HEARTBEAT: "1" }, async (server) => {
      const page = await openPage(browser, server);
      await seenClient(page, {
        clientId: "ewan",
        transport: "eventsource",
        keepalive: 500,
        heartbeat: 1000,
        reconnectBaseDelay: 50,
        shareAcrossTabs: false,
      });
      await publish(server, "ewan", 0, 10);
      await until(page, () => window.seen.length === 10, null, "the first ten");
      // EventSource hides the 0.5 s comments: only the 1 s heartbeats keep a 2 s watchdog (not a 1 s one) quiet.
      await new Promise((r) => setTimeout(r, 3000));
      const quiet = await page.evaluate(() => ({
        stats: window.client.getStats(),
        id: window.client.connectionInfo.connectionId,
      }));
      assert.equal(quiet.stats.reconnects, 0, "the watchdog fired on a live EventSource stream");
      assert.ok(quiet.stats.heartbeats >= 1, `heartbeats ${quiet.stats.heartbeats}`);
      const group = -server.proc.pid;
      const stoppedAt = await page.evaluate(() => performance.now());
      process.kill(group, "SIGSTOP");
      let late;
      try {
        late = publish(server, "ewan", 10, 20);
        late.catch(() => {});
        await until(page, () => window.client.state === "reconnecting", null, "the watchdog fired", 10000);
      } finally {
        process.kill(group, "SIGCONT");
      }
      const fired = await page.evaluate(() => window.states.find(([s]) => s === "reconnecting")[1]);
      // The last heartbeat came at most 1 s before SIGSTOP; the watchdog waits 2 s after it.
      assert.ok(fired - stoppedAt >= 1000, `the watchdog fired ${(fired - stoppedAt).toFixed(0)} ms after SIGSTOP`);
      await late;
      await assertAllOnce(page, 20);
      await until(page, () => window.client.state === "connected", null, "connected again");
      const after = await page.evaluate(() => ({ stats: window.client.getStats(), info: window.client.connectionInfo }));
      assert.ok(after.stats.reconnects >= 1, `reconnects ${after.stats.reconnects}`);
      assert.notEqual(after.info.connectionId, quiet.id);
      assert.equal(after.info.resumed, true);
      assert.equal(after.stats.gaps, 0);
      await page.close();
    });
  });

  test("maxReconnectAttempts spent: state error, ConnectionLostError, no further attempt", async () => {
    await withServer({}, async (server) => {
      const page = await openPage(browser, server);
      const streams = [];
      page.on("request", (r) => {
        if (r.method() === "GET" && new URL(r.url()).pathname === "/sse") streams.push(Date.now());
      });
      const max = 3;
      await seenClient(page, {
        clientId: "mona",
        maxReconnectAttempts: max,
        reconnectBaseDelay: 50,
        reconnectMaxDelay: 200,
        shareAcrossTabs: false,
      });
      assert.equal(streams.length, 1);
      await server.stop();
      await until(page, () => window.client.state === "error", null, "gave up", 20000);
      const result = await page.evaluate(async () => {
        let send;
        try {
          await window.client.sendJSON({ n: 0 }, { target: "mona" });
          send = "sent";
        } catch (err) {
          send = err.name;
        }
        const c = window.client;
        return { error: c.error?.name, message: c.error?.message, send, states: window.states.map(([s]) => s) };
      });
      assert.equal(result.error, "ConnectionLostError");
      assert.match(result.message, /gave up after 3 reconnect attempts/);
      assert.equal(result.send, "ConnectionLostError", "a send after the client gave up");
      assert.equal(result.states.at(-1), "error");
      assert.equal(result.states.filter((s) => s === "error").length, 1);
      // The stream that was lost, its first reconnect (the first failure), then `max` more: as the Python client.
      assert.equal(streams.length, 1 + 1 + max, JSON.stringify(streams));
      await server.start(); // the same port: the client stays in error, it does not try again by itself
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(streams.length, 1 + 1 + max);
      assert.equal(await page.evaluate(() => window.client.state), "error");
      await page.close();
    });
  });

  test("pauseWhenHidden in two tabs: a hidden follower keeps the stream, a hidden leader closes it", async () => {
    await withServer({}, async (server) => {
      const options = { clientId: "tia", pauseWhenHidden: true }; // shareAcrossTabs: the default
      const leader = await openPage(browser, server);
      await seenClient(leader, options);
      assert.equal(await leader.evaluate(() => window.client.isLeader), true);
      const follower = await openPage(browser, server);
      await seenClient(follower, options);
      assert.equal(await follower.evaluate(() => window.client.isLeader), false);
      const both = async (count) => {
        await assertAllOnce(leader, count);
        await assertAllOnce(follower, count);
      };
      const states = () => Promise.all([leader, follower].map((p) => p.evaluate(() => window.client.state)));
      assert.equal(await connections(server, "tia"), 1);
      await publish(server, "tia", 0, 3);
      await both(3);

      await setHidden(follower, true);
      await new Promise((r) => setTimeout(r, 500));
      assert.deepEqual(await states(), ["connected", "connected"]);
      assert.equal(await connections(server, "tia"), 1, "hiding the follower touched the stream");
      await publish(server, "tia", 3, 6);
      await both(6);
      await setHidden(follower, false);

      await setHidden(leader, true);
      await until(leader, () => window.client.state === "disconnected", null, "the leader paused");
      await until(follower, () => window.client.state === "disconnected", null, "the follower told");
      await waitFor(async () => (await connections(server, "tia")) === 0, 15000, "the stream closed on the server");
      await publish(server, "tia", 6, 10); // while the leader is hidden: to the mailbox and the log
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(await connections(server, "tia"), 0, "a tab reconnected while the leader is hidden");
      assert.deepEqual(await Promise.all([leader, follower].map((p) => p.evaluate(() => window.seen.length))), [6, 6]);
      assert.equal(await follower.evaluate(() => window.client.isLeader), false, "the follower took the stream");

      await setHidden(leader, false);
      await until(leader, () => window.client.state === "connected", null, "the leader resumed");
      await until(follower, () => window.client.state === "connected", null, "the follower told");
      await both(10);
      assert.equal(await connections(server, "tia"), 1);
      await publish(server, "tia", 10, 12);
      await both(12);
      assert.deepEqual(leader.errors.concat(follower.errors), []);
      await follower.close();
      await leader.close();
    });
  });

  test("403 (a token without the topic's grant) is fatal: state error, AuthError, one refresh tried", async () => {
    await withServer(JWT_ENV, async (server) => {
      const page = await openPage(browser, server);
      const token = jwt({ sub: "quinn", topics: ["a.>"] });
      const result = await page.evaluate(async (token) => {
        let refreshed = 0;
        const c = window.sdk.createClient({ token, topics: ["b.x"], refreshToken: () => (refreshed++, token) });
        const states = [];
        c.onStateChange((old, state) => states.push(state));
        try {
          await c.connect();
          return { connected: true };
        } catch (err) {
          await new Promise((r) => setTimeout(r, 500)); // any further attempt would show in states
          return {
            auth: err instanceof window.sdk.AuthError,
            status: err.status,
            state: c.state,
            refreshed,
            errors: states.filter((s) => s === "error").length,
            last: states.at(-1),
          };
        }
      }, token);
      assert.deepEqual(result, { auth: true, status: 403, state: "error", refreshed: 1, errors: 1, last: "error" });
      const admin = { Authorization: `Bearer ${jwt({ sub: "ops", admin: true })}` };
      assert.deepEqual((await server.get("/api/connections", admin))[1], []);
      await page.close();
    });
  });

  test("dispose() of a connected client that leads its tabs: no error, disconnected, the server frees it", async () => {
    await withServer({}, async (server) => {
      const page = await openPage(browser, server);
      const errors = [];
      page.on("pageerror", (err) => errors.push(String(err)));
      await seenClient(page, { clientId: "dora" }); // shareAcrossTabs is on by default: this tab leads
      assert.equal(await connections(server, "dora"), 1);
      const thrown = await page.evaluate(() => {
        try {
          window.client.dispose();
          return null;
        } catch (err) {
          return String(err);
        }
      });
      assert.equal(thrown, null);
      assert.equal(await page.evaluate(() => window.client.state), "disconnected");
      await waitFor(async () => (await connections(server, "dora")) === 0, 15000, "the stream closed on the server");
      assert.deepEqual(errors, []);
      await page.close();
    });
  });

  test("`retry:` is honoured: the reconnect waits at least SSE_FAST_RETRY", async () => {
    await withServer({ SSE_FAST_RETRY: "1500", SSE_FAST_MAX_CONNECTIONS_PER_CLIENT: "1" }, async (server) => {
      const page = await openPage(browser, server);
      await seenClient(page, { clientId: "rhea", reconnectBaseDelay: 1, reconnectMaxDelay: 1, shareAcrossTabs: false });
      await publish(server, "rhea", 0, 2);
      // Another connection of rhea replaces the page's (the per-client limit is 1), then goes away.
      const thief = new AbortController();
      const res = await fetch(`${server.url}/sse?clientId=rhea`, { signal: thief.signal });
      await res.body.getReader().read();
      thief.abort();
      await publish(server, "rhea", 2, 4);
      await until(page, () => window.client.getStats().reconnects >= 1 && window.client.state === "connected", null,
                  "reconnected"); // prettier-ignore
      await assertAllOnce(page, 4);
      const states = await page.evaluate(() => window.states);
      const lost = states.findIndex(([s]) => s === "reconnecting");
      const back = states.findIndex(([s], i) => i > lost && s === "connected");
      assert.ok(lost > 0 && back > lost, JSON.stringify(states));
      const waited = states[back][1] - states[lost][1];
      assert.ok(waited >= 1500, `reconnected after ${waited.toFixed(0)} ms, retry: 1500`);
      await page.close();
    });
  });

  test("a 204 on /sse stops reconnecting: state disconnected, connect() resolves, no second request", async () => {
    const fake = await streamServer((req, res) => res.writeHead(204).end());
    try {
      const page = await browser.newPage();
      await page.goto(fake.url);
      const result = await page.evaluate(async () => {
        const sdk = await import("/sdk/sse-fast.js");
        const c = (window.client = sdk.createClient({ clientId: "zed", reconnectBaseDelay: 1, autoConnect: false }));
        const states = [];
        c.onStateChange((old, state) => states.push(state));
        await c.connect();
        return { state: c.state, states, error: c.error };
      });
      assert.deepEqual(result, { state: "disconnected", states: ["connecting", "disconnected"], error: null });
      // With a 1 ms backoff, any reconnect would have come long before this.
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal(fake.streams.length, 1);
      assert.equal(await page.evaluate(() => window.client.state), "disconnected");
      // connect() starts again after a 204 (and stops at the next one).
      await page.evaluate(() => window.client.connect());
      assert.equal(fake.streams.length, 2);
      // A second tab of zed follows the first (one stream per browser): it learns that the stream stopped, and
      // its next connect() asks the leader to try again.
      const other = await browser.newPage();
      await other.goto(fake.url);
      const follower = await other.evaluate(async () => {
        const sdk = await import("/sdk/sse-fast.js");
        const c = (window.client = sdk.createClient({ clientId: "zed", reconnectBaseDelay: 1, autoConnect: false }));
        await c.connect();
        return { state: c.state, leader: c.isLeader };
      });
      assert.deepEqual(follower, { state: "disconnected", leader: false });
      assert.equal(fake.streams.length, 2);
      await other.evaluate(() => window.client.connect());
      assert.equal(fake.streams.length, 3);
      assert.equal(await other.evaluate(() => window.client.state), "disconnected");
      await other.close();
      await page.close();
    } finally {
      await fake.close();
    }
  });

  test("crafted stream bytes, written one byte at a time: CR, LF, CRLF, comments, retry:, empty id:", async () => {
    const env = (id, n, extra = {}) => JSON.stringify({ id, type: "json", payload: { n, s: "é👋" }, ...extra });
    const first = [
      ": hello\r\n",
      "retry: 800\r",
      `id: c1\nevent: json\ndata: ${env("m0", 0)}\n\n`,
      // data split over two data lines (joined by LF: JSON whitespace), CR line ends
      `:comment\revent: json\rdata: {"id":"m1","type":"json",\rdata: "payload":{"n":1}}\r\r`,
      `id: c2\r\nevent: json\r\ndata: ${env("m2", 2)}\r\n\r\n`,
      `event: json\ndata: ${env("m3", 3)}\n\n`, // no id: line (an overtaking frame): the cursor stays c2
      `id:\nevent: json\ndata: ${env("m4", 4)}\n\n`, // an empty id: the SDK keeps its cursor (as the Python client)
      `id: c3\nevent: json\ndata: ${env("m2", 2)}\n\n`, // a duplicate message id: dropped
      "retry: 9x\n\n", // not digits: ignored
    ].join("");
    const fake = await streamServer(async (req, res, n) => {
      if (n > 1) return res.writeHead(204).end();
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      for (const byte of Buffer.from(first)) {
        res.write(Buffer.from([byte]));
        await new Promise((r) => setTimeout(r, 1));
      }
      res.end();
    });
    try {
      const page = await browser.newPage();
      await page.goto(fake.url);
      const result = await page.evaluate(async () => {
        const sdk = await import("/sdk/sse-fast.js");
        const c = sdk.createClient({ clientId: "byte", reconnectBaseDelay: 1, autoConnect: false });
        const seen = [];
        c.subscribe("json", (m) => seen.push([m.id, m.payload.n, m.payload.s ?? null]));
        const states = [];
        c.onStateChange((old, state) => states.push(state));
        await c.connect();
        await new Promise((resolve) => c.onStateChange((old, s) => s === "disconnected" && resolve(undefined)));
        return { seen, states, stats: c.getStats(), cursor: c.lastEventId };
      });
      assert.deepEqual(result.seen, [
        ["m0", 0, "é👋"],
        ["m1", 1, null],
        ["m2", 2, "é👋"],
        ["m3", 3, "é👋"],
        ["m4", 4, "é👋"],
      ]);
      assert.equal(result.stats.duplicates, 1);
      assert.equal(result.stats.invalid, 0);
      assert.deepEqual(result.states, ["connecting", "connected", "reconnecting", "disconnected"]);
      assert.equal(fake.streams.length, 2);
      assert.equal(fake.streams[1].headers["last-event-id"], "c3");
      assert.equal(fake.streams[0].headers["last-event-id"], undefined);
      const waited = fake.streams[1].at - fake.streams[0].at;
      assert.ok(waited >= 800, `reconnected ${waited} ms after the stream opened, retry: 800`);
      await page.close();
    } finally {
      await fake.close();
    }
  });
});

describe("the SDK's outbox and task controls in Chromium", () => {
  test("a 429 rate_limited send is retried after its Retry-After, once", async () => {
    await withServer({ SSE_FAST_PUBLISH_RATE: "0.25", SSE_FAST_PUBLISH_BURST: "1" }, async (server) => {
      const page = await openPage(browser, server);
      await seenClient(page, { clientId: "remy", shareAcrossTabs: false });
      const posts = [];
      page.on("response", (r) => {
        if (r.url().endsWith("/api/messages")) posts.push({ status: r.status(), retryAfter: r.headers()["retry-after"] });
      });
      const timing = await page.evaluate(async () => {
        const c = window.client;
        const t0 = performance.now();
        const a = await c.sendJSON({ n: 0 }, { target: "remy" });
        const b = await c.sendJSON({ n: 1 }, { target: "remy" });
        return { ok: a.success && b.success, waited: performance.now() - t0 };
      });
      assert.ok(timing.ok);
      await assertAllOnce(page, 2);
      await waitFor(() => posts.length === 3, 5000, "three POSTs seen");
      assert.deepEqual(posts.map((p) => p.status), [202, 429, 202], JSON.stringify(posts));
      const retryAfter = Number(posts[1].retryAfter);
      assert.ok(retryAfter >= 2, `Retry-After ${posts[1].retryAfter}`); // longer than the first retry delay (1 s)
      assert.ok(timing.waited >= retryAfter * 1000, `resolved after ${timing.waited} ms, Retry-After ${retryAfter} s`);
      assert.equal(await page.evaluate(() => window.client.getStats().sent), 2);
      await page.close();
    });
  });

  test("a send to a server that is down is retried after 1, 2, 5 s, and delivered once when it is back", async () => {
    await withServer({}, async (server) => {
      const page = await openPage(browser, server);
      await seenClient(page, {
        clientId: "rita",
        reconnectBaseDelay: 100,
        reconnectMaxDelay: 500,
        maxReconnectAttempts: null,
        shareAcrossTabs: false,
      });
      // The page's POST /api/messages requests as Chromium made them (a refused connection: requestfailed).
      const posts = [];
      page.on("request", (r) => {
        if (r.method() === "POST" && new URL(r.url()).pathname === "/api/messages") posts.push({ r, outcome: null });
      });
      page.on("requestfailed", (r) => {
        const post = posts.find((p) => p.r === r);
        if (post) post.outcome = r.failure()?.errorText ?? "failed";
      });
      page.on("response", (res) => {
        const post = posts.find((p) => p.r === res.request());
        if (post) post.outcome = res.status();
      });
      await server.stop();
      await until(page, () => window.client.state !== "connected", null, "the page sees the server gone");
      // A send-only client (autoConnect false) posts at once; a streaming one would wait for its stream first.
      await page.evaluate(() => {
        window.posted = []; // when the SDK called fetch for a send, page time
        const fetch = window.fetch;
        window.fetch = (url, init) => {
          if (init?.method === "POST" && String(url).endsWith("/api/messages")) window.posted.push(performance.now());
          return fetch(url, init);
        };
        window.outcome = null;
        window.sender = window.sdk.createClient({ clientId: "sam", autoConnect: false, shareAcrossTabs: false });
        window.sender.sendJSON({ n: 0 }, { target: "rita" }).then(
          (a) => (window.outcome = a),
          (err) => (window.outcome = `${err.name}: ${err.message}`),
        );
      });
      await waitFor(() => posts.filter((p) => p.outcome !== null).length >= 3, 15000, "three refused POSTs");
      await server.start(); // the same port
      await until(page, () => window.outcome, null, "the send settled", 60000);
      const outcome = await page.evaluate(() => window.outcome);
      assert.ok(outcome.success && outcome.messageId, JSON.stringify(outcome));
      await assertAllOnce(page, 1);
      await new Promise((r) => setTimeout(r, 1000)); // a second delivery would show by now
      await assertAllOnce(page, 1);
      const outcomes = posts.map((p) => p.outcome);
      assert.ok(outcomes.length >= 4, JSON.stringify(outcomes));
      assert.equal(outcomes.at(-1), 202, JSON.stringify(outcomes));
      assert.ok(outcomes.slice(0, -1).every((o) => typeof o === "string"), JSON.stringify(outcomes)); // all refused
      const posted = await page.evaluate(() => window.posted);
      assert.equal(posted.length, outcomes.length);
      const schedule = [1000, 2000, 5000, 10000, 30000];
      const waits = posted.slice(1).map((t, i) => t - posted[i]);
      waits.forEach((w, i) => {
        assert.ok(w >= schedule[i], `retry ${i + 1} after ${w.toFixed(0)} ms, schedule ${schedule[i]} ms`);
        assert.ok(w <= 3 * schedule[i] + 1000, `retry ${i + 1} after ${w.toFixed(0)} ms, schedule ${schedule[i]} ms`);
      });
      const stats = await page.evaluate(() => window.sender.getStats());
      assert.equal(stats.sent, 1);
      assert.equal(stats.queued, 0);
      await page.close();
    });
  });

  test("the outbox is bounded: a higher priority evicts the lowest-priority oldest, else the send is refused", async () => {
    await withServer({}, async (server) => {
      const page = await openPage(browser, server);
      await seenClient(page, {
        clientId: "olga",
        queueSize: 3,
        reconnectBaseDelay: 100,
        reconnectMaxDelay: 500,
        maxReconnectAttempts: null,
        shareAcrossTabs: false,
      });
      await server.stop();
      await until(page, () => window.client.state !== "connected", null, "the page sees the server gone");
      const queued = await page.evaluate(() => {
        window.outcomes = [];
        const send = (n, priority) =>
          window.client.sendJSON({ n }, { target: "olga", priority }).then(
            () => window.outcomes.push(`sent ${n}`),
            (err) => window.outcomes.push(`${err.name} ${n}`),
          );
        send(0, 1); // taken by the send loop at once: it waits for the stream, not in the queue
        send(1, 0);
        send(2, 1);
        send(3, 0); // the queue holds 3 now
        send(4, 2); // evicts 1 (the oldest of the lowest priority)
        send(5, 0); // nothing lower: refused
        return window.client.getStats();
      });
      assert.equal(queued.queued, 4); // three queued and one waiting to go
      assert.equal(queued.dropped, 2);
      await until(page, () => window.outcomes.length === 2, null, "the eviction and the refusal");
      assert.deepEqual(await page.evaluate(() => window.outcomes), ["QueueFullError 1", "QueueFullError 5"]);
      await server.start();
      await until(page, () => window.outcomes.length === 6, null, "the queue flushed");
      // In flight first, then by priority, oldest first within one.
      assert.deepEqual((await page.evaluate(() => window.outcomes)).slice(2), ["sent 0", "sent 4", "sent 2", "sent 3"]);
      await until(page, () => window.seen.length === 4, null, "four delivered");
      assert.deepEqual((await page.evaluate(() => window.seen)).sort(), [0, 2, 3, 4]);
      const stats = await page.evaluate(() => window.client.getStats());
      assert.equal(stats.queued, 0);
      assert.equal(stats.sent, 4);
      await page.close();
    });
  });

  test("pauseTask, resumeTask, cancelTask and queryProgress against the real scheduler", async () => {
    await withServer({}, async (server) => {
      const page = await openPage(browser, server);
      await seenClient(page, { clientId: "tess", shareAcrossTabs: false });
      await page.evaluate(() => {
        window.outcome = null;
        window.client
          .runTask("count", { to: 400, interval: 0.05 }, { onStart: (id) => (window.taskId = id) })
          .then(
            (value) => (window.outcome = `resolved ${JSON.stringify(value)}`),
            (err) => (window.outcome = `${err.name}: ${err.code}`),
          );
      });
      const taskId = await until(page, () => window.taskId, null, "the task started");
      const query = () => page.evaluate((id) => window.client.queryProgress(id), taskId);
      await waitFor(async () => (await query()).progress > 0, 15000, "progress");

      const paused = await page.evaluate((id) => window.client.pauseTask(id), taskId);
      assert.equal(paused.taskId, taskId);
      const held = await waitFor(async () => {
        const r = await query();
        return r.status === "paused" && r;
      }, 15000, "paused");
      await new Promise((r) => setTimeout(r, 500));
      assert.equal((await query()).progress, held.progress, "progress moved while paused");

      const resumed = await page.evaluate((id) => window.client.resumeTask(id), taskId);
      assert.equal(resumed.taskId, taskId);
      await waitFor(async () => {
        const r = await query();
        return r.status === "running" && r.progress > held.progress;
      }, 15000, "running again");

      const cancelled = await page.evaluate((id) => window.client.cancelTask(id), taskId);
      assert.equal(cancelled.taskId, taskId);
      assert.equal(await until(page, () => window.outcome, null, "runTask settled"), "TaskError: cancelled");
      const record = await query();
      assert.equal(record.status, "cancelled");
      assert.equal(record.clientId, "tess");

      const errors = await page.evaluate(async (id) => {
        const out = {};
        for (const [name, call] of [
          ["again", () => window.client.cancelTask(id)],
          ["unknown", () => window.client.queryProgress("no-such-task")],
        ]) {
          try {
            await call();
            out[name] = "no error";
          } catch (err) {
            out[name] = `${err.name} ${err.status} ${err.code}`;
          }
        }
        return out;
      }, taskId);
      assert.deepEqual(errors, {
        again: "ServerError 409 task_finished",
        unknown: "ServerError 404 task_not_found",
      });
      await page.close();
    });
  });
});

describe("the SDK's dispatcher in Chromium", () => {
  test("history(n) holds at most historySize messages, the oldest dropped", async () => {
    await withServer({}, async (server) => {
      const page = await openPage(browser, server);
      await seenClient(page, { clientId: "hana", historySize: 5, shareAcrossTabs: false });
      await publish(server, "hana", 0, 3);
      await assertAllOnce(page, 3);
      const ns = (n) => page.evaluate((n) => window.client.history(n).map((m) => m.payload.n), n);
      assert.deepEqual(await ns(undefined), [0, 1, 2]); // system frames (connect) are not history
      await publish(server, "hana", 3, 12);
      await assertAllOnce(page, 12);
      assert.deepEqual(await ns(undefined), [7, 8, 9, 10, 11]);
      assert.deepEqual(await ns(3), [9, 10, 11]);
      assert.deepEqual(await ns(10), [7, 8, 9, 10, 11]);
      assert.deepEqual(await ns(0), []);
      await page.close();
    });
  });
});

describe("live topic changes in Chromium", () => {
  /** tara's token (news.>, sport.*), an admin's publish to a topic, and tara's connection row. */
  const tara = (server) => {
    const admin = { Authorization: `Bearer ${jwt({ sub: "ops", admin: true })}` };
    const send = async (topic, payload) => {
      const [status] = await server.post("/api/messages", { type: "json", topic, payload }, admin);
      assert.equal(status, 202);
    };
    const row = async () => (await server.get("/api/connections", admin))[1].find((c) => c.clientId === "tara");
    return { send, row, token: jwt({ sub: "tara", topics: ["news.>", "sport.*"] }) };
  };

  test("subscribeTopics/unsubscribeTopics change the live stream, and the client reconnects with the new set", async () => {
    await withServer({ ...JWT_ENV, SSE_FAST_MAX_CONNECTIONS_PER_CLIENT: "1" }, async (server) => {
      const { send, row, token } = tara(server);
      const page = await openPage(browser, server);
      const changed = await page.evaluate(async (token) => {
        const c = (window.client = window.sdk.createClient({
          token,
          topics: ["news.eu"],
          shareAcrossTabs: false,
          reconnectBaseDelay: 50,
        }));
        window.seen = [];
        c.subscribe("json", (m) => window.seen.push(m.payload));
        await c.connect();
        const added = await c.subscribeTopics("sport.*");
        const removed = await c.unsubscribeTopics("news.eu", "never.had");
        let refused = null;
        try {
          await c.subscribeTopics("secret.x");
        } catch (err) {
          refused = { auth: err instanceof window.sdk.AuthError, status: err.status };
        }
        return { added, removed, refused, topics: c.topics };
      }, token);
      assert.deepEqual(changed, {
        added: ["news.eu", "sport.*"],
        removed: ["sport.*"],
        refused: { auth: true, status: 403 },
        topics: ["sport.*"],
      });
      assert.deepEqual((await row()).topics, ["sport.*"]);
      await send("news.eu", "removed");
      await send("sport.a", "added");
      await until(page, () => window.seen.includes("added"), null, "the added topic's message");
      // Another stream of tara's replaces the page's (the limit is 1): the client reconnects with its new set.
      const before = await page.evaluate(() => window.client.connectionInfo.connectionId);
      const intruder = new AbortController();
      const res = await server.fetch(`${server.url}/sse`, {
        headers: { Authorization: `Bearer ${token}` },
        signal: intruder.signal,
      });
      assert.equal(res.status, 200);
      await send("news.eu", "removed-while-away");
      await send("sport.b", "missed-while-away");
      intruder.abort();
      await until(page, (id) => window.client.connectionInfo.connectionId !== id, before, "a new stream");
      await until(page, () => window.seen.includes("missed-while-away"), null, "the message missed while away");
      await send("sport.c", "after");
      await until(page, () => window.seen.includes("after"), null, "the message after the reconnect");
      assert.deepEqual(await page.evaluate(() => window.seen), ["added", "missed-while-away", "after"]);
      await waitFor(async () => (await row())?.topics?.join() === "sport.*", 15000, "the new stream's row");
      await page.close();
    });
  });

  test("a change made while a reconnect is on its way reaches the stream that request opens", async () => {
    await withServer({ ...JWT_ENV, SSE_FAST_MAX_CONNECTIONS_PER_CLIENT: "1" }, async (server) => {
      const { send, row, token } = tara(server);
      const page = await openPage(browser, server);
      await page.evaluate(async (token) => {
        const c = (window.client = window.sdk.createClient({
          token,
          topics: ["news.eu"],
          shareAcrossTabs: false,
          reconnectBaseDelay: 50,
        }));
        window.seen = [];
        c.subscribe("json", (m) => window.seen.push(m.payload));
        await c.connect();
      }, token);
      const before = await page.evaluate(() => window.client.connectionInfo.connectionId);
      // Hold the next stream request (built with the old set) until the change has been made.
      const held = [];
      let hold = true;
      await page.route(/\/sse\?/, (route) => (hold ? held.push(route) : route.continue()));
      const intruder = new AbortController();
      const res = await server.fetch(`${server.url}/sse`, {
        headers: { Authorization: `Bearer ${token}` },
        signal: intruder.signal,
      });
      assert.equal(res.status, 200); // replaces the page's stream (the limit is 1): the SDK reconnects
      await waitFor(async () => held.length > 0, 15000, "the reconnect's request");
      assert.match(held[0].request().url(), /topics=news\.eu/);
      const topics = await page.evaluate(async () => {
        await window.client.subscribeTopics("sport.*");
        return window.client.unsubscribeTopics("news.eu");
      });
      assert.deepEqual(topics, ["sport.*"]);
      intruder.abort();
      hold = false;
      for (const route of held) await route.continue();
      await until(page, (id) => window.client.connectionInfo.connectionId !== id, before, "a new stream");
      // The stream opened with news.eu; the SDK applies the change to it.
      await waitFor(async () => (await row())?.topics?.join() === "sport.*", 15000, "the change on the new stream");
      assert.deepEqual(await page.evaluate(() => window.client.topics), ["sport.*"]);
      await send("news.eu", "removed");
      await send("sport.a", "added");
      await until(page, () => window.seen.includes("added"), null, "the added topic's message");
      assert.deepEqual(await page.evaluate(() => window.seen), ["added"]);
      await page.close();
    });
  });
});
