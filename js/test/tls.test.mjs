// The SDK in a real Chromium over TLS (issue 15, section 3): `sse-fast serve --ssl-certfile/--ssl-keyfile` with a
// self-signed certificate that Chromium trusts by its public key alone (--ignore-certificate-errors-spki-list).
// Over HTTP/2 one page holds more than six streams to one host (they share one connection); over HTTP/1.1 the
// browser's limit of six connections per host holds the seventh back: the control that shows the test can fail.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { X509Certificate, createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { launchBrowser, openPage, waitFor, withServer } from "./helpers.mjs";

const CLIENTS = 10; // more than HTTP/1.1's six connections per host

/** @type {string} */
let dir;
/** @type {{ cert: string, key: string, ca: string }} */
let tls;
/** @type {any} */
let browser;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "sse-fast-tls-"));
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  // An EC P-256 key and a self-signed certificate for localhost and 127.0.0.1, valid for a day.
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
  ], { stdio: ["ignore", "ignore", "pipe"] }); // prettier-ignore
  tls = { cert, key, ca: readFileSync(cert, "utf8") };
  // Chromium trusts exactly this certificate: the base64 SHA-256 of its SubjectPublicKeyInfo.
  const spki = new X509Certificate(tls.ca).publicKey.export({ type: "spki", format: "der" });
  const pin = createHash("sha256").update(spki).digest("base64");
  browser = await launchBrowser({ args: [`--ignore-certificate-errors-spki-list=${pin}`] });
});

after(async () => {
  await browser?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Start an https server (`--http` as given) for one test and always stop it. */
const withTlsServer = (http, fn) => withServer({}, fn, { tls: { ...tls, http } });

/** A page on the https server's origin with CLIENTS fetch-transport clients (c0 … c9) opening at once. */
async function openClients(server) {
  const page = await openPage(browser, server);
  await page.evaluate((n) => {
    window.clients = [];
    window.got = {};
    for (let i = 0; i < n; i++) {
      const c = window.sdk.createClient({ clientId: `c${i}`, transport: "fetch" }); // autoConnect: opens now
      c.subscribe("text", (m) => (window.got[`c${i}`] = m.payload));
      window.clients.push(c);
    }
  }, CLIENTS);
  return page;
}

/** The protocol (ALPN) the page itself and the SDK module were fetched over. */
const protocols = (page) =>
  page.evaluate(() => ({
    page: performance.getEntriesByType("navigation")[0].nextHopProtocol,
    sdk: performance.getEntriesByType("resource").find((e) => e.name.endsWith("/sdk/sse-fast.js"))?.nextHopProtocol,
  }));

const connected = (page) => page.evaluate(() => window.clients.filter((c) => c.state === "connected").length);
const serverStreams = async (server) => (await server.get("/api/connections"))[1].length;

describe("sse-fast over TLS in Chromium", () => {
  test(`HTTP/2: ${CLIENTS} clients on one page all connect and each gets its direct message`, async () => {
    await withTlsServer("auto", async (server) => {
      assert.match(server.output, /https/, "serve says it serves https");
      const page = await openClients(server);
      assert.deepEqual(await protocols(page), { page: "h2", sdk: "h2" });
      await waitFor(async () => (await connected(page)) === CLIENTS, 10000, `all ${CLIENTS} clients connected`);
      assert.equal(await serverStreams(server), CLIENTS);
      for (let i = 0; i < CLIENTS; i++) {
        const [status] = await server.post(`/api/direct/c${i}`, { type: "text", payload: `for c${i}` });
        assert.equal(status, 202);
      }
      await waitFor(() => page.evaluate((n) => Object.keys(window.got).length === n, CLIENTS), 10000, "every message");
      const got = await page.evaluate(() => window.got);
      assert.deepEqual(got, Object.fromEntries(Array.from({ length: CLIENTS }, (_, i) => [`c${i}`, `for c${i}`])));
      assert.deepEqual(page.errors, []);
      await page.close();
    });
  });

  test(`control, HTTP/1.1 only: the same page holds no more than six of its ${CLIENTS} streams`, async () => {
    await withTlsServer("1", async (server) => {
      const page = await openClients(server);
      assert.deepEqual(await protocols(page), { page: "http/1.1", sdk: "http/1.1" });
      await waitFor(async () => (await connected(page)) === 6, 10000, "six clients connected");
      await new Promise((r) => setTimeout(r, 3000)); // time the other four would have had to connect
      assert.equal(await connected(page), 6, "the seventh waits for one of six HTTP/1.1 connections");
      assert.equal(await serverStreams(server), 6);
      await page.close();
    });
  });
});
