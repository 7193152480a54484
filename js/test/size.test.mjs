// Size: the SDK, minified and gzipped, is at most half of the centrifuge npm package's browser bundle, measured with
// the same minifier (esbuild) and the same gzip level.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { transform } from "esbuild";
import { SDK } from "./helpers.mjs";

const PACKAGE = join(dirname(fileURLToPath(import.meta.url)), "../node_modules/centrifuge");
const CENTRIFUGE = join(PACKAGE, "dist/centrifuge.js");

async function measure(file) {
  const { code } = await transform(readFileSync(file, "utf8"), { minify: true, loader: "js" });
  return { minified: code.length, gzipped: gzipSync(code, { level: 9 }).length };
}

test("minified and gzipped, the SDK is at most half of centrifuge's browser bundle", async () => {
  const ours = await measure(SDK);
  const theirs = await measure(CENTRIFUGE);
  const { version } = JSON.parse(readFileSync(join(PACKAGE, "package.json"), "utf8"));
  const ratio = ours.gzipped / theirs.gzipped;
  console.log(`sse-fast.js: ${ours.minified} B minified, ${ours.gzipped} B gzipped`);
  console.log(`centrifuge ${version} dist/centrifuge.js: ${theirs.minified} B minified, ${theirs.gzipped} B gzipped`);
  console.log(`ratio ${ratio.toFixed(3)} (at most 0.5)`);
  assert.ok(ratio <= 0.5, `sse-fast is ${ratio.toFixed(3)} of centrifuge`);
});
