//! The priority queue against a naive model (every push, pop, remove and clear gives the same outcome, evictions
//! included), and a connection's frame queue against the resume rule: its low-water mark (the `id:` it writes)
//! never passes a resumable frame that has not been written, so a client resuming from it loses nothing.
#![no_main]

use std::collections::BTreeSet;
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sse_fast_core::frame::Frame;
use sse_fast_core::queue::{FrameQueue, PriorityQueue, PushOutcome};
use sse_fast_core::wire::Decoder;

#[derive(Arbitrary, Debug)]
enum Op {
    Push { level: u8, size: u8, resumable: bool },
    Pop,
    Remove(u8),
    Clear,
}

#[derive(Arbitrary, Debug)]
enum FrameOp {
    Push { level: u8, len: u8, resumable: bool },
    Drain(u16),
    SetWatermark,
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_items: u8,
    max_bytes: u16,
    ops: Vec<Op>,
    frame_ops: Vec<FrameOp>,
}

/// One queued item of the model: (level, handle, size, resumable); the item is its handle.
type Entry = (usize, u64, usize, bool);

/// The queue as its documentation states it, in the plainest code.
struct Model {
    entries: Vec<Entry>,
    max_items: usize,
    max_bytes: usize,
    last: u64,
}

impl Model {
    fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.2).sum()
    }

    fn fits(&self, entries: &[Entry], size: usize) -> bool {
        entries.len() < self.max_items && entries.iter().map(|e| e.2).sum::<usize>() + size <= self.max_bytes
    }

    fn push(&mut self, level: usize, size: usize, resumable: bool) -> PushOutcome<u64> {
        let handle = self.last + 1;
        let mut kept = self.entries.clone();
        let mut candidates: Vec<Entry> = kept.iter().copied().filter(|e| !e.3 && e.0 <= level).collect();
        candidates.sort_by_key(|e| (e.0, e.1));
        let mut evicted = Vec::new();
        for victim in candidates {
            if self.fits(&kept, size) {
                break;
            }
            kept.retain(|e| e.1 != victim.1);
            evicted.push(victim.1);
        }
        if !self.fits(&kept, size) {
            return if resumable {
                PushOutcome::Overflow(handle)
            } else {
                PushOutcome::Dropped(handle)
            };
        }
        self.last = handle;
        kept.push((level, handle, size, resumable));
        self.entries = kept;
        PushOutcome::Accepted { handle, evicted }
    }

    fn order(&self) -> Vec<Entry> {
        let mut order = self.entries.clone();
        order.sort_by_key(|e| (std::cmp::Reverse(e.0), e.1));
        order
    }

    fn pop(&mut self) -> Option<u64> {
        let first = *self.order().first()?;
        self.entries.retain(|e| e.1 != first.1);
        Some(first.1)
    }
}

fn priority_queue(input: &Input) {
    let (max_items, max_bytes) = (usize::from(input.max_items % 16), usize::from(input.max_bytes % 512));
    let mut queue = PriorityQueue::new(max_items, max_bytes);
    let mut model = Model {
        entries: Vec::new(),
        max_items,
        max_bytes,
        last: 0,
    };
    for op in input.ops.iter().take(512) {
        match *op {
            Op::Push { level, size, resumable } => {
                let (level, size) = (level % 4, usize::from(size));
                let want = model.push(usize::from(level), size, resumable);
                // The item is the handle it is expected to get, so that outcomes compare whole.
                assert_eq!(
                    queue.push(
                        model.last + u64::from(!matches!(want, PushOutcome::Accepted { .. })),
                        level,
                        size,
                        resumable
                    ),
                    want
                );
            }
            Op::Pop => assert_eq!(queue.pop(), model.pop()),
            Op::Remove(handle) => {
                let handle = u64::from(handle);
                let want = model
                    .entries
                    .iter()
                    .position(|e| e.1 == handle)
                    .map(|i| model.entries.remove(i).1);
                assert_eq!(queue.remove(handle), want);
            }
            Op::Clear => {
                let want: Vec<u64> = model.order().iter().map(|e| e.1).collect();
                model.entries.clear();
                assert_eq!(queue.clear(), want);
            }
        }
        assert_eq!((queue.len(), queue.bytes()), (model.entries.len(), model.bytes()));
        assert!(queue.len() <= max_items && queue.bytes() <= max_bytes);
        let c = queue.counters();
        assert_eq!(queue.len() as u64, c.pushed - c.popped - c.evicted - c.removed);
    }
}

/// The seqs whose frames were written (read back from the drained bytes) and the `id:`s seen.
struct Written {
    seqs: BTreeSet<u64>,
    ids: Vec<u64>,
}

fn read_back(bytes: &[u8], decoder: &mut Decoder, written: &mut Written) {
    for event in decoder.feed(bytes).expect("well-formed frames") {
        if let Some(seq) = event.data.strip_prefix('r') {
            written.seqs.insert(seq.trim_end_matches('x').parse().unwrap());
        }
        if let Some(id) = event.id.as_deref().and_then(|id| id.strip_prefix("e-")) {
            let id: u64 = id.parse().unwrap();
            if written.ids.last() != Some(&id) {
                written.ids.push(id);
            }
        }
    }
}

fn frame_queue(input: &Input) {
    let max_frames = usize::from(input.max_items % 16) + 1;
    let mut queue = FrameQueue::new(max_frames, usize::from(input.max_bytes % 2048));
    let (mut seq, mut refused) = (0u64, BTreeSet::new());
    let mut decoder = Decoder::default();
    let mut written = Written {
        seqs: BTreeSet::new(),
        ids: Vec::new(),
    };
    for op in input.frame_ops.iter().take(512) {
        match *op {
            FrameOp::Push { level, len, resumable } => {
                let pad = "x".repeat(usize::from(len));
                let frame = if resumable {
                    seq += 1;
                    Frame::new(format!("r{seq}{pad}").as_bytes(), "m", level % 4, Some(seq)).unwrap()
                } else {
                    Frame::new(format!("e{pad}").as_bytes(), "m", level % 4, None).unwrap()
                };
                match queue.push(Arc::new(frame)) {
                    PushOutcome::Overflow(_) => {
                        refused.insert(seq);
                    }
                    PushOutcome::Duplicate(_) => panic!("no watermark was set past {seq}"),
                    _ => {}
                }
            }
            FrameOp::Drain(max) => {
                let mut out = Vec::new();
                queue.drain(usize::from(max), b"e-", &mut out);
                read_back(&out, &mut decoder, &mut written);
            }
            FrameOp::SetWatermark => {
                // A replay wrote everything up to the head: later pushes continue after it.
                let mut out = Vec::new();
                while queue.drain(usize::MAX, b"e-", &mut out) > 0 {}
                read_back(&out, &mut decoder, &mut written);
                written.seqs.extend(1..=seq);
                queue.set_watermark(seq);
                refused.clear();
                continue;
            }
        }
        let mark = queue.watermark();
        assert!(
            (1..=mark).all(|s| written.seqs.contains(&s)),
            "watermark {mark} passes an unwritten frame"
        );
        assert!(
            refused.iter().all(|&lost| lost > mark),
            "watermark {mark} passes a refused frame"
        );
        assert!(
            written.ids.windows(2).all(|w| w[0] < w[1]),
            "id went backwards: {:?}",
            written.ids
        );
    }
}

fuzz_target!(|input: Input| {
    priority_queue(&input);
    frame_queue(&input);
});
