// The admin page (/admin) in a real Chromium against a real sse-fast server: its elements, signing in with an API key
// or an admin JWT, a publish from its form reaching a second page that uses the SDK, a task's progress bar moving,
// pause, resume and cancel, and a screenshot (js/test-results/admin.png; docs/admin.png is a copy of one).
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { JWT_ENV, ROOT, Server, jwt, launchBrowser, openPage, waitFor } from "./helpers.mjs";

const API_KEY = "admin-browser-test-key-0123";
const ENV = { ...JWT_ENV, SSE_FAST_API_KEYS: API_KEY };
const RESULTS = join(ROOT, "js/test-results");

/** @type {any} */
let browser;
/** @type {Server} */
let server;
before(async () => {
  browser = await launchBrowser();
  server = await Server.start(ENV);
});
after(async () => {
  server?.kill();
  await browser?.cleanup();
});

/** Evaluate `fn(arg)` on `page` until it returns something truthy. */
const until = (page, fn, arg, what) => waitFor(() => page.evaluate(fn, arg), 20000, what);

/** The admin page, with its console errors (a CSP violation is one) and page errors collected. */
async function openAdmin() {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.problems = [];
  page.on("pageerror", (err) => page.problems.push(String(err)));
  page.on("console", (msg) => msg.type() === "error" && page.problems.push(msg.text()));
  await page.goto(`${server.url}/admin`);
  return page;
}

/** Sign in on the admin page; waits for the page to show the data (or the refusal). */
async function signIn(page, kind, value, { remember = false, expect = "ok" } = {}) {
  await page.selectOption("#cred-kind", kind);
  await page.fill("#cred", value);
  if (remember) await page.check("#remember");
  await page.click("#sign-in");
  await until(page, (want) => document.getElementById("status").className === want, expect, `status ${expect}`);
}

/** The text of every cell of the rows of `tbody`, as arrays. */
const rows = (page, tbody) =>
  page.evaluate((id) => [...document.querySelectorAll(`#${id} tr`)].map((tr) => [...tr.cells].map((c) => c.textContent)), tbody);

/** Status and progress of a task's row, or null while it is not listed. */
const taskRow = (page, taskId) =>
  page.evaluate((id) => {
    const tr = document.querySelector(`#task-rows tr[data-task-id="${id}"]`);
    if (!tr) return null;
    return { status: tr.cells[3].textContent, progress: tr.querySelector("progress").value };
  }, taskId);

const click = (page, taskId, action) => page.click(`#task-rows tr[data-task-id="${taskId}"] button[data-action="${action}"]`);

describe("the admin page in Chromium", () => {
  test("shows nothing without a credential; with an API key: connections, publish, tasks, tail, charts", async () => {
    const admin = await openAdmin();
    for (const id of ["login", "cred", "conn-rows", "task-rows", "publish-form", "pub-scope", "pub-payload",
      "recent-rows", "chart-deliveries", "chart-streams", "chart-slow"]) {
      assert.ok(await admin.$(`#${id}`), `#${id} is on the page`);
    }
    await until(admin, () => document.getElementById("status").className === "error", null, "refused first");
    assert.match(await admin.textContent("#status"), /missing_token/);
    assert.deepEqual(await rows(admin, "conn-rows"), []);

    // A second page: bob, with the SDK, streaming his topics.
    const bob = await openPage(browser, server);
    await bob.evaluate(async (token) => {
      const c = (window.client = window.sdk.createClient({ token, topics: ["news.>"], shareAcrossTabs: false }));
      window.got = [];
      c.subscribe("*", (m) => window.got.push(m));
      await c.connect();
    }, jwt({ sub: "bob", topics: ["news.>"] }));

    await signIn(admin, "apikey", API_KEY);
    assert.equal(await admin.evaluate(() => sessionStorage.length), 0, "not kept unless asked");
    await until(admin, () => [...document.querySelectorAll("#conn-rows tr")].some((tr) => tr.cells[1].textContent === "bob"),
      null, "bob's connection listed");
    const conn = (await rows(admin, "conn-rows")).find((r) => r[1] === "bob");
    assert.equal(conn[3], "news.>");
    assert.ok(conn[2].startsWith(`${conn[0]}.`), "the node is the connection id's prefix");

    // The publish form: a direct message and a topic message reach bob's page.
    await admin.selectOption("#pub-scope", "direct");
    await admin.fill("#pub-dest", "bob");
    await admin.fill("#pub-type", "text");
    await admin.fill("#pub-payload", "<b>hello</b> from the admin page");
    await admin.selectOption("#pub-priority", "2");
    await admin.check("#pub-ack");
    await admin.click("#pub-send");
    await until(bob, () => window.got.some((m) => m.payload === "<b>hello</b> from the admin page"), null, "direct");
    const direct = await bob.evaluate(() => window.got.find((m) => m.type === "text"));
    assert.equal(direct.priority, 2);
    assert.equal(direct.requireAck, true);
    assert.equal(direct.source, "server");
    await admin.selectOption("#pub-scope", "topic");
    await admin.fill("#pub-dest", "news.eu");
    await admin.fill("#pub-type", "json");
    await admin.fill("#pub-payload", '{"headline": "admin page ships"}');
    await admin.uncheck("#pub-ack");
    await admin.click("#pub-send");
    await until(bob, () => window.got.some((m) => m.type === "json" && m.payload.headline === "admin page ships"), null, "topic");
    await admin.fill("#pub-payload", "{not json");
    await admin.click("#pub-send");
    assert.match(await admin.textContent("#pub-result"), /not JSON/);

    // The tail shows both, newest first, written as text (the <b> is not markup).
    await until(admin, () => document.querySelectorAll("#recent-rows tr").length >= 2, null, "tail");
    const tail = await rows(admin, "recent-rows");
    assert.deepEqual(tail[0].slice(1, 3), ["json", "# news.eu"]);
    assert.deepEqual(tail[1].slice(1, 3), ["text", "→ bob"]);
    assert.equal(tail[1][5], JSON.stringify("<b>hello</b> from the admin page"));
    assert.equal(await admin.$("#recent-rows b"), null, "no markup from data");

    // A task of bob's: its progress bar moves; pause, resume and cancel from the admin page.
    await bob.evaluate(() => {
      window.client
        .runTask("count", { to: 400, interval: 0.05 }, { onStart: (id) => (window.taskId = id) })
        .then(() => (window.outcome = "completed"), (err) => (window.outcome = `${err.name}: ${err.code}`));
    });
    const taskId = await until(bob, () => window.taskId, null, "task started");
    const first = await waitFor(async () => {
      const row = await taskRow(admin, taskId);
      return row && row.progress > 0 && row;
    }, 20000, "progress shown");
    await waitFor(async () => (await taskRow(admin, taskId)).progress > first.progress, 20000, "progress moves");
    await click(admin, taskId, "pause");
    await waitFor(async () => (await taskRow(admin, taskId)).status === "paused", 20000, "paused");
    const paused = (await taskRow(admin, taskId)).progress;
    await click(admin, taskId, "resume");
    await waitFor(async () => (await taskRow(admin, taskId)).progress > paused, 20000, "resumed and moving");

    // Charts read /metrics: a few points in, and one open stream (bob's).
    await until(admin, () => Number(document.getElementById("chart-streams").dataset.points) >= 3, null, "charts");
    assert.equal(await admin.evaluate(() => document.getElementById("chart-streams").dataset.last), "1");
    assert.ok(await admin.$("#chart-deliveries polyline"));

    mkdirSync(RESULTS, { recursive: true });
    await admin.evaluate(() => window.scrollTo(0, 0));
    await admin.screenshot({ path: join(RESULTS, "admin.png") });

    await click(admin, taskId, "cancel");
    await waitFor(async () => (await taskRow(admin, taskId)).status === "cancelled", 20000, "cancelled");
    assert.equal(await until(bob, () => window.outcome, null, "runTask settled"), "TaskError: cancelled");
    // The 401s before signing in (and the favicon's 404) are the browser's log of refused requests; a CSP violation
    // ("Refused to ...") or a script error would be something else.
    assert.deepEqual(admin.problems.filter((p) => !/^Failed to load resource: .* (401|404)/.test(p)), []);
    await bob.evaluate(() => window.client.dispose());
    await bob.close();
    await admin.close();
  });

  test("a JWT: a client's is refused (admin_required), an admin's works and is kept only in sessionStorage", async () => {
    const admin = await openAdmin();
    await signIn(admin, "jwt", jwt({ sub: "eve", topics: ["*"] }), { expect: "error" });
    assert.match(await admin.textContent("#status"), /admin_required/);
    const token = jwt({ sub: "ops", admin: true });
    await signIn(admin, "jwt", token, { remember: true });
    assert.deepEqual(JSON.parse(await admin.evaluate(() => sessionStorage.getItem("sse-fast-admin"))), { kind: "jwt", value: token });
    assert.equal(await admin.evaluate(() => localStorage.length), 0);
    assert.equal(await admin.inputValue("#cred"), "", "the field is cleared");
    await admin.reload(); // kept for this tab
    await until(admin, () => document.getElementById("status").className === "ok", null, "signed in after reload");
    assert.ok(!admin.url().includes(token) && admin.url() === `${server.url}/admin`, "never in the URL");
    // A broadcast from the form, as the admin JWT: its source is the token's subject.
    await admin.selectOption("#pub-scope", "broadcast");
    await admin.fill("#pub-type", "system");
    await admin.fill("#pub-payload", '"maintenance at 5"');
    await admin.click("#pub-send");
    await until(admin, () => [...document.querySelectorAll("#recent-rows tr")].some((tr) => tr.cells[2].textContent === "everyone" && tr.cells[3].textContent === "ops"), null, "broadcast in the tail");
    await admin.click("#sign-out");
    assert.equal(await admin.evaluate(() => sessionStorage.length), 0);
    await until(admin, () => document.getElementById("status").className === "error", null, "signed out");
    assert.deepEqual(await rows(admin, "recent-rows"), []);
    assert.deepEqual(admin.problems.filter((p) => !/^Failed to load resource: .* (401|403|404)/.test(p)), []);
    await admin.close();
  });
});
