//! Cursor parsing (what a client sends as `Last-Event-ID`) and the Redis stream id mapping: no panic, parsing is
//! the exact inverse of writing (one position, one text), and seq <-> stream id round-trips.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sse_fast_core::cursor::{check_epoch, check_id_prefix, seq_of_stream_id, stream_id_of, Cursor, MAX_LEN};

#[derive(Arbitrary, Debug)]
struct Input {
    text: String,
    epoch: String,
    seq: u64,
    stream_id: Vec<u8>,
}

fuzz_target!(|input: Input| {
    if let Some(cursor) = Cursor::parse(&input.text) {
        assert!(input.text.len() <= MAX_LEN);
        assert_eq!(
            cursor.to_string(),
            input.text,
            "a parsed cursor writes back to another text"
        );
        assert_eq!(Cursor::new(cursor.epoch(), cursor.seq()), Ok(cursor));
        assert_eq!(Cursor::parse_for(&input.text, cursor.epoch()), Some(cursor.seq()));
    }
    match Cursor::new(&input.epoch, input.seq) {
        Ok(cursor) => {
            let text = cursor.to_string();
            assert_eq!(Cursor::parse(&text), Some(cursor));
            assert_eq!(Cursor::parse_for(&text, &input.epoch), Some(input.seq));
            assert!(check_id_prefix(&format!("{}-", input.epoch)).is_ok());
        }
        Err(_) => assert!(check_epoch(&input.epoch).is_err()),
    }
    if let Some(seq) = seq_of_stream_id(&input.stream_id) {
        assert_eq!(
            stream_id_of(seq).as_bytes(),
            &input.stream_id[..],
            "stream id not canonical"
        );
    }
    assert_eq!(seq_of_stream_id(stream_id_of(input.seq).as_bytes()), Some(input.seq));
});
