// Real servers and a real browser for the SDK's tests: `sse-fast serve` from the project's .venv on a free port,
// and Debian's Chromium driven by playwright-core.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const SDK = join(ROOT, "python/sse_fast/static/sse-fast.js");
const SSE_FAST = process.env.SSE_FAST_BIN ?? join(ROOT, ".venv/bin/sse-fast");
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
export const SECRET = "a-test-secret-of-at-least-32-bytes-long!";

/** A TCP port nobody listens on right now. */
export function freePort() {
  return new Promise((done, fail) => {
    const srv = createServer();
    srv.on("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = /** @type {import("node:net").AddressInfo} */ (srv.address());
      srv.close(() => done(port));
    });
  });
}

/** Wait until `check()` returns something truthy (or fail after `timeout` ms); returns it. */
export async function waitFor(check, timeout = 15000, what = "condition") {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what} not met within ${timeout} ms`);
    await new Promise((r) => setTimeout(r, 50)); // polling a condition, with a deadline
  }
}

/**
 * `fetch` for an https server whose self-signed certificate `ca` (PEM) is the only one trusted (node's fetch takes
 * no CA): resolves to { status, ok, json() }.
 */
function fetchTrusting(ca, url, { method = "GET", headers = {}, body } = {}) {
  return new Promise((done, fail) => {
    const req = httpsRequest(url, { method, headers, ca }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (text += d));
      res.on("end", () => {
        const status = /** @type {number} */ (res.statusCode);
        done({ status, ok: status >= 200 && status < 300, json: async () => JSON.parse(text) });
      });
    });
    req.on("error", fail);
    req.end(body);
  });
}

/**
 * A real sse-fast server (`sse-fast serve`, RSGI, memory broker unless `env` says otherwise).
 * `stop()` sends SIGTERM and waits for the exit; `start()` starts it again on the same port.
 * With `tls` ({ cert, key, ca, http }: PEM file paths, the certificate's PEM text, and `--http`): served over https
 * (`--ssl-certfile/--ssl-keyfile`), and its own requests trust only `ca`.
 */
export class Server {
  /** @param {Record<string, string>} env @param {number} port @param {any} [tls] */
  constructor(env, port, tls = null) {
    this.env = env;
    this.port = port;
    this.tls = tls;
    this.url = `${tls ? "https" : "http"}://127.0.0.1:${port}`;
    this.proc = null;
    this.output = "";
  }

  static async start(env = {}, { tls = null } = {}) {
    const server = new Server(env, await freePort(), tls);
    await server.start();
    return server;
  }

  /** `fetch`, trusting the server's own certificate under TLS. */
  fetch(url, init) {
    return this.tls ? fetchTrusting(this.tls.ca, url, init) : fetch(url, init);
  }

  async start() {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("SSE_FAST_")));
    Object.assign(env, { SSE_FAST_RETRY: "100", SSE_FAST_RETRY_SPREAD: "0", SSE_FAST_SHUTDOWN_GRACE: "1" }, this.env);
    const args = ["serve", "--port", String(this.port)];
    if (this.tls) args.push("--ssl-certfile", this.tls.cert, "--ssl-keyfile", this.tls.key, "--http", this.tls.http ?? "auto");
    const proc = spawn(SSE_FAST, args, { env, detached: true, stdio: "pipe" });
    this.proc = proc;
    proc.stdout.on("data", (d) => (this.output += d));
    proc.stderr.on("data", (d) => (this.output += d));
    this.exited = new Promise((r) => proc.on("exit", r));
    await waitFor(
      async () => {
        if (proc.exitCode !== null) throw new Error(`server exited ${proc.exitCode}:\n${this.output}`);
        try {
          return (await this.fetch(`${this.url}/healthz`)).ok;
        } catch {
          return false;
        }
      },
      30000,
      "server healthy",
    );
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    process.kill(this.proc.pid, "SIGTERM");
    const timer = setTimeout(() => this.kill(), 20000);
    await this.exited;
    clearTimeout(timer);
  }

  kill() {
    try {
      if (this.proc) process.kill(-this.proc.pid, "SIGKILL"); // the group: granian's workers too
    } catch {}
  }

  /** POST JSON to the server; returns [status, body]. */
  async post(path, body, headers = {}) {
    const res = await this.fetch(this.url + path, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
    });
    return [res.status, await res.json()];
  }

  async get(path, headers = {}) {
    const res = await this.fetch(this.url + path, { headers });
    return [res.status, await res.json()];
  }
}

/** An HS256 JWT signed with SECRET. */
export function jwt(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

/**
 * Start a server (`Server.start(env, options)`) for one test, run `fn(server)`, and always stop it; a failure
 * carries the end of the server's output.
 * @param {Record<string, string>} env @param {(server: Server) => Promise<void>} fn @param {any} [options]
 */
export async function withServer(env, fn, options) {
  const server = await Server.start(env, options);
  try {
    await fn(server);
  } catch (err) {
    if (err instanceof Error) err.message += `\n--- server output ---\n${server.output.slice(-4000)}`;
    throw err;
  } finally {
    server.kill();
  }
}

export const JWT_ENV = { SSE_FAST_AUTH: "jwt", SSE_FAST_JWT_SECRET: SECRET };

/** Headless Debian Chromium with a fresh profile, quiet on the network; `args` are added to its flags. */
export async function launchBrowser({ args = [] } = {}) {
  const profile = mkdtempSync(join(tmpdir(), "sse-fast-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      ...args,
    ],
  });
  context.cleanup = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return context;
}

/**
 * A page on `server`'s origin (its /healthz), with the SDK imported as `window.sdk`; console errors are collected
 * in `page.errors`.
 */
export async function openPage(context, server, { sdk = true } = {}) {
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (err) => page.errors.push(String(err)));
  await page.goto(`${server.url}/healthz`);
  if (sdk) await page.evaluate(async () => (window.sdk = await import("/sdk/sse-fast.js")));
  return page;
}

/** The code block (`html`, or `lang`) that follows `<!-- marker -->` in the README. */
export function readmeBlock(marker, lang = "html") {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const at = readme.indexOf(`<!-- ${marker} -->`);
  if (at < 0) throw new Error(`README has no <!-- ${marker} -->`);
  const match = new RegExp("```" + lang + "\\n([\\s\\S]*?)```").exec(readme.slice(at));
  if (!match) throw new Error(`no ${lang} block after ${marker}`);
  return match[1];
}
