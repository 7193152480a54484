// The SDK's presence(topic) in a real Chromium against a real sse-fast server (auth = jwt): the counts and the
// clients whose patterns admit the topic, the list's limit, and the server's refusals as the SDK's errors.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { JWT_ENV, Server, jwt, launchBrowser, openPage, waitFor } from "./helpers.mjs";

/** @type {any} */
let browser;
/** @type {Server} */
let server;
before(async () => {
  browser = await launchBrowser();
  server = await Server.start(JWT_ENV);
});
after(async () => {
  server?.kill();
  await browser?.cleanup();
});

const token = (sub, claims = {}) => jwt({ sub, exp: Math.floor(Date.now() / 1000) + 3600, ...claims });

test("presence(topic): who receives it, bounded by limit, and the server's refusals as errors", async () => {
  const page = await openPage(browser, server);
  const watched = [
    ["alice", ["pr.orders.*"]],
    ["bob", ["pr.orders.eu"]],
    ["carol", ["pr.orders.us"]],
  ];
  await page.evaluate(async (watched) => {
    window.streams = [];
    for (const [token, topics] of watched) {
      const c = window.sdk.createClient({ url: location.origin, token, topics, shareAcrossTabs: false });
      window.streams.push(c);
      await c.connect();
    }
  }, watched.map(([sub, topics]) => [token(sub, { topics }), topics]));

  const ask = (tok, topic, options) =>
    page.evaluate(
      async ([tok, topic, options]) => {
        const c = window.sdk.createClient({ url: location.origin, token: tok, autoConnect: false });
        try {
          return await c.presence(topic, options);
        } catch (err) {
          return `${err.name} ${err.status} ${err.code}`;
        } finally {
          c.dispose();
        }
      },
      [tok, topic, options],
    );
  const admin = token("boss", { admin: true });
  const answer = await waitFor(async () => {
    const a = await ask(admin, "pr.orders.eu");
    return a.count === 2 && a;
  }, 15000, "both subscribers counted");
  assert.deepEqual(answer, {
    topic: "pr.orders.eu",
    scope: "cluster",
    count: 2,
    connections: 2,
    clients: [
      { clientId: "alice", connections: 1 },
      { clientId: "bob", connections: 1 },
    ],
    truncated: false,
    limit: 100,
  });
  const one = await ask(admin, "pr.orders.us", { scope: "node", limit: 1 });
  assert.deepEqual(
    [one.scope, one.count, one.clients, one.truncated],
    ["node", 2, [{ clientId: "alice", connections: 1 }], true],
  );
  // A client whose grants cover the topic may ask; one whose grants do not gets AuthError; a pattern is a 400.
  assert.equal((await ask(token("reader", { topics: ["pr.orders.*"] }), "pr.orders.eu")).count, 2);
  assert.equal(await ask(token("reader", { topics: ["pr.other"] }), "pr.orders.eu"), "AuthError 403 topic_not_granted");
  assert.equal(await ask(admin, "pr.orders.*"), "ServerError 400 invalid_topic");
  assert.deepEqual(page.errors, []);
  await page.close();
});
