// The npm package's files, built from the one source the Python package serves (python/sse_fast/static/sse-fast.js):
// dist/sse-fast.js (a copy) and dist/sse-fast.d.ts (generated from its JSDoc types by tsc). dist/ is not committed.
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = join(dirname(fileURLToPath(import.meta.url)), "..");
const source = join(here, "../python/sse_fast/static/sse-fast.js");
mkdirSync(join(here, "dist"), { recursive: true });
copyFileSync(source, join(here, "dist/sse-fast.js"));
const tsc = join(here, "node_modules/typescript/bin/tsc");
execFileSync(process.execPath, [tsc, "-p", join(here, "tsconfig.build.json")], { stdio: "inherit" });
