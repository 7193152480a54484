//! The SSE wire format: the frame encoder and the incremental stream decoder.
//!
//! The encoder writes LF line ends and refuses any value that could end a field early (CR or LF in `event`
//! or `id`, NUL in `id`), so that no caller can inject a field or a frame. The decoder follows the WHATWG
//! HTML "event stream interpretation" rules exactly, on input cut into chunks of any size.

use std::borrow::Cow;

use crate::error::{Error, Result};

/// The UTF-8 byte order mark, stripped once at the very start of a stream.
const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// The event type of an event whose block set none.
const DEFAULT_EVENT: &str = "message";

/// Frame one event: `id:`, `event:` and `retry:` lines, one `data:` line per line of `data`, a blank line.
///
/// CR, LF and CRLF inside `data` all end a line; every line is written with LF, so the decoder reads them
/// back as LF. Refuses CR or LF in `event` or `id`, and NUL in `id` (a decoder would ignore that `id:`).
/// One allocation of the exact size.
pub fn encode_event(data: &str, event: Option<&str>, id: Option<&str>, retry: Option<u64>) -> Result<Vec<u8>> {
    let mut out = vec![0; event_frame_size(data, event, id, retry)?];
    write_event(&mut out, data, event, id, retry)?;
    Ok(out)
}

/// Check the fields of an event (as [`encode_event`] does) and return the frame's size in bytes.
///
/// With [`write_event`], lets a caller frame straight into a buffer it allocates, such as a Python `bytes`.
pub fn event_frame_size(data: &str, event: Option<&str>, id: Option<&str>, retry: Option<u64>) -> Result<usize> {
    check_event(event)?;
    check_id(id)?;
    let lines: usize = split_lines(data).map(|line| line.len() + 7).sum();
    let retry = retry.map_or(0, |ms| Decimal::new(ms).as_bytes().len() + 8);
    Ok(head_size(event, id) + retry + lines + 1)
}

/// Write an event whose fields [`event_frame_size`] accepted into `out`, which must be exactly that size
/// (else [`Error::Invalid`]).
pub fn write_event(
    out: &mut [u8],
    data: &str,
    event: Option<&str>,
    id: Option<&str>,
    retry: Option<u64>,
) -> Result<()> {
    let mut writer = SliceWriter::new(out);
    writer.head(event, id);
    if let Some(ms) = retry {
        writer.field(b"retry", Decimal::new(ms).as_bytes());
    }
    for line in split_lines(data) {
        writer.field(b"data", line.as_bytes());
    }
    writer.put(b"\n");
    writer.finish()
}

/// Frame a comment block: one comment line per line of `text` (`: line`, or a bare `:` for an empty line),
/// then a blank line. An empty `text` gives `:\n\n`. Line breaks in `text` cannot escape the comment.
pub fn encode_comment(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 8);
    for line in split_lines(text) {
        out.push(b':');
        if !line.is_empty() {
            out.push(b' ');
            out.extend_from_slice(line.as_bytes());
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// Frame a block that only sets the reconnection time: `retry: <ms>` and a blank line.
pub fn encode_retry(ms: u64) -> Vec<u8> {
    format!("retry: {ms}\n\n").into_bytes()
}

/// Frame already-serialised single-line JSON (or any single-line data) without decoding it.
///
/// One allocation of the exact size. Refuses a raw CR or LF in `data` (JSON serialisers escape them inside
/// strings and never emit them elsewhere), and the same `event`/`id` values as [`encode_event`].
pub fn encode_json_frame(data: &[u8], event: Option<&str>, id: Option<&str>) -> Result<Vec<u8>> {
    let mut out = vec![0; json_frame_size(data, event, id)?];
    write_json_frame(&mut out, data, event, id)?;
    Ok(out)
}

/// Check the parts of a JSON frame (as [`encode_json_frame`] does) and return the frame's size in bytes.
///
/// With [`write_json_frame`], lets a caller frame straight into a buffer it allocates, such as a Python `bytes`.
pub fn json_frame_size(data: &[u8], event: Option<&str>, id: Option<&str>) -> Result<usize> {
    check_event(event)?;
    check_id(id)?;
    if find_line_end(data).is_some() {
        return Err(Error::Frame(
            "JSON frame data must be a single line (no raw CR or LF)".into(),
        ));
    }
    Ok(head_size(event, id) + data.len() + 8)
}

/// Write a JSON frame whose parts [`json_frame_size`] accepted into `out`, which must be exactly that size
/// (else [`Error::Invalid`]).
pub fn write_json_frame(out: &mut [u8], data: &[u8], event: Option<&str>, id: Option<&str>) -> Result<()> {
    let mut writer = SliceWriter::new(out);
    writer.head(event, id);
    writer.put(b"data: ");
    writer.put(data);
    writer.put(b"\n\n");
    writer.finish()
}

/// Append the line `id: <prefix><seq>` (LF-terminated): the `id:` line of a resumable frame, whose value is the
/// frame's cursor when `prefix` is `<epoch>-` (see [`crate::cursor::Cursor`]). `prefix` must have passed
/// [`crate::cursor::check_id_prefix`].
pub fn write_id_line(out: &mut Vec<u8>, prefix: &[u8], seq: u64) {
    let digits = Decimal::new(seq);
    out.reserve(prefix.len() + digits.as_bytes().len() + 5);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(prefix);
    out.extend_from_slice(digits.as_bytes());
    out.push(b'\n');
}

/// The size of the `id:` and `event:` lines.
fn head_size(event: Option<&str>, id: Option<&str>) -> usize {
    id.map_or(0, |id| id.len() + 5) + event.map_or(0, |event| event.len() + 8)
}

/// Writes into a slice from the front, and checks at the end that it filled the slice exactly.
struct SliceWriter<'a> {
    out: &'a mut [u8],
    overflow: bool,
}

impl<'a> SliceWriter<'a> {
    fn new(out: &'a mut [u8]) -> Self {
        SliceWriter { out, overflow: false }
    }

    fn put(&mut self, bytes: &[u8]) {
        if bytes.len() > self.out.len() {
            self.overflow = true;
            return;
        }
        let (head, tail) = std::mem::take(&mut self.out).split_at_mut(bytes.len());
        head.copy_from_slice(bytes);
        self.out = tail;
    }

    /// `name: value\n`.
    fn field(&mut self, name: &[u8], value: &[u8]) {
        self.put(name);
        self.put(b": ");
        self.put(value);
        self.put(b"\n");
    }

    /// The `id:` and `event:` lines, in that order.
    fn head(&mut self, event: Option<&str>, id: Option<&str>) {
        if let Some(id) = id {
            self.field(b"id", id.as_bytes());
        }
        if let Some(event) = event {
            self.field(b"event", event.as_bytes());
        }
    }

    fn finish(self) -> Result<()> {
        if self.overflow || !self.out.is_empty() {
            return Err(Error::Invalid("frame buffer of the wrong size".into()));
        }
        Ok(())
    }
}

/// The decimal digits of a `u64`, formatted on the stack.
struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    fn new(mut value: u64) -> Self {
        let mut decimal = Decimal {
            digits: [b'0'; 20],
            start: 20,
        };
        loop {
            decimal.start -= 1;
            decimal.digits[decimal.start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                return decimal;
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

fn check_event(event: Option<&str>) -> Result<()> {
    match event {
        Some(event) if find_line_end(event.as_bytes()).is_some() => {
            Err(Error::Frame("event type must not contain CR or LF".into()))
        }
        _ => Ok(()),
    }
}

fn check_id(id: Option<&str>) -> Result<()> {
    let Some(id) = id else { return Ok(()) };
    if find_line_end(id.as_bytes()).is_some() {
        return Err(Error::Frame("event id must not contain CR or LF".into()));
    }
    if id.contains('\0') {
        return Err(Error::Frame("event id must not contain NUL".into()));
    }
    Ok(())
}

/// The position of the first CR or LF.
///
/// Skips 16-byte blocks without a line break first: a whole-block test without early exit compiles to SIMD
/// compares, several times faster than a byte-by-byte search on the ~100-byte lines of JSON frames.
fn find_line_end(bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 16;
    let clean = bytes
        .chunks_exact(BLOCK)
        .take_while(|block| !block.iter().fold(false, |found, &b| found | is_line_break(b)))
        .count();
    let start = clean * BLOCK;
    bytes[start..]
        .iter()
        .position(|&b| is_line_break(b))
        .map(|pos| start + pos)
}

fn is_line_break(byte: u8) -> bool {
    byte == b'\n' || byte == b'\r'
}

/// Split `text` at every CR, LF or CRLF. Always yields at least one line; a trailing break yields a last "".
fn split_lines(text: &str) -> SplitLines<'_> {
    SplitLines { rest: Some(text) }
}

struct SplitLines<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for SplitLines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        let Some(pos) = find_line_end(rest.as_bytes()) else {
            self.rest = None;
            return Some(rest);
        };
        let width = if rest[pos..].starts_with("\r\n") { 2 } else { 1 };
        self.rest = Some(&rest[pos + width..]);
        Some(&rest[..pos])
    }
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    /// The event type: the block's `event` field, `"message"` when it set none (or set it empty).
    pub event: String,
    /// The data lines of the block, joined with LF.
    pub data: String,
    /// The last event id in effect at dispatch; `None` only if the stream never set one.
    pub id: Option<String>,
    /// The valid `retry` value set within this event's own block, if any.
    pub retry: Option<u64>,
}

/// The incremental SSE stream decoder (WHATWG "event stream interpretation").
///
/// [`Decoder::feed`] takes bytes cut anywhere (inside a CRLF, a UTF-8 sequence or the BOM) and returns the
/// events they complete; a partial line stays buffered. Each complete line is decoded as UTF-8 with U+FFFD
/// replacement. Lines and event data are bounded: see [`Decoder::new`].
#[derive(Debug, Clone)]
pub struct Decoder {
    max_line: usize,
    max_event: usize,
    /// The bytes of the current line while its end has not arrived.
    line: Vec<u8>,
    /// The data buffer (raw bytes, each line followed by LF), decoded once at dispatch.
    data: Vec<u8>,
    /// The event type buffer (raw bytes).
    event_type: Vec<u8>,
    /// The last event id buffer: set by `id:`, made the last event id at the next blank line.
    id_buffer: Option<String>,
    last_event_id: Option<String>,
    retry: Option<u64>,
    /// The valid `retry` set in the current block.
    block_retry: Option<u64>,
    /// The last line ended with CR: an LF first in the next chunk belongs to it.
    pending_cr: bool,
    /// How many bytes of a BOM have been matched at the start of the stream; `None` once it is settled.
    bom_matched: Option<usize>,
}

impl Default for Decoder {
    /// A decoder with the default limits: 1 MiB lines, 4 MiB events.
    fn default() -> Decoder {
        Decoder::new(1 << 20, 4 << 20).expect("the default limits are valid")
    }
}

impl Decoder {
    /// A decoder refusing lines longer than `max_line` bytes and events whose data exceeds `max_event` bytes
    /// (counted in input bytes, LFs between data lines included). Both limits must be positive.
    pub fn new(max_line: usize, max_event: usize) -> Result<Decoder> {
        if max_line == 0 || max_event == 0 {
            return Err(Error::Invalid("max_line and max_event must be positive".into()));
        }
        Ok(Decoder {
            max_line,
            max_event,
            line: Vec::new(),
            data: Vec::new(),
            event_type: Vec::new(),
            id_buffer: None,
            last_event_id: None,
            retry: None,
            block_retry: None,
            pending_cr: false,
            bom_matched: Some(0),
        })
    }

    /// The longest line accepted, in bytes.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// The largest event data accepted, in bytes.
    pub fn max_event(&self) -> usize {
        self.max_event
    }

    /// The last event id string: the id in effect at the last blank line ("" before any).
    pub fn last_event_id(&self) -> &str {
        self.last_event_id.as_deref().unwrap_or("")
    }

    /// The reconnection time in effect: the last valid `retry` field, if any.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Forget buffered input and the BOM state, for a new connection; keep the last event id and retry.
    pub fn reset(&mut self) {
        self.line.clear();
        self.data.clear();
        self.event_type.clear();
        self.block_retry = None;
        self.pending_cr = false;
        self.bom_matched = Some(0);
        self.id_buffer.clone_from(&self.last_event_id);
    }

    /// Decode one chunk and return the events it dispatched.
    ///
    /// A line over `max_line` bytes (detected as soon as it is buffered) or event data over `max_event` bytes
    /// is an [`Error::Frame`]; the decoder is then [`reset`](Decoder::reset), and the events the chunk
    /// dispatched before the error are lost with it.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        match self.feed_into(chunk, &mut events) {
            Ok(()) => Ok(events),
            Err(err) => {
                self.reset();
                Err(err)
            }
        }
    }

    fn feed_into(&mut self, chunk: &[u8], events: &mut Vec<Event>) -> Result<()> {
        let mut rest = self.skip_bom(chunk);
        rest = self.skip_lf_after_cr(rest);
        while let Some(pos) = find_line_end(rest) {
            self.pending_cr = rest[pos] == b'\r';
            self.end_line(&rest[..pos], events)?;
            rest = self.skip_lf_after_cr(&rest[pos + 1..]);
        }
        self.buffer(rest)
    }

    /// Strip the BOM, once, at the start of the stream, even when it arrives over several chunks.
    fn skip_bom<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        let mut rest = chunk;
        while let Some(matched) = self.bom_matched {
            let Some((&byte, tail)) = rest.split_first() else { break };
            if byte == BOM[matched] {
                rest = tail;
                self.bom_matched = (matched + 1 < BOM.len()).then_some(matched + 1);
            } else {
                // Not a BOM after all: the bytes held back start the first line (none is CR or LF).
                self.line.extend_from_slice(&BOM[..matched]);
                self.bom_matched = None;
            }
        }
        rest
    }

    /// Drop the LF of a CRLF whose CR ended the previous line (possibly in the previous chunk).
    fn skip_lf_after_cr<'a>(&mut self, rest: &'a [u8]) -> &'a [u8] {
        if !self.pending_cr || rest.is_empty() {
            return rest;
        }
        self.pending_cr = false;
        rest.strip_prefix(b"\n").unwrap_or(rest)
    }

    /// Add bytes to the current line, refusing it as soon as it is longer than `max_line`.
    fn buffer(&mut self, bytes: &[u8]) -> Result<()> {
        if self.line.len() + bytes.len() > self.max_line {
            return Err(Error::Frame(format!("SSE line longer than {} bytes", self.max_line)));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// The line end arrived: process the buffered bytes plus `tail` as one line (without copying when nothing
    /// was buffered).
    fn end_line(&mut self, tail: &[u8], events: &mut Vec<Event>) -> Result<()> {
        if self.line.is_empty() {
            if tail.len() > self.max_line {
                return Err(Error::Frame(format!("SSE line longer than {} bytes", self.max_line)));
            }
            return self.process_line(tail, events);
        }
        self.buffer(tail)?;
        let mut line = std::mem::take(&mut self.line);
        let result = self.process_line(&line, events);
        line.clear();
        self.line = line; // keep the allocation for the next long line
        result
    }

    fn process_line(&mut self, line: &[u8], events: &mut Vec<Event>) -> Result<()> {
        if line.is_empty() {
            events.extend(self.dispatch());
            return Ok(());
        }
        match line.iter().position(|&b| b == b':') {
            Some(0) => Ok(()), // a comment
            Some(colon) => {
                let value = &line[colon + 1..];
                self.process_field(&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => self.process_field(line, b""),
        }
    }

    fn process_field(&mut self, name: &[u8], value: &[u8]) -> Result<()> {
        match name {
            b"data" => self.append_data(value)?,
            b"event" => {
                self.event_type.clear();
                self.event_type.extend_from_slice(value);
            }
            b"id" if !value.contains(&0) => self.id_buffer = Some(decode(value).into_owned()),
            b"retry" => self.set_retry(value),
            _ => {} // unknown fields (and an `id` with NUL) are ignored
        }
        Ok(())
    }

    fn append_data(&mut self, value: &[u8]) -> Result<()> {
        if self.data.len() + value.len() > self.max_event {
            return Err(Error::Frame(format!(
                "SSE event data larger than {} bytes",
                self.max_event
            )));
        }
        self.data.extend_from_slice(value);
        self.data.push(b'\n');
        Ok(())
    }

    /// Accept `retry` only when it is ASCII digits (a value past `u64::MAX` is ignored, as browsers do).
    fn set_retry(&mut self, value: &[u8]) {
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return;
        }
        if let Ok(ms) = decode(value).parse::<u64>() {
            self.retry = Some(ms);
            self.block_retry = Some(ms);
        }
    }

    /// The blank line: dispatch the block's event if it has data, and reset the block's buffers.
    fn dispatch(&mut self) -> Option<Event> {
        self.last_event_id.clone_from(&self.id_buffer);
        let retry = self.block_retry.take();
        let event_type = std::mem::take(&mut self.event_type);
        if self.data.is_empty() {
            return None;
        }
        self.data.pop(); // the LF after the last data line
        let event = if event_type.is_empty() {
            DEFAULT_EVENT.to_owned()
        } else {
            decode(&event_type).into_owned()
        };
        Some(Event {
            event,
            data: decode_owned(std::mem::take(&mut self.data)),
            id: self.last_event_id.clone(),
            retry,
        })
    }
}

/// Decode UTF-8, replacing invalid sequences with U+FFFD.
fn decode(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Decode UTF-8 without copying when it is valid.
fn decode_owned(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str, id: Option<&str>, retry: Option<u64>) -> Event {
        Event {
            event: event.into(),
            data: data.into(),
            id: id.map(Into::into),
            retry,
        }
    }

    fn decode_chunks(chunks: &[&[u8]]) -> Vec<Event> {
        let mut decoder = Decoder::default();
        chunks.iter().flat_map(|chunk| decoder.feed(chunk).unwrap()).collect()
    }

    fn decode_all(stream: &[u8]) -> Vec<Event> {
        decode_chunks(&[stream])
    }

    fn decode_bytewise(stream: &[u8]) -> Vec<Event> {
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        decode_chunks(&chunks)
    }

    /// Decoding whole, byte by byte, and split in two at every point must agree; returns the events.
    fn decode_every_way(stream: &[u8]) -> Vec<Event> {
        let whole = decode_all(stream);
        assert_eq!(decode_bytewise(stream), whole, "byte by byte");
        for cut in 0..=stream.len() {
            assert_eq!(decode_chunks(&[&stream[..cut], &stream[cut..]]), whole, "cut at {cut}");
        }
        whole
    }

    // --- encoder ---

    #[test]
    fn encodes_data_only() {
        assert_eq!(encode_event("hi", None, None, None).unwrap(), b"data: hi\n\n");
    }

    #[test]
    fn encodes_fields_in_order_id_event_retry_data() {
        let frame = encode_event("x", Some("note"), Some("7"), Some(3000)).unwrap();
        assert_eq!(frame, b"id: 7\nevent: note\nretry: 3000\ndata: x\n\n");
    }

    #[test]
    fn encodes_each_line_of_data_with_lf() {
        let frame = encode_event("a\nb\r\nc\rd", None, None, None).unwrap();
        assert_eq!(frame, b"data: a\ndata: b\ndata: c\ndata: d\n\n");
    }

    #[test]
    fn encodes_empty_and_trailing_lines() {
        assert_eq!(encode_event("", None, None, None).unwrap(), b"data: \n\n");
        assert_eq!(encode_event("a\n", None, None, None).unwrap(), b"data: a\ndata: \n\n");
        assert_eq!(
            encode_event("\r\n\r", None, None, None).unwrap(),
            b"data: \ndata: \ndata: \n\n"
        );
    }

    #[test]
    fn encodes_empty_id() {
        assert_eq!(encode_event("x", None, Some(""), None).unwrap(), b"id: \ndata: x\n\n");
    }

    #[test]
    fn refuses_injection_in_event_and_id() {
        for bad in ["a\nb", "a\rb", "a\r\n", "\n"] {
            assert!(
                matches!(encode_event("x", Some(bad), None, None), Err(Error::Frame(_))),
                "{bad:?}"
            );
            assert!(
                matches!(encode_event("x", None, Some(bad), None), Err(Error::Frame(_))),
                "{bad:?}"
            );
            assert!(matches!(
                encode_json_frame(b"{}", Some(bad), None),
                Err(Error::Frame(_))
            ));
            assert!(matches!(
                encode_json_frame(b"{}", None, Some(bad)),
                Err(Error::Frame(_))
            ));
        }
        assert!(matches!(
            encode_event("x", None, Some("a\0b"), None),
            Err(Error::Frame(_))
        ));
        assert!(matches!(
            encode_json_frame(b"{}", None, Some("\0")),
            Err(Error::Frame(_))
        ));
        // NUL is harmless in an event type.
        assert!(encode_event("x", Some("a\0"), None, None).is_ok());
    }

    #[test]
    fn encodes_comments() {
        assert_eq!(encode_comment(""), b":\n\n");
        assert_eq!(encode_comment("keepalive"), b": keepalive\n\n");
        assert_eq!(encode_comment("a\nb\r\nc\rd"), b": a\n: b\n: c\n: d\n\n");
        assert_eq!(encode_comment("a\n"), b": a\n:\n\n");
    }

    #[test]
    fn encodes_retry() {
        assert_eq!(encode_retry(3000), b"retry: 3000\n\n");
        assert_eq!(encode_retry(0), b"retry: 0\n\n");
    }

    #[test]
    fn encodes_json_frames_in_one_exact_allocation() {
        let frame = encode_json_frame(br#"{"a":1}"#, Some("json"), Some("e-1")).unwrap();
        assert_eq!(frame, b"id: e-1\nevent: json\ndata: {\"a\":1}\n\n");
        assert_eq!(frame.len(), frame.capacity());
        let frame = encode_json_frame(b"{}", None, None).unwrap();
        assert_eq!(frame, b"data: {}\n\n");
        assert_eq!(frame.len(), frame.capacity());
    }

    #[test]
    fn json_frame_writes_into_an_exact_buffer_only() {
        let size = json_frame_size(b"{}", Some("e"), Some("1")).unwrap();
        let mut out = vec![0; size];
        write_json_frame(&mut out, b"{}", Some("e"), Some("1")).unwrap();
        assert_eq!(out, b"id: 1\nevent: e\ndata: {}\n\n");
        for wrong in [size - 1, size + 1] {
            let mut out = vec![0; wrong];
            assert!(matches!(
                write_json_frame(&mut out, b"{}", Some("e"), Some("1")),
                Err(Error::Invalid(_))
            ));
        }
        assert!(matches!(json_frame_size(b"{\n}", None, None), Err(Error::Frame(_))));
    }

    #[test]
    fn event_writes_into_an_exact_buffer_only() {
        let size = event_frame_size("a\r\nb", Some("e"), Some("1"), Some(u64::MAX)).unwrap();
        let mut out = vec![0; size];
        write_event(&mut out, "a\r\nb", Some("e"), Some("1"), Some(u64::MAX)).unwrap();
        assert_eq!(
            out,
            b"id: 1\nevent: e\nretry: 18446744073709551615\ndata: a\ndata: b\n\n"
        );
        for wrong in [size - 1, size + 1] {
            let mut out = vec![0; wrong];
            assert!(matches!(
                write_event(&mut out, "x", None, None, None),
                Err(Error::Invalid(_))
            ));
        }
    }

    #[test]
    fn encoded_frames_are_one_exact_allocation() {
        for retry in [None, Some(0), Some(9), Some(10), Some(12_345), Some(u64::MAX)] {
            let frame = encode_event("a\nb\r", Some("t"), Some("i"), retry).unwrap();
            assert_eq!(frame.len(), frame.capacity());
            assert_eq!(decode_all(&frame), [ev("t", "a\nb\n", Some("i"), retry)]);
        }
    }

    #[test]
    fn json_frame_refuses_raw_line_breaks() {
        for bad in [&b"{\n}"[..], b"{\r}", b"{}\r\n"] {
            assert!(matches!(encode_json_frame(bad, None, None), Err(Error::Frame(_))));
        }
    }

    #[test]
    fn encoded_events_decode_back() {
        for data in [
            "",
            "x",
            "a\nb",
            "a\r\nb\rc",
            "\n",
            " lead",
            "é ∑ 🦀",
            ": not a comment",
            "data: x\n\nid: 9",
        ] {
            let frame = encode_event(data, Some("t"), Some("1"), Some(5)).unwrap();
            let expected = data.replace("\r\n", "\n").replace('\r', "\n");
            assert_eq!(decode_all(&frame), [ev("t", &expected, Some("1"), Some(5))], "{data:?}");
        }
        assert_eq!(decode_all(&encode_comment("a\n\nb")), []);
    }

    // --- decoder: lines and fields ---

    #[test]
    fn dispatches_a_message() {
        assert_eq!(
            decode_every_way(b"data: hello\n\n"),
            [ev("message", "hello", None, None)]
        );
    }

    #[test]
    fn reads_event_type_and_defaults_to_message() {
        let events = decode_every_way(b"event: note\ndata: a\n\nevent:\ndata: b\n\n");
        assert_eq!(events, [ev("note", "a", None, None), ev("message", "b", None, None)]);
    }

    #[test]
    fn accepts_cr_lf_and_crlf_line_ends() {
        for stream in [
            &b"data: a\ndata: b\n\n"[..],
            b"data: a\rdata: b\r\r",
            b"data: a\r\ndata: b\r\n\r\n",
        ] {
            assert_eq!(decode_every_way(stream), [ev("message", "a\nb", None, None)]);
        }
        assert_eq!(
            decode_every_way(b"data: a\r\ndata: b\n\r"),
            [ev("message", "a\nb", None, None)]
        );
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        let events = decode_chunks(&[b"data: a\r", b"\ndata: b\r", b"\n", b"\r", b"\n"]);
        assert_eq!(events, [ev("message", "a\nb", None, None)]);
        // An empty chunk between CR and LF changes nothing.
        let events = decode_chunks(&[b"data: a\r", b"", b"\n\n"]);
        assert_eq!(events, [ev("message", "a", None, None)]);
    }

    #[test]
    fn cr_cr_is_two_line_ends() {
        assert_eq!(decode_chunks(&[b"data: a\r", b"\r"]), [ev("message", "a", None, None)]);
    }

    #[test]
    fn utf8_split_across_chunks() {
        let stream = "data: é∑🦀\n\n".as_bytes();
        assert_eq!(decode_every_way(stream), [ev("message", "é∑🦀", None, None)]);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        let events = decode_every_way(b"event: \xff\ndata: a\xe2\x82\ndata: \xc3\n\n");
        assert_eq!(events, [ev("\u{fffd}", "a\u{fffd}\n\u{fffd}", None, None)]);
    }

    #[test]
    fn ignores_comments() {
        assert_eq!(decode_every_way(b": hi\n:\n\n"), []);
        let events = decode_every_way(b"data: a\n: comment\ndata: b\n\n");
        assert_eq!(events, [ev("message", "a\nb", None, None)]);
    }

    #[test]
    fn field_without_colon_has_empty_value() {
        assert_eq!(decode_every_way(b"data\n\n"), [ev("message", "", None, None)]);
        assert_eq!(decode_every_way(b"data\ndata\n\n"), [ev("message", "\n", None, None)]);
        assert_eq!(
            decode_every_way(b"event\ndata: x\n\n"),
            [ev("message", "x", None, None)]
        );
    }

    #[test]
    fn strips_exactly_one_leading_space() {
        assert_eq!(decode_all(b"data:a\n\n"), [ev("message", "a", None, None)]);
        assert_eq!(decode_all(b"data:  a \n\n"), [ev("message", " a ", None, None)]);
        assert_eq!(decode_all(b"data:\ta\n\n"), [ev("message", "\ta", None, None)]);
        assert_eq!(decode_all(b"data: a:b\n\n"), [ev("message", "a:b", None, None)]);
    }

    #[test]
    fn strips_one_trailing_lf_only() {
        assert_eq!(decode_all(b"data: a\ndata:\n\n"), [ev("message", "a\n", None, None)]);
        assert_eq!(decode_all(b"data:\ndata:\n\n"), [ev("message", "\n", None, None)]);
    }

    #[test]
    fn ignores_unknown_and_miscased_fields() {
        assert_eq!(decode_all(b"Data: x\nfoo: y\ndata : z\n\n"), []);
        assert_eq!(decode_all(b"foo: y\ndata: x\n\n"), [ev("message", "x", None, None)]);
    }

    #[test]
    fn blank_line_without_data_resets_event_type() {
        let events = decode_all(b"event: lost\n\ndata: x\n\n");
        assert_eq!(events, [ev("message", "x", None, None)]);
    }

    #[test]
    fn partial_block_and_partial_line_stay_buffered() {
        let mut decoder = Decoder::default();
        assert_eq!(decoder.feed(b"data: a\nda").unwrap(), []);
        assert_eq!(decoder.feed(b"ta: b\n").unwrap(), []);
        assert_eq!(decoder.feed(b"\n").unwrap(), [ev("message", "a\nb", None, None)]);
    }

    // --- decoder: BOM ---

    #[test]
    fn strips_bom_once_at_the_start() {
        assert_eq!(
            decode_every_way(b"\xef\xbb\xbfdata: a\n\n"),
            [ev("message", "a", None, None)]
        );
        // A second BOM is part of the field name, which is then unknown.
        assert_eq!(decode_every_way(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n"), []);
        // A BOM later in the stream is ordinary text.
        let events = decode_all(b"data: a\n\n\xef\xbb\xbfdata: b\n\ndata: \xef\xbb\xbf\n\n");
        assert_eq!(
            events,
            [ev("message", "a", None, None), ev("message", "\u{feff}", None, None)]
        );
    }

    #[test]
    fn strips_a_bom_split_across_chunks() {
        let events = decode_chunks(&[b"\xef", b"\xbb", b"\xbf", b"data: a\n\n"]);
        assert_eq!(events, [ev("message", "a", None, None)]);
    }

    #[test]
    fn keeps_bytes_that_only_start_like_a_bom() {
        assert_eq!(decode_every_way(b"\xef\xbbdata: a\n\n"), []);
        let events = decode_every_way(b"\xef\xbb\n\xefdata: a\n\ndata: b\n\n");
        assert_eq!(events, [ev("message", "b", None, None)]);
        assert_eq!(
            decode_chunks(&[b"\xef", b"\n", b"data: c\n\n"]),
            [ev("message", "c", None, None)]
        );
    }

    // --- decoder: id and retry ---

    #[test]
    fn id_persists_across_events() {
        let events = decode_every_way(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\n");
        assert_eq!(
            events,
            [
                ev("message", "a", Some("1"), None),
                ev("message", "b", Some("1"), None),
                ev("message", "c", Some("2"), None)
            ]
        );
    }

    #[test]
    fn empty_id_sets_the_empty_string() {
        let events = decode_all(b"id: 1\ndata: a\n\nid\ndata: b\n\n");
        assert_eq!(
            events,
            [ev("message", "a", Some("1"), None), ev("message", "b", Some(""), None)]
        );
    }

    #[test]
    fn id_with_nul_is_ignored() {
        let mut decoder = Decoder::default();
        let events = decoder.feed(b"id: 1\ndata: a\n\nid: 2\0\ndata: b\n\n").unwrap();
        assert_eq!(
            events,
            [ev("message", "a", Some("1"), None), ev("message", "b", Some("1"), None)]
        );
        assert_eq!(decoder.last_event_id(), "1");
    }

    #[test]
    fn id_takes_effect_at_the_blank_line_even_without_data() {
        let mut decoder = Decoder::default();
        assert_eq!(decoder.last_event_id(), "");
        decoder.feed(b"id: 7\n").unwrap();
        assert_eq!(decoder.last_event_id(), "");
        assert_eq!(decoder.feed(b"\n").unwrap(), []);
        assert_eq!(decoder.last_event_id(), "7");
        assert_eq!(
            decoder.feed(b"data: x\n\n").unwrap(),
            [ev("message", "x", Some("7"), None)]
        );
    }

    #[test]
    fn retry_accepts_ascii_digits_only() {
        for (line, expected) in [
            (&b"retry: 1500"[..], Some(1500)),
            (b"retry:0", Some(0)),
            (b"retry: 007", Some(7)),
            (b"retry", None),
            (b"retry: ", None),
            (b"retry:  10", None),
            (b"retry: 10 ", None),
            (b"retry: -10", None),
            (b"retry: +10", None),
            (b"retry: 1e3", None),
            (b"retry: \xd9\xa1", None), // ARABIC-INDIC DIGIT ONE is not an ASCII digit
            (b"retry: 99999999999999999999999", None),
        ] {
            let mut decoder = Decoder::default();
            let events = decoder.feed(&[line, b"\ndata: x\n\n"].concat()).unwrap();
            assert_eq!(events[0].retry, expected, "{line:?}");
            assert_eq!(decoder.retry(), expected, "{line:?}");
        }
    }

    #[test]
    fn event_retry_is_its_own_blocks_and_decoder_retry_persists() {
        let mut decoder = Decoder::default();
        let events = decoder
            .feed(b"retry: 10\ndata: a\n\ndata: b\n\nretry: 20\n\ndata: c\n\n")
            .unwrap();
        let expected = [
            ev("message", "a", None, Some(10)),
            ev("message", "b", None, None),
            ev("message", "c", None, None),
        ];
        assert_eq!(events, expected);
        assert_eq!(decoder.retry(), Some(20));
    }

    #[test]
    fn retry_takes_effect_immediately() {
        let mut decoder = Decoder::default();
        decoder.feed(b"retry: 42\n").unwrap();
        assert_eq!(decoder.retry(), Some(42));
    }

    // --- decoder: limits and reset ---

    #[test]
    fn refuses_zero_limits() {
        assert!(matches!(Decoder::new(0, 10), Err(Error::Invalid(_))));
        assert!(matches!(Decoder::new(10, 0), Err(Error::Invalid(_))));
    }

    #[test]
    fn line_at_the_limit_passes_and_longer_fails_before_its_end() {
        let mut decoder = Decoder::new(8, 100).unwrap();
        assert_eq!(
            decoder.feed(b"data: ab\n\n").unwrap(),
            [ev("message", "ab", None, None)]
        );
        assert_eq!(decoder.feed(b"data: ab").unwrap(), []);
        // The line end has not arrived, yet the ninth byte is refused.
        assert!(matches!(decoder.feed(b"c"), Err(Error::Frame(_))));
        let mut decoder = Decoder::new(8, 100).unwrap();
        assert!(matches!(decoder.feed(b"data: abc\n\n"), Err(Error::Frame(_))));
        let mut decoder = Decoder::new(8, 100).unwrap();
        assert!(matches!(decoder.feed(b": a long comment"), Err(Error::Frame(_))));
    }

    #[test]
    fn held_back_bom_bytes_count_against_the_line_limit() {
        let mut decoder = Decoder::new(1, 100).unwrap();
        assert!(matches!(decoder.feed(b"\xef\xbb\n"), Err(Error::Frame(_))));
    }

    #[test]
    fn event_data_over_the_limit_fails() {
        let mut decoder = Decoder::new(100, 5).unwrap();
        assert_eq!(
            decoder.feed(b"data: 12345\n\n").unwrap(),
            [ev("message", "12345", None, None)]
        );
        assert_eq!(
            decoder.feed(b"data: 12\ndata: 3\n\n").unwrap(),
            [ev("message", "12\n3", None, None)]
        );
        assert!(matches!(decoder.feed(b"data: 12\ndata: 345\n"), Err(Error::Frame(_))));
        assert!(matches!(decoder.feed(b"data: 123456\n"), Err(Error::Frame(_))));
    }

    #[test]
    fn decoder_works_after_an_error_and_keeps_id_and_retry() {
        let mut decoder = Decoder::new(16, 16).unwrap();
        decoder
            .feed(b"id: 1\nretry: 5\ndata: a\n\nid: 2\nevent: t\ndata: b\n")
            .unwrap();
        assert!(matches!(decoder.feed(b"data: 0123456789abcdef"), Err(Error::Frame(_))));
        assert_eq!(decoder.last_event_id(), "1");
        assert_eq!(decoder.retry(), Some(5));
        // The partial block (its data, type and id) is gone.
        assert_eq!(
            decoder.feed(b"data: c\n\n").unwrap(),
            [ev("message", "c", Some("1"), None)]
        );
    }

    #[test]
    fn reset_forgets_input_and_keeps_id_and_retry() {
        let mut decoder = Decoder::default();
        decoder
            .feed(b"id: 1\nretry: 9\ndata: a\n\nid: 2\nretry: 10\ndata: lost\ndata: par")
            .unwrap();
        decoder.reset();
        assert_eq!(decoder.last_event_id(), "1");
        assert_eq!(decoder.retry(), Some(10));
        assert_eq!(
            decoder.feed(b"\xef\xbb\xbfdata: b\n\n").unwrap(),
            [ev("message", "b", Some("1"), None)]
        );
    }

    #[test]
    fn reset_forgets_a_pending_cr() {
        let mut decoder = Decoder::default();
        decoder.feed(b"data: a\r").unwrap();
        decoder.reset();
        // The LF is now a blank line of its own, with nothing to dispatch.
        assert_eq!(
            decoder.feed(b"\ndata: b\n\n").unwrap(),
            [ev("message", "b", None, None)]
        );
    }

    #[test]
    fn mixed_stream_decodes_the_same_in_any_chunking() {
        let stream = b"\xef\xbb\xbf: hi\r\nretry: 100\rid: a\nevent: e\ndata: x\xc3\xa9\r\ndata\r\n\r\
                       id\0x\ndata: y\n\nid:\ndata: z\r\r";
        let events = decode_every_way(stream);
        assert_eq!(
            events,
            [
                ev("e", "x\u{e9}\n", Some("a"), Some(100)),
                ev("message", "y", Some("a"), None),
                ev("message", "z", Some(""), None)
            ]
        );
    }

    #[test]
    fn id_line_digits() {
        for (seq, text) in [(0, "id: 0\n"), (7, "id: 7\n"), (1_000, "id: 1000\n")] {
            let mut out = Vec::new();
            write_id_line(&mut out, b"", seq);
            assert_eq!(out, text.as_bytes());
        }
        let mut out = Vec::new();
        write_id_line(&mut out, b"ep-", u64::MAX);
        assert_eq!(out, format!("id: ep-{}\n", u64::MAX).as_bytes());
    }
}
