// The SDK in a real Chromium against a real sse-fast server: every behaviour a page relies on.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { execFile, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { JWT_ENV, ROOT, Server, freePort, jwt, launchBrowser, openPage, readmeBlock, waitFor, withServer } from "./helpers.mjs";

const run = promisify(execFile);

/** @type {any} */
let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.cleanup();
});

/** Evaluate `fn(arg)` on `page` until it returns something truthy. */
const until = (page, fn, arg, what) => waitFor(() => page.evaluate(fn, arg), 15000, what);

describe("sse-fast in Chromium", () => {
  test("connects, receives typed messages, runs handlers by priority, once, history", async () => {
    await withServer({}, async (server) => {
      const page = await openPage(browser, server);
      await page.evaluate(async () => {
        const c = (window.client = window.sdk.createClient({ clientId: "alice", topics: ["news.*"], autoConnect: false }));
        window.calls = [];
        c.subscribe("text", (m) => window.calls.push(`text:${m.payload}`));
        c.subscribe("*", (m) => window.calls.push(`*:${m.type}`), { priority: 5 });
        c.subscribe("json", (m) => window.calls.push(`json:${m.payload.n}`));
        c.subscribe("order.created", (m) => window.calls.push(`order:${m.payload.sku}:${m.priority}`));
        c.once("json", (m) => window.calls.push(`once:${m.payload.n}`), { priority: 9 });
        window.states = [];
        c.onStateChange((old, state) => window.states.push(state));
        await c.connect();
      });
      assert.equal(await page.evaluate(() => window.client.state), "connected");
      await server.post("/api/messages", { type: "text", topic: "news.eu", payload: "hello" });
      await server.post("/api/direct/alice", { type: "json", payload: { n: 1 } });
      await server.post("/api/direct/alice", { type: "json", payload: { n: 2 } });
      await server.post("/api/messages", { type: "order.created", topic: "news.us", payload: { sku: "x" }, priority: 3 });
      await server.post("/api/messages", { type: "text", topic: "sports.eu", payload: "not subscribed" });
      await server.post("/api/direct/alice", { type: "text", payload: "last" });
      await until(page, () => window.calls.includes("text:last"), null, "all messages");
      const calls = await page.evaluate(() => window.calls);
      assert.deepEqual(calls, [
        "*:text", "text:hello",
        "once:1", "*:json", "json:1",
        "*:json", "json:2",
        "*:order.created", "order:x:3",
        "*:text", "text:last",
      ]); // prettier-ignore
      const info = await page.evaluate(() => ({
        history: window.client.history().map((m) => m.type),
        last2: window.client.history(2).map((m) => m.payload),
        stats: window.client.getStats(),
        connection: window.client.connectionInfo,
        states: window.states,
      }));
      assert.deepEqual(info.history, ["text", "json", "json", "order.created", "text"]);
      assert.deepEqual(info.last2, [{ sku: "x" }, "last"]);
      assert.equal(info.stats.received, 6); // the connect event and five messages
      assert.equal(info.stats.byType.json, 2);
      assert.equal(info.connection.clientId, "alice");
      assert.deepEqual(info.states.slice(0, 2), ["connecting", "connected"]);
      assert.deepEqual(page.errors, []);
      await page.close();
    });
  });

  test("resumes after the server kills the stream mid-burst: no loss, no duplicate", async () => {
    await withServer({ SSE_FAST_MAX_CONNECTIONS_PER_CLIENT: "1" }, async (server) => {
      const page = await openPage(browser, server);
      await page.evaluate(async () => {
        const c = (window.client = window.sdk.createClient({ clientId: "bob", reconnectBaseDelay: 50 }));
        window.seen = [];
        c.subscribe("json", (m) => window.seen.push(m.payload.n));
        await c.connect();
      });
      const burst = async (from, to) => {
        for (let n = from; n < to; n++) {
          const [status] = await server.post("/api/direct/bob", { type: "json", payload: { n }, priority: n % 4 },
                                             { "X-Client-Id": `pub${Math.floor(n / 50)}` }); // prettier-ignore
          assert.equal(status, 202);
        }
      };
      await burst(0, 40);
      // Another connection of bob: past the per-client limit of 1, the server closes the page's stream (replaced).
      const thief = new AbortController();
      const res = await fetch(`${server.url}/sse?clientId=bob`, { signal: thief.signal });
      assert.equal(res.status, 200);
      await res.body.getReader().read(); // its opening is written: the page's stream is closed now
      await burst(40, 80); // while the page is away, then back
      thief.abort();
      await burst(80, 120);
      await until(page, () => window.seen.includes(119), null, "the whole burst");
      const seen = await page.evaluate(() => window.seen);
      assert.deepEqual([...seen].sort((a, b) => a - b), Array.from({ length: 120 }, (_, i) => i));
      const stats = await page.evaluate(() => window.client.getStats());
      assert.ok(stats.reconnects >= 1, `reconnects ${stats.reconnects}`);
      assert.equal(stats.gaps, 0);
      assert.equal(await page.evaluate(() => window.client.connectionInfo.resumed), true);
      await page.close();
    });
  });

  test("the outbox holds sends while the server is down and flushes them when it is back", async () => {
    await withServer({}, async (server) => {
      const page = await openPage(browser, server);
      await page.evaluate(async () => {
        const c = (window.client = window.sdk.createClient({
          clientId: "carol",
          reconnectBaseDelay: 100,
          reconnectMaxDelay: 500,
          maxReconnectAttempts: null,
        }));
        window.texts = [];
        c.subscribe("text", (m) => window.texts.push(m.payload));
        await c.connect();
      });
      await server.stop();
      await until(page, () => window.client.state !== "connected", null, "the page sees the server gone");
      await page.evaluate(() => {
        window.answers = [];
        for (const [i, p] of [[1, 1], [2, 3], [3, 0]]) {
          window.client.sendText(`queued ${i}`, { target: "carol", priority: p }).then((a) => window.answers.push(a));
        }
      });
      assert.equal(await page.evaluate(() => window.client.getStats().queued), 3);
      await server.start(); // the same port
      await until(page, () => window.texts.length === 3, null, "the three queued sends delivered");
      const texts = await page.evaluate(() => window.texts);
      assert.deepEqual(new Set(texts), new Set(["queued 1", "queued 2", "queued 3"]));
      await until(page, () => window.answers.length === 3, null, "answers");
      const answers = await page.evaluate(() => window.answers);
      assert.ok(answers.every((a) => a.success && a.messageId), JSON.stringify(answers));
      const stats = await page.evaluate(() => window.client.getStats());
      assert.equal(stats.queued, 0);
      assert.equal(stats.sent, 3);
      assert.equal(stats.gaps, 1); // a new server process: the old cursor is unknown, and the client knows it
      await page.close();
    });
  });

  test("two tabs share one stream; the other tab takes over when the leader closes", async () => {
    await withServer({}, async (server) => {
      const open = async () => {
        const page = await openPage(browser, server);
        await page.evaluate(async () => {
          const c = (window.client = window.sdk.createClient({ clientId: "dave" }));
          window.texts = [];
          c.subscribe("text", (m) => window.texts.push(m.payload));
          await c.connect();
        });
        return page;
      };
      const first = await open();
      const second = await open();
      const daves = async () => (await server.get("/api/connections"))[1].filter((c) => c.clientId === "dave");
      assert.equal((await daves()).length, 1);
      assert.deepEqual(await Promise.all([first, second].map((p) => p.evaluate(() => window.client.isLeader))), [
        true,
        false,
      ]);
      assert.equal(await second.evaluate(() => window.client.state), "connected");
      await server.post("/api/direct/dave", { type: "text", payload: "to both" });
      for (const page of [first, second]) await until(page, () => window.texts.includes("to both"), null, "both");
      await first.close(); // the leader goes: its lock is released and the second tab opens the stream
      await until(second, () => window.client.isLeader, null, "the second tab leads");
      await until(second, () => window.client.state === "connected", null, "connected again");
      await server.post("/api/direct/dave", { type: "text", payload: "after" });
      await until(second, () => window.texts.includes("after"), null, "delivered to the new leader");
      await waitFor(async () => (await daves()).length === 1, 15000, "one connection for dave");
      assert.deepEqual(await second.evaluate(() => window.texts), ["to both", "after"]);
      await second.close();
    });
  });

  test("acknowledges a requireAck message once its handler returned", async () => {
    await withServer({}, async (server) => {
      const page = await openPage(browser, server);
      await page.evaluate(async () => {
        const c = (window.client = window.sdk.createClient({ clientId: "erin" }));
        window.handled = 0;
        c.subscribe("text", async () => {
          await new Promise((r) => setTimeout(r, 50));
          window.handled++;
        });
        await c.connect();
      });
      const [, answer] = await server.post("/api/direct/erin", { type: "text", payload: "ack me", requireAck: true },
                                           { "X-Client-Id": "boss" }); // prettier-ignore
      const status = await waitFor(async () => {
        const [, s] = await server.get(`/api/messages/${answer.messageId}`, { "X-Client-Id": "boss" });
        return s.status === "acked" && s;
      }, 15000, "acked");
      assert.deepEqual(status.ackedBy, ["erin"]);
      assert.equal(await page.evaluate(() => window.handled), 1);
      await page.close();
    });
  });

  test("runTask resolves with the result after progress; a failing task rejects with TaskError", async () => {
    await withServer({}, async (server) => {
      const page = await openPage(browser, server);
      const result = await page.evaluate(async () => {
        const c = (window.client = window.sdk.createClient({ clientId: "frank" }));
        await c.connect();
        const progress = [];
        const value = await c.runTask("count", { to: 3, interval: 0.05 }, { onProgress: (p) => progress.push(p) });
        let error;
        try {
          await c.runTask("fail", { message: "boom", permanent: true });
        } catch (err) {
          error = { name: err.name, status: err.code, error: err.error, isTaskError: err instanceof window.sdk.TaskError };
        }
        return { value, progress, error };
      });
      assert.deepEqual(result.value, { counted: 3 });
      assert.deepEqual(result.progress.map((p) => Math.round(p.progress)), [33, 67, 100]);
      assert.equal(result.progress[2].description, "3/3");
      assert.ok(result.progress[0].taskId);
      assert.deepEqual(result.error, { name: "TaskError", status: "failed", error: "boom", isTaskError: true });
      await page.close();
    });
  });

  test("401 is fatal: refreshToken is tried once, and its good token connects", async () => {
    await withServer(JWT_ENV, async (server) => {
      const page = await openPage(browser, server);
      const good = jwt({ sub: "gina", topics: ["t.>"] });
      const result = await page.evaluate(async (good) => {
        const { createClient, AuthError } = window.sdk;
        const out = {};
        let refreshed = 0;
        const bad = createClient({ token: "not-a-jwt", refreshToken: () => (refreshed++, "still-bad") });
        try {
          await bad.connect();
        } catch (err) {
          out.bad = { auth: err instanceof AuthError, status: err.status, code: err.code, state: bad.state };
        }
        out.refreshedBad = refreshed;
        try {
          await bad.sendText("x", { topic: "t.a" });
        } catch (err) {
          out.send = err.name;
        }
        refreshed = 0;
        const healed = (window.client = createClient({ token: "expired", refreshToken: () => (refreshed++, good) }));
        await healed.connect();
        out.healed = { state: healed.state, clientId: healed.clientId, refreshed };
        return out;
      }, good);
      assert.deepEqual(result.bad, { auth: true, status: 401, code: "invalid_token", state: "error" });
      assert.equal(result.refreshedBad, 1);
      assert.equal(result.send, "AuthError");
      assert.deepEqual(result.healed, { state: "connected", clientId: "gina", refreshed: 1 });
      await page.close();
    });
  });

  test("EventSource transport: the token is exchanged for a one-time ticket and never put in a URL", async () => {
    await withServer({ ...JWT_ENV, SSE_FAST_MAX_CONNECTIONS_PER_CLIENT: "1" }, async (server) => {
      const token = jwt({ sub: "hank", topics: ["t.>"] });
      const admin = { Authorization: `Bearer ${jwt({ sub: "ops", admin: true })}` };
      const page = await openPage(browser, server);
      await page.evaluate(async (token) => {
        const c = (window.client = window.sdk.createClient({ token, transport: "eventsource", topics: ["t.*"] }));
        window.seen = [];
        c.subscribe("json", (m) => window.seen.push(m.payload));
        c.subscribe("custom.kind", (m) => window.seen.push(m.payload));
        await c.connect();
      }, token);
      await server.post("/api/messages", { type: "json", topic: "t.a", payload: 1 }, admin);
      await server.post("/api/messages", { type: "custom.kind", topic: "t.b", payload: 2 }, admin);
      await until(page, () => window.seen.length === 2, null, "two messages over EventSource");
      // The server closes the stream (another connection of hank): the SDK takes a new ticket and resumes.
      const thief = new AbortController();
      const res = await fetch(`${server.url}/sse`, { headers: { Authorization: `Bearer ${token}` }, signal: thief.signal });
      await res.body.getReader().read();
      await server.post("/api/messages", { type: "json", topic: "t.a", payload: 3 }, admin);
      thief.abort();
      await until(page, () => window.seen.includes(3), null, "the message sent while away");
      assert.deepEqual(await page.evaluate(() => window.seen), [1, 2, 3]);
      assert.equal(await page.evaluate(() => window.client.connectionInfo.resumed), true);
      const urls = await page.evaluate(() => performance.getEntriesByType("resource").map((e) => e.name));
      const streams = urls.filter((u) => u.includes("/sse?"));
      assert.ok(streams.length >= 1 && streams.every((u) => u.includes("ticket=")), streams.join("\n"));
      assert.ok(urls.every((u) => !u.includes(token)), "a token in a URL");
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      assert.match(metrics, /^sse_fast_tickets_redeemed_total 2\.0$/m); // one ticket per stream, each used once
      await page.close();
    });
  });

  // The README's browser recipe as a reader runs it: the page saved as index.html in a folder served by
  // `python -m http.server` (another origin), sse-fast started with that origin in SSE_FAST_CORS_ORIGINS, the
  // README's curl to publish. Only the ports differ from the README (8000: sse-fast, 8080: the page's server).
  test("the README's recipe commands are the ones run here", () => {
    const readme = readFileSync(join(ROOT, "README.md"), "utf8");
    const section = readme.slice(readme.indexOf("## In the browser"), readme.indexOf("## Admin page"));
    assert.ok(section.includes(`SSE_FAST_CORS_ORIGINS=${README_SITE} sse-fast serve`));
    assert.ok(section.includes("python -m http.server 8080 --bind 127.0.0.1"));
    assert.ok(section.includes("open http://127.0.0.1:8080/"));
  });

  test("the README's SDK page, served from another origin, works cross-origin", async () => {
    await withReadmePage("browser-sdk-page", { cors: true }, async ({ page, server }) => {
      await until(page, () => document.querySelector("#state")?.textContent === "connected", null, "connected");
      await publishAsReadme();
      await until(page, () => document.querySelectorAll("#log li").length >= 1, null, "one item");
      assert.deepEqual(await items(page), ["text: hello"]);
      const sdk = await page.evaluate(() => performance.getEntriesByType("resource").map((e) => e.name));
      assert.ok(sdk.includes(`${server.url}/sdk/sse-fast.js`), sdk.join("\n")); // the module came from sse-fast
      // The SDK's POSTs from this origin (preflighted: content-type, x-client-id): another client sends to alice.
      const answer = await page.evaluate(async (url) => {
        const { createClient } = await import(`${url}/sdk/sse-fast.js`);
        const bob = createClient({ url, clientId: "bob", autoConnect: false });
        await bob.connect(); // its own stream, preflighted too (x-client-id)
        const sent = await bob.sendText("from bob", { target: "alice" });
        bob.dispose();
        return sent;
      }, server.url);
      assert.ok(answer.success && answer.messageId, JSON.stringify(answer));
      await until(page, () => document.querySelectorAll("#log li").length >= 2, null, "bob's text");
      assert.deepEqual(await items(page), ["text: hello", "text: from bob"]);
      assert.equal(await preflighted(page, server), 202);
      assert.deepEqual(page.errors, []);
      assert.deepEqual(page.blocked, []);
    });
  });

  test("the README's plain EventSource page, served from another origin, works cross-origin", async () => {
    await withReadmePage("browser-plain-eventsource", { cors: true }, async ({ page, server }) => {
      await until(page, () => document.querySelector("#log")?.dataset.connected === "yes", null, "connected");
      await publishAsReadme();
      await server.post("/api/direct/alice", { type: "json", payload: { n: 7 } });
      await until(page, () => document.querySelectorAll("#log li").length >= 2, null, "two items");
      assert.deepEqual(await items(page), ["text: hello", 'json: {"n":7}']);
      assert.deepEqual(page.errors, []);
      assert.deepEqual(page.blocked, []);
    });
  });

  test("control: without the page's origin in SSE_FAST_CORS_ORIGINS the browser refuses both pages", async () => {
    await withReadmePage("browser-sdk-page", { cors: false }, async ({ page, server }) => {
      // The module script is fetched in CORS mode: blocked, so the page's module never runs.
      await waitFor(() => page.blocked.length > 0, 15000, "the SDK blocked by CORS");
      assert.match(page.blocked[0], new RegExp(`script at '${server.url}/sdk/sse-fast.js'`));
      assert.equal(await preflighted(page, server), "refused");
      await publishAsReadme();
      assert.equal(await page.evaluate(() => document.querySelector("#state").textContent), "disconnected");
      assert.deepEqual(await items(page), []);
    });
    await withReadmePage("browser-plain-eventsource", { cors: false }, async ({ page, server }) => {
      await waitFor(() => page.blocked.length > 0, 15000, "the stream blocked by CORS");
      assert.match(page.blocked[0], new RegExp(`resource at '${server.url}/sse\\?`));
      // A CORS failure fails the EventSource for good: CLOSED, no reconnect, never connected.
      await until(page, () => source.readyState === EventSource.CLOSED, null, "EventSource closed");
      await publishAsReadme();
      assert.equal(await page.evaluate(() => document.querySelector("#log").dataset.connected), undefined);
      assert.deepEqual(await items(page), []);
    });
  });
});

/** The page origin the README's recipe lists in SSE_FAST_CORS_ORIGINS. */
const README_SITE = "http://127.0.0.1:8080";
const PYTHON = join(ROOT, ".venv/bin/python");

/** The README's ports replaced by the test's (and nothing else): 8000 is sse-fast, 8080 the page's server. */
let ports = { server: 0, site: 0 };
function withPorts(text) {
  assert.match(text, /127\.0\.0\.1:8000\b/);
  return text
    .replaceAll("127.0.0.1:8000", `127.0.0.1:${ports.server}`)
    .replaceAll("127.0.0.1:8080", `127.0.0.1:${ports.site}`);
}

/** `python -m http.server <port> --bind 127.0.0.1` in `dir` (the README's command); resolves once it answers. */
async function startSite(dir) {
  const port = await freePort();
  const args = ["-m", "http.server", String(port), "--bind", "127.0.0.1"];
  const proc = spawn(PYTHON, args, { cwd: dir, detached: true, stdio: "pipe" });
  const site = { port, url: `http://127.0.0.1:${port}`, output: "", kill: () => {} };
  site.kill = () => {
    try {
      process.kill(-(/** @type {number} */ (proc.pid)), "SIGKILL");
    } catch {}
  };
  proc.stdout.on("data", (d) => (site.output += d));
  proc.stderr.on("data", (d) => (site.output += d));
  try {
    await waitFor(async () => {
      if (proc.exitCode !== null) throw new Error(`http.server exited ${proc.exitCode}:\n${site.output}`);
      return fetch(`${site.url}/`).then((r) => r.ok, () => false);
    }, 15000, "http.server up"); // prettier-ignore
  } catch (err) {
    site.kill();
    throw err;
  }
  return site;
}

/**
 * The README block `marker` saved as index.html in a fresh folder served by http.server, sse-fast started with
 * (`cors`) or without that origin in SSE_FAST_CORS_ORIGINS, and Chromium on the folder's URL. `page.blocked`
 * collects the console's CORS refusals.
 */
async function withReadmePage(marker, { cors }, fn) {
  const dir = mkdtempSync(join(tmpdir(), "sse-fast-page-"));
  let site, server, page;
  try {
    site = await startSite(dir);
    server = await Server.start(cors ? { SSE_FAST_CORS_ORIGINS: site.url } : {});
    ports = { server: server.port, site: site.port };
    writeFileSync(join(dir, "index.html"), withPorts(readmeBlock(marker)));
    page = await browser.newPage();
    page.errors = [];
    page.blocked = [];
    page.on("pageerror", (err) => page.errors.push(String(err)));
    page.on("console", (msg) => /blocked by CORS policy/.test(msg.text()) && page.blocked.push(msg.text()));
    await page.goto(`${site.url}/`);
    await fn({ page, server, site });
  } catch (err) {
    err.message += `\n--- server output ---\n${server?.output.slice(-4000)}`;
    err.message += `\n--- http.server ---\n${site?.output.slice(-2000)}`;
    throw err;
  } finally {
    await page?.close();
    server?.kill();
    site?.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Run the README's publish step (its curl, ports replaced); it must be accepted. */
async function publishAsReadme() {
  const { stdout } = await run("sh", ["-c", withPorts(readmeBlock("browser-publish", "sh"))]);
  assert.equal(JSON.parse(stdout).success, true, stdout);
}

/** The texts of the page's #log items. */
const items = (page) => page.evaluate(() => [...document.querySelectorAll("#log li")].map((li) => li.textContent));

/**
 * A POST from the page with every header the SDK may send (so preflighted): its status, or "refused" when the
 * browser blocks it.
 */
const preflighted = (page, server) =>
  page.evaluate(async (url) => {
    const headers = { "content-type": "application/json", authorization: "Bearer x", "last-event-id": "0-0" };
    const body = JSON.stringify({ type: "text", topic: "other", payload: "preflighted" });
    return fetch(`${url}/api/messages`, { method: "POST", headers, body }).then((r) => r.status, () => "refused");
  }, server.url);
