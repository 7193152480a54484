//! The replay log: no panic, its bounds always hold, the retained seqs are one contiguous run ending at the head,
//! `since` returns exactly the admitted retained frames after a cursor (or the right gap), and `encode_replay`
//! writes them so that a decoder reads back each frame's cursor as its id.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sse_fast_core::hub::Route;
use sse_fast_core::replay::{encode_replay, Gap, ReplayLog};
use sse_fast_core::wire::Decoder;

const CLIENTS: [&str; 3] = ["alice", "bob", ""];
const TOPICS: [&str; 3] = ["a.b", "a.c", "x"];
const PATTERNS: [&str; 4] = ["a.*", "a.>", "x", "*"];

#[derive(Arbitrary, Debug)]
enum Op {
    Append {
        len: u8,
        route: u8,
        priority: u8,
        dt: u16,
    },
    Since {
        back: u8,
        client: u8,
        patterns: u8,
        dt: u16,
        chunk: u8,
    },
    Cursor(String),
    Expire(u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_frames: u8,
    max_bytes: u16,
    ttl: u16,
    ops: Vec<Op>,
}

fn route(which: u8) -> Route {
    match which % 5 {
        0 => Route::Broadcast { exclude: None },
        1 => Route::Broadcast {
            exclude: Some(CLIENTS[usize::from(which / 5) % 3].into()),
        },
        2 => Route::Client(CLIENTS[usize::from(which / 5) % 3].into()),
        _ => Route::topic(TOPICS[usize::from(which / 5) % 3]).unwrap(),
    }
}

fuzz_target!(|input: Input| {
    let (max_frames, max_bytes) = (usize::from(input.max_frames % 32) + 1, usize::from(input.max_bytes) + 1);
    let ttl = u64::from(input.ttl) + 1;
    let mut log = ReplayLog::new("ep", max_frames, max_bytes, ttl).unwrap();
    let (mut now, mut routes) = (0u64, vec![Route::Broadcast { exclude: None }]); // routes[seq], seq from 1
    for op in input.ops.iter().take(256) {
        match op {
            Op::Append {
                len,
                route: which,
                priority,
                dt,
            } => {
                now += u64::from(*dt);
                let data = "d".repeat(usize::from(*len));
                let frame = log
                    .append(data.as_bytes(), "m", priority % 4, route(*which), now)
                    .unwrap();
                assert_eq!(frame.seq(), Some(log.head()));
                routes.push(route(*which));
            }
            Op::Since {
                back,
                client,
                patterns,
                dt,
                chunk,
            } => {
                now += u64::from(*dt);
                let seq = log.head().saturating_sub(u64::from(*back));
                let client = CLIENTS[usize::from(*client) % 3];
                let patterns: Vec<&str> = (0..4).filter(|i| patterns >> i & 1 == 1).map(|i| PATTERNS[i]).collect();
                let result = log.since(&log.cursor(seq), client, &patterns, now);
                let first = log.head() + 1 - log.len() as u64;
                match result {
                    Ok(frames) => {
                        assert!(seq + 1 >= first || seq == log.head(), "replayed across a gap");
                        let want: Vec<u64> = (seq + 1..=log.head())
                            .filter(|&s| routes[s as usize].admits(client, &patterns))
                            .collect();
                        let got: Vec<u64> = frames.iter().map(|f| f.seq().unwrap()).collect();
                        assert_eq!(got, want);
                        let mut out = Vec::new();
                        let (mut rest, mut decoder) = (&frames[..], Decoder::default());
                        let mut ids = Vec::new();
                        while !rest.is_empty() {
                            out.clear();
                            let taken =
                                encode_replay(rest.iter().map(|f| &**f), "ep-", usize::from(*chunk), &mut out).unwrap();
                            assert!(taken >= 1);
                            rest = &rest[taken..];
                            ids.extend(decoder.feed(&out).unwrap().into_iter().map(|e| e.id.unwrap()));
                        }
                        let cursors: Vec<String> = want.iter().map(|&s| log.cursor(s)).collect();
                        assert_eq!(ids, cursors);
                    }
                    Err(Gap::Expired) => assert!(seq + 1 < first && seq < log.head()),
                    Err(Gap::UnknownCursor) => panic!("a cursor of this log at or below its head is known"),
                }
            }
            Op::Cursor(text) => {
                if let Some(seq) = log.parse(text) {
                    assert_eq!(&log.cursor(seq), text);
                } else {
                    assert!(matches!(log.since(text, "alice", &["*"], now), Err(Gap::UnknownCursor)));
                }
            }
            Op::Expire(dt) => {
                now += u64::from(*dt);
                log.expire(now);
            }
        }
        assert!(log.len() <= max_frames && log.bytes() <= max_bytes);
        let c = log.counters();
        assert_eq!(c.appended, log.head());
        assert_eq!(c.appended - c.evicted - c.expired, log.len() as u64);
    }
});
