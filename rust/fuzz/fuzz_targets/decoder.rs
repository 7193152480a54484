//! The stream decoder on arbitrary bytes: no panic, bounded buffers, and the same events whatever the chunking.
//!
//! The first byte chooses the limits and how the rest (the stream) is cut into chunks; the stream is then decoded
//! whole, and again in chunks (cut inside CRLFs, UTF-8 sequences and the BOM). Without a limit error both must give
//! the same events, last event id and retry. With small limits, an error is allowed but every event must respect
//! them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_fast_core::wire::{Decoder, Event};

/// Everything the decoder reports: the events (or the error's position), the last event id and the retry.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Event>,
    failed: bool,
    last_event_id: String,
    retry: Option<u64>,
}

fn decode(stream: &[u8], cuts: &mut dyn Iterator<Item = usize>, max_line: usize, max_event: usize) -> Outcome {
    let mut decoder = Decoder::new(max_line, max_event).expect("positive limits");
    let (mut events, mut failed, mut rest) = (Vec::new(), false, stream);
    while !rest.is_empty() {
        let cut = cuts.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(cut);
        match decoder.feed(chunk) {
            Ok(more) => events.extend(more),
            Err(_) => failed = true,
        }
        rest = tail;
    }
    for event in &events {
        assert!(
            event.data.len() <= max_event.saturating_mul(3),
            "event data past max_event: {event:?}"
        );
    }
    Outcome {
        events,
        failed,
        last_event_id: decoder.last_event_id().to_owned(),
        retry: decoder.retry(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, stream)) = data.split_first() else {
        return;
    };
    let (max_line, max_event) = if config & 0x80 == 0 {
        (1 << 20, 4 << 20)
    } else {
        (
            1 + usize::from(config & 0x0f) * 3,
            1 + usize::from(config >> 4 & 0x07) * 5,
        )
    };
    let whole = decode(stream, &mut std::iter::empty(), max_line, max_event);
    let stride = usize::from(config & 0x07) + 1;
    let mut cuts = (0..).map(|i: usize| 1 + (i * 7 + stride) % (stride + 2));
    let chunked = decode(stream, &mut cuts, max_line, max_event);
    if !whole.failed && !chunked.failed {
        assert_eq!(whole, chunked, "chunking changed the decoding");
    }
    let bytewise = decode(stream, &mut std::iter::repeat(1), max_line, max_event);
    if !whole.failed && !bytewise.failed {
        assert_eq!(whole, bytewise, "byte-by-byte feeding changed the decoding");
    }
});
