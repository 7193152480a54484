// The SDK's text/event-stream parser (SseParser, exported) by the WHATWG rules: every way of cutting a stream into
// chunks gives the same events, CR, LF and CRLF end lines, comments and unknown fields are ignored, `retry:` only with
// digits, an empty `id:` sets the id to "", an id with NUL is ignored, an event without data is not dispatched.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { SDK } from "./helpers.mjs";

// The source the server serves, as it is (not the npm build), imported as an ES module.
const { SseParser } = await import(`data:text/javascript;base64,${readFileSync(SDK).toString("base64")}`);

/**
 * Feed `chunks` to a new parser; returns its events and the parser. With `withRetry`, each event carries the
 * parser's `retry` once the chunk that completed it was fed (meaningful when every chunk is one character).
 */
function parse(chunks, withRetry = false) {
  const parser = new SseParser();
  const events = [];
  for (const chunk of chunks) {
    for (const e of parser.feed(chunk)) events.push(withRetry ? { ...e, retry: parser.retry } : e);
  }
  return { events, parser };
}

// One stream with every rule in it, in its three line-end styles.
const LINES = [
  ": a comment, ignored",
  "retry: 1500",
  "id: 1",
  "event: text",
  'data: {"type":"text","payload":"héllo 👋"}',
  "",
  ":another comment",
  "retry: 12x", // not only digits: ignored
  "data: first line",
  "data:second line, no space",
  "data:  two spaces keep one",
  "unknown: field ignored",
  "",
  "id",
  "event: no data, not dispatched",
  "",
  "data",
  "",
  "id: 2\u0000bad", // an id with NUL is ignored
  "retry: 2500",
  "data: after the NUL id",
  "",
  "id:",
  "data: an empty id",
  "",
  "data: not finished, never dispatched",
];
const EXPECTED = [
  { event: "text", data: '{"type":"text","payload":"héllo 👋"}', id: "1", retry: 1500 },
  { event: "message", data: "first line\nsecond line, no space\n two spaces keep one", id: "1", retry: 1500 },
  { event: "message", data: "", id: "", retry: 1500 }, // a bare `id` sets it to "", a bare `data` is empty data
  { event: "message", data: "after the NUL id", id: "", retry: 2500 },
  { event: "message", data: "an empty id", id: "", retry: 2500 },
];
const WITHOUT_RETRY = EXPECTED.map(({ retry, ...e }) => e);

for (const [name, eol] of [["LF", "\n"], ["CR", "\r"], ["CRLF", "\r\n"]]) {
  const stream = LINES.join(eol);

  test(`${name} line ends, the whole stream in one chunk`, () => {
    const { events, parser } = parse([stream]);
    assert.deepEqual(events, WITHOUT_RETRY);
    assert.equal(parser.lastEventId, "");
    assert.equal(parser.retry, 2500);
  });

  test(`${name} line ends, split at every boundary into two chunks`, () => {
    for (let at = 0; at <= stream.length; at++) {
      const { events } = parse([stream.slice(0, at), stream.slice(at)]);
      assert.deepEqual(events, WITHOUT_RETRY, `split at ${at}: ${JSON.stringify(stream.slice(at - 3, at + 3))}`);
    }
  });

  test(`${name} line ends, one character at a time`, () => {
    assert.deepEqual(parse([...stream], true).events, EXPECTED);
  });
}

test("mixed line ends, and a CR at the end of a chunk followed by an LF is one line end, not two", () => {
  const stream = "data: a\r\rdata: b\n\ndata: c\r\n\r\ndata: d\r\n\n";
  const want = ["a", "b", "c", "d"];
  for (let at = 0; at <= stream.length; at++) {
    const { events } = parse([stream.slice(0, at), stream.slice(at)]);
    assert.deepEqual(events.map((e) => e.data), want, `split at ${at}`);
  }
  // "data: x\r" + "\n" + "\n": the LF completes the CRLF, so only the second LF ends the event.
  const { events } = parse(["data: x\r", "\n", "data: y\n\n"]);
  assert.deepEqual(events.map((e) => e.data), ["x\ny"]);
});

test("reset() forgets a partial event and line (a new connection), but keeps the last id", () => {
  const parser = new SseParser();
  assert.deepEqual(parser.feed("id: 7\ndata: 1\n\ndata: half"), [{ event: "message", data: "1", id: "7" }]);
  parser.reset();
  assert.deepEqual(parser.feed("\ndata: 2\n\n"), [{ event: "message", data: "2", id: "7" }]);
});

test("a line longer than the limit throws (a broken stream), a shorter one does not", () => {
  const parser = new SseParser(16);
  assert.deepEqual(parser.feed("data: 0123456789\n\n"), [{ event: "message", data: "0123456789", id: "" }]);
  assert.throws(() => parser.feed("data: 0123456789abcdef"), { code: "line_too_long" });
});
