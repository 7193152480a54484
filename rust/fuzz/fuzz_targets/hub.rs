//! The fan-out hub against the routing rule: every publish reaches exactly the connections that `Route::admits`
//! (once each, however many of their patterns match), a connection whose patterns were replaced (`set_topics`) is
//! routed by its new ones, a drain hands each connection exactly the frames routed to it, the counters add up, and
//! removing every connection leaves nothing behind (the topic index pruned).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sse_fast_core::frame::Frame;
use sse_fast_core::hub::{Hub, Route};
use sse_fast_core::wire::Decoder;

const CLIENTS: [&str; 3] = ["alice", "bob", "carol"];
const PATTERNS: [&str; 6] = ["a.*", "a.>", "a.b", "*", "*.b", "x.y.z"];
const TOPICS: [&str; 4] = ["a.b", "a.c", "x.y.z", "a.b.c"];

#[derive(Arbitrary, Debug)]
enum Op {
    Add {
        client: u8,
        patterns: u8,
    },
    Remove(u8),
    SetTopics {
        conn: u8,
        patterns: u8,
    },
    Publish {
        route: u8,
        which: u8,
        priority: u8,
        resumable: bool,
    },
    Push {
        conn: u8,
    },
    Drain {
        conn: u8,
        max: u16,
    },
    Keepalive,
}

/// One live connection of the model: its client, its patterns, and the publish numbers queued for it.
struct Conn {
    client: &'static str,
    patterns: Vec<&'static str>,
    queued: BTreeSet<u64>,
}

fn route(kind: u8, which: u8) -> Route {
    let client = CLIENTS[usize::from(which) % CLIENTS.len()];
    match kind % 4 {
        0 => Route::Broadcast { exclude: None },
        1 => Route::Broadcast {
            exclude: Some(client.into()),
        },
        2 => Route::Client(client.into()),
        _ => Route::topic(TOPICS[usize::from(which) % TOPICS.len()]).unwrap(),
    }
}

/// Drain a connection and return the publish numbers its frames carried (keepalive comments carry none).
fn drain(hub: &mut Hub, id: u64, max: usize) -> BTreeSet<u64> {
    let mut out = Vec::new();
    while hub.drain(id, max, &mut out) > 0 {}
    let events = Decoder::default().feed(&out).expect("well-formed frames");
    events.iter().map(|e| e.data.parse().unwrap()).collect()
}

fuzz_target!(|ops: Vec<Op>| {
    let mut hub = Hub::new(1 << 16, 1 << 30, "ep-").unwrap();
    let mut model: BTreeMap<u64, Conn> = BTreeMap::new();
    let (mut number, mut seq) = (0u64, 0u64);
    for op in ops.iter().take(256) {
        match *op {
            Op::Add { client, patterns } => {
                let client = CLIENTS[usize::from(client) % CLIENTS.len()];
                let patterns: Vec<&str> = (0..6).filter(|i| patterns >> i & 1 == 1).map(|i| PATTERNS[i]).collect();
                let id = hub.add(client, &patterns).unwrap();
                assert!(model.keys().all(|&other| other < id), "connection ids are reused");
                model.insert(
                    id,
                    Conn {
                        client,
                        patterns,
                        queued: BTreeSet::new(),
                    },
                );
            }
            Op::Remove(pick) => {
                let Some(&id) = model.keys().nth(usize::from(pick) % model.len().max(1)) else {
                    continue;
                };
                assert!(hub.remove(id));
                assert!(!hub.remove(id));
                model.remove(&id);
            }
            Op::SetTopics { conn, patterns } => {
                let Some(&id) = model.keys().nth(usize::from(conn) % model.len().max(1)) else {
                    assert_eq!(hub.set_topics(u64::MAX, &["a.b"]), Ok(false));
                    continue;
                };
                let patterns: Vec<&str> = (0..6).filter(|i| patterns >> i & 1 == 1).map(|i| PATTERNS[i]).collect();
                assert_eq!(hub.set_topics(id, &patterns), Ok(true));
                assert_eq!(hub.topics_of(id).unwrap().len(), patterns.len());
                model.get_mut(&id).unwrap().patterns = patterns;
            }
            Op::Publish {
                route: kind,
                which,
                priority,
                resumable,
            } => {
                number += 1;
                let route = route(kind, which);
                let seq = resumable.then(|| {
                    seq += 1;
                    seq
                });
                let frame = Arc::new(Frame::new(number.to_string().as_bytes(), "m", priority % 4, seq).unwrap());
                let delivery = hub.publish(&frame, &route);
                let admitted: Vec<u64> = model
                    .iter()
                    .filter(|(_, c)| route.admits(c.client, &c.patterns))
                    .map(|(&id, _)| id)
                    .collect();
                assert_eq!(delivery.delivered, admitted.len(), "{route:?}");
                assert!(delivery.overflowed.is_empty() && delivery.dropped == 0);
                assert!(delivery.woken.iter().all(|id| admitted.contains(id)));
                for id in admitted {
                    model.get_mut(&id).unwrap().queued.insert(number);
                }
            }
            Op::Push { conn } => {
                number += 1;
                let frame = Arc::new(Frame::new(number.to_string().as_bytes(), "m", 1, None).unwrap());
                let id = model
                    .keys()
                    .nth(usize::from(conn) % model.len().max(1))
                    .copied()
                    .unwrap_or(u64::MAX);
                let delivery = hub.push(id, &frame);
                assert_eq!(delivery.delivered, usize::from(model.contains_key(&id)));
                if let Some(conn) = model.get_mut(&id) {
                    conn.queued.insert(number);
                }
            }
            Op::Drain { conn, max } => {
                let Some(&id) = model.keys().nth(usize::from(conn) % model.len().max(1)) else {
                    continue;
                };
                let got = drain(&mut hub, id, usize::from(max));
                assert_eq!(got, std::mem::take(&mut model.get_mut(&id).unwrap().queued));
                assert_eq!(hub.queue_stats(id).map(|s| s.0), Some(0));
            }
            Op::Keepalive => {
                hub.push_all(b": keepalive\n\n");
            }
        }
        let counters = hub.counters();
        assert_eq!(counters.connections, model.len());
        let clients: BTreeSet<&str> = model.values().map(|c| c.client).collect();
        assert_eq!(counters.clients, clients.len());
        for client in CLIENTS {
            let want: Vec<u64> = model
                .iter()
                .filter(|(_, c)| c.client == client)
                .map(|(&id, _)| id)
                .collect();
            assert_eq!(hub.connections_of(client), &want[..]);
        }
    }
    for id in model.keys().copied().collect::<Vec<_>>() {
        let got = drain(&mut hub, id, usize::MAX);
        assert_eq!(got, model.remove(&id).unwrap().queued);
        assert!(hub.remove(id));
    }
    let counters = hub.counters();
    assert_eq!(
        (
            counters.connections,
            counters.clients,
            counters.queued_frames,
            counters.queued_bytes
        ),
        (0, 0, 0, 0)
    );
    assert!(hub.topics_pruned(), "an empty hub keeps topic index nodes");
});
