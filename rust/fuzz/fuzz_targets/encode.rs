//! The encoders against the decoder: decode(encode(x)) == x for events, JSON frames, shared frames with their
//! `id:` line, comments and `retry:` blocks, concatenated into one stream and fed in chunks; and an encoder
//! refuses exactly the values that could inject a field or a frame.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sse_fast_core::frame::Frame;
use sse_fast_core::wire::{self, Decoder, Event};

#[derive(Arbitrary, Debug)]
enum Block {
    Event {
        data: String,
        event: Option<String>,
        id: Option<String>,
        retry: Option<u64>,
    },
    Json {
        data: Vec<u8>,
        event: Option<String>,
        id: Option<String>,
    },
    Frame {
        data: Vec<u8>,
        event: String,
        priority: u8,
        seq: u64,
    },
    Comment(String),
    Retry(u64),
}

#[derive(Arbitrary, Debug)]
struct Input {
    blocks: Vec<Block>,
    chunk: u8,
}

/// What a decoder must have read back once a stream is decoded.
#[derive(Default)]
struct Expected {
    events: Vec<Event>,
    last_id: Option<String>,
    retry: Option<u64>,
}

fn has_break(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| b == b'\r' || b == b'\n')
}

fn event_name(event: Option<&str>) -> String {
    event.filter(|e| !e.is_empty()).unwrap_or("message").to_owned()
}

/// The data as a decoder reads it back: every line break (CR, LF, CRLF) becomes LF.
fn normalized(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

fn refused(event: Option<&str>, id: Option<&str>) -> bool {
    event.is_some_and(|e| has_break(e.as_bytes())) || id.is_some_and(|i| has_break(i.as_bytes()) || i.contains('\0'))
}

/// Encode one block into `out`, recording what decoding it must give; checks the refusals.
fn encode(block: &Block, out: &mut Vec<u8>, expected: &mut Expected) {
    match block {
        Block::Event { data, event, id, retry } => {
            let (event, id) = (event.as_deref(), id.as_deref());
            let Ok(bytes) = wire::encode_event(data, event, id, *retry) else {
                assert!(refused(event, id), "encode_event refused valid fields");
                return;
            };
            assert!(!refused(event, id), "encode_event accepted an injecting field");
            assert_eq!(bytes.len(), wire::event_frame_size(data, event, id, *retry).unwrap());
            out.extend_from_slice(&bytes);
            push_event(expected, event, id, normalized(data), *retry);
        }
        Block::Json { data, event, id } => {
            let (event, id) = (event.as_deref(), id.as_deref());
            let Ok(bytes) = wire::encode_json_frame(data, event, id) else {
                assert!(
                    refused(event, id) || has_break(data),
                    "encode_json_frame refused valid parts"
                );
                return;
            };
            assert!(
                !refused(event, id) && !has_break(data),
                "encode_json_frame accepted a line break"
            );
            out.extend_from_slice(&bytes);
            push_event(expected, event, id, String::from_utf8_lossy(data).into_owned(), None);
        }
        Block::Frame {
            data,
            event,
            priority,
            seq,
        } => {
            let Ok(frame) = Frame::new(data, event, *priority, Some(*seq)) else {
                assert!(has_break(event.as_bytes()) || has_break(data) || *priority > 3);
                return;
            };
            let mut cursor = Vec::new();
            wire::write_id_line(&mut cursor, b"ep-1.x_", *seq);
            out.extend_from_slice(&cursor);
            out.extend_from_slice(frame.body());
            let id = format!("ep-1.x_{seq}");
            push_event(
                expected,
                Some(event),
                Some(&id),
                String::from_utf8_lossy(data).into_owned(),
                None,
            );
        }
        Block::Comment(text) => out.extend_from_slice(&wire::encode_comment(text)),
        Block::Retry(ms) => {
            out.extend_from_slice(&wire::encode_retry(*ms));
            expected.retry = Some(*ms);
        }
    }
}

fn push_event(expected: &mut Expected, event: Option<&str>, id: Option<&str>, data: String, retry: Option<u64>) {
    if let Some(id) = id {
        expected.last_id = Some(id.to_owned());
    }
    if retry.is_some() {
        expected.retry = retry;
    }
    expected.events.push(Event {
        event: event_name(event),
        data,
        id: expected.last_id.clone(),
        retry,
    });
}

fuzz_target!(|input: Input| {
    let (mut stream, mut expected) = (Vec::new(), Expected::default());
    for block in &input.blocks {
        encode(block, &mut stream, &mut expected);
    }
    let mut decoder = Decoder::new(1 << 24, 1 << 24).unwrap();
    let mut events = Vec::new();
    for chunk in stream.chunks(usize::from(input.chunk).max(1)) {
        events.extend(decoder.feed(chunk).expect("within the limits"));
    }
    assert_eq!(events, expected.events);
    assert_eq!(decoder.last_event_id(), expected.last_id.as_deref().unwrap_or(""));
    assert_eq!(decoder.retry(), expected.retry);
});
