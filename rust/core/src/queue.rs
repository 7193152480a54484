//! The bounded four-level priority queue ([`PriorityQueue`]) and a connection's outbound queue ([`FrameQueue`]).
//!
//! The server keeps one [`FrameQueue`] per connection (tens of thousands of them), so both types are built to
//! cost nothing while empty: no allocation before the first push, a fixed-size struct, and 32 bytes per queued
//! frame.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::frame::Frame;
use crate::priority::{CRITICAL, LEVELS};
use crate::wire::write_id_line;

/// What happened to one push.
#[derive(Debug, PartialEq, Eq)]
pub enum PushOutcome<T> {
    /// Queued under `handle` (handles start at 1). `evicted` holds the ephemeral items that made room, in the
    /// order they were evicted (lowest level first, oldest first within a level).
    Accepted { handle: u64, evicted: Vec<T> },
    /// A resumable item did not fit and evicting every candidate would not have made room. Nothing changed: the
    /// caller must act (the server closes the connection as a slow consumer).
    Overflow(T),
    /// An ephemeral item did not fit and evicting every candidate would not have made room. Nothing changed.
    Dropped(T),
    /// A resumable frame at or below a [`FrameQueue`]'s replay floor: the replay that opened the stream already
    /// wrote it, so it is not queued again (a broker whose live feed and replay can overlap relies on this).
    Duplicate(T),
}

/// Event counts since a queue was created.
///
/// At any time `len == pushed - popped - evicted - removed`: `removed` counts [`PriorityQueue::remove`] and the
/// items returned by [`PriorityQueue::clear`]; `overflowed` counts the pushes that were refused (both
/// [`PushOutcome::Overflow`] and [`PushOutcome::Dropped`]) and is not part of that sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Accepted pushes.
    pub pushed: u64,
    /// Items popped (by `pop`, `pop_aged` or a drain).
    pub popped: u64,
    /// Ephemeral items evicted to make room for another push.
    pub evicted: u64,
    /// Pushes refused because the item did not fit (overflow and dropped).
    pub overflowed: u64,
    /// Items taken out by `remove` or `clear`.
    pub removed: u64,
}

/// One queued item. Four words for an `Arc`: the per-entry overhead is multiplied by every queued frame of every
/// connection.
struct Entry<T> {
    item: T,
    size: usize,
    /// `handle << 1 | resumable`: the handle and the flag share one word.
    key: u64,
    /// Push time in nanoseconds since the process-wide [`epoch`] (8 bytes where an `Instant` takes 16).
    at: u64,
}

impl<T> Entry<T> {
    fn handle(&self) -> u64 {
        self.key >> 1
    }

    fn is_resumable(&self) -> bool {
        self.key & 1 == 1
    }
}

/// The instant every push time is measured from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `t` as nanoseconds since [`epoch`] (0 for an instant before it).
fn stamp(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// A bounded four-level priority queue: the highest level first, FIFO within a level.
///
/// Bounded by item count (`max_items`) and by the sum of the sizes given on push (`max_bytes`). When a push does
/// not fit, it may evict the oldest *ephemeral* items of the lowest levels at or below its own level (lowest level
/// first, oldest first within a level) until it fits. This is all or nothing: when evicting every such candidate
/// would still not make room, nothing is evicted and the push is refused ([`PushOutcome::Overflow`] for a resumable
/// item, [`PushOutcome::Dropped`] for an ephemeral one). Resumable items are never evicted, and an item larger than
/// `max_bytes` on its own never fits.
///
/// An empty queue owns no heap memory; each level's `VecDeque` allocates on its first push.
pub struct PriorityQueue<T> {
    levels: [VecDeque<Entry<T>>; LEVELS],
    max_items: usize,
    max_bytes: usize,
    bytes: usize,
    /// The last handle given out (0: none yet).
    last_handle: u64,
    counters: Counters,
}

impl<T> PriorityQueue<T> {
    /// An empty queue with these bounds. Allocates nothing until the first push. Zero bounds are allowed (every
    /// push is then refused); the binding refuses them earlier.
    pub fn new(max_items: usize, max_bytes: usize) -> Self {
        PriorityQueue {
            levels: Default::default(),
            max_items,
            max_bytes,
            bytes: 0,
            last_handle: 0,
            counters: Counters::default(),
        }
    }

    /// Queue `item` at level `priority` (0 = LOW .. 3 = CRITICAL), counting `size` against `max_bytes`.
    ///
    /// A priority above CRITICAL is a programming error (the binding validates it with
    /// [`crate::frame::check_priority`]): it asserts in debug builds and is clamped to CRITICAL otherwise.
    pub fn push(&mut self, item: T, priority: u8, size: usize, resumable: bool) -> PushOutcome<T> {
        self.push_at(item, priority, size, resumable, stamp(Instant::now()))
    }

    /// `push` with the push time given as a [`stamp`] (reading the clock is most of the cost of a push).
    fn push_at(&mut self, item: T, priority: u8, size: usize, resumable: bool, at: u64) -> PushOutcome<T> {
        debug_assert!(priority <= CRITICAL, "priority {priority} above CRITICAL");
        let level = usize::from(priority.min(CRITICAL));
        let evicted = if self.fits(size) {
            Vec::new()
        } else if self.can_make_room(level, size) {
            self.evict(level, size)
        } else {
            self.counters.overflowed += 1;
            return if resumable {
                PushOutcome::Overflow(item)
            } else {
                PushOutcome::Dropped(item)
            };
        };
        self.last_handle += 1;
        let handle = self.last_handle;
        let key = handle << 1 | u64::from(resumable);
        self.levels[level].push_back(Entry { item, size, key, at });
        self.bytes += size;
        self.counters.pushed += 1;
        PushOutcome::Accepted { handle, evicted }
    }

    /// Whether one more item of `size` fits as the queue stands.
    fn fits(&self, size: usize) -> bool {
        self.len() < self.max_items && size <= self.max_bytes.saturating_sub(self.bytes)
    }

    /// Whether evicting every ephemeral item at or below `level` would make room for an item of `size`.
    fn can_make_room(&self, level: usize, size: usize) -> bool {
        if size > self.max_bytes {
            return false;
        }
        let (mut len, mut bytes) = (self.len(), self.bytes);
        let candidates = self.levels[..=level].iter().flatten().filter(|e| !e.is_resumable());
        for entry in candidates {
            len -= 1;
            bytes -= entry.size;
            if len < self.max_items && size <= self.max_bytes.saturating_sub(bytes) {
                return true;
            }
        }
        false
    }

    /// Evict ephemeral items at or below `level`, lowest level and oldest first, until `size` fits.
    fn evict(&mut self, level: usize, size: usize) -> Vec<T> {
        let mut evicted = Vec::new();
        for l in 0..=level {
            // One rotation through the level: evicted entries leave, the others go round in their order.
            let (mut unvisited, mut kept) = (self.levels[l].len(), 0);
            while unvisited > 0 && !self.fits(size) {
                unvisited -= 1;
                let Some(entry) = self.levels[l].pop_front() else { break };
                if entry.is_resumable() {
                    self.levels[l].push_back(entry);
                    kept += 1;
                } else {
                    self.bytes -= entry.size;
                    evicted.push(entry.item);
                }
            }
            self.levels[l].rotate_right(kept);
            if self.fits(size) {
                break;
            }
        }
        self.counters.evicted += evicted.len() as u64;
        evicted
    }

    /// Account for an entry leaving the queue and hand back its item.
    fn take(&mut self, entry: Entry<T>) -> T {
        self.bytes -= entry.size;
        entry.item
    }

    /// Pop the next item: the oldest of the highest non-empty level.
    pub fn pop(&mut self) -> Option<T> {
        let entry = self.levels.iter_mut().rev().find_map(VecDeque::pop_front)?;
        self.counters.popped += 1;
        Some(self.take(entry))
    }

    /// Pop with aging, so that low levels are never starved.
    ///
    /// Each item's effective level is `min(CRITICAL, level + waited / aging)`, where `waited = now - push time`;
    /// the level head with the highest effective level wins, ties going to the one that has waited longest. Only
    /// level heads compete: within a level the head has waited longest. A zero `aging` disables aging.
    pub fn pop_aged(&mut self, now: Instant, aging: Duration) -> Option<T> {
        if aging.is_zero() {
            return self.pop();
        }
        let (now, aging) = (stamp(now), aging.as_nanos());
        let effective = |level: usize, entry: &Entry<T>| {
            let boost = u128::from(now.saturating_sub(entry.at)) / aging;
            (level as u128 + boost).min(u128::from(CRITICAL))
        };
        let level = (0..LEVELS)
            .filter_map(|l| self.levels[l].front().map(|e| (l, e)))
            .max_by_key(|&(l, e)| (effective(l, e), Reverse(e.handle())))?
            .0;
        let entry = self.levels[level].pop_front()?;
        self.counters.popped += 1;
        Some(self.take(entry))
    }

    /// The item `pop` would return (aging aside).
    pub fn peek(&self) -> Option<&T> {
        self.levels.iter().rev().find_map(VecDeque::front).map(|e| &e.item)
    }

    /// Take out the queued item with this handle; `None` if it is no longer queued. An O(n) scan.
    pub fn remove(&mut self, handle: u64) -> Option<T> {
        let (level, index) = self
            .levels
            .iter()
            .enumerate()
            .find_map(|(l, level)| level.iter().position(|e| e.handle() == handle).map(|i| (l, i)))?;
        let entry = self.levels[level].remove(index)?;
        self.counters.removed += 1;
        Some(self.take(entry))
    }

    /// Empty the queue, returning the items in the order `pop` would have (counted as `removed`). Keeps the
    /// levels' capacity.
    pub fn clear(&mut self) -> Vec<T> {
        let items: Vec<T> = self
            .levels
            .iter_mut()
            .rev()
            .flat_map(|l| l.drain(..))
            .map(|e| e.item)
            .collect();
        self.bytes = 0;
        self.counters.removed += items.len() as u64;
        items
    }

    /// How many items are queued.
    pub fn len(&self) -> usize {
        self.levels.iter().map(VecDeque::len).sum()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.levels.iter().all(VecDeque::is_empty)
    }

    /// The sum of the queued items' sizes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Items queued per level, LOW first.
    pub fn depths(&self) -> [usize; LEVELS] {
        std::array::from_fn(|l| self.levels[l].len())
    }

    /// Event counts since creation.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The item-count bound.
    pub fn max_items(&self) -> usize {
        self.max_items
    }

    /// The byte bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The items queued at `level`, oldest first (nothing for a level above CRITICAL).
    pub fn iter_level(&self, level: usize) -> impl Iterator<Item = &T> {
        self.levels.get(level).into_iter().flatten().map(|e| &e.item)
    }
}

/// A connection's outbound queue: a [`PriorityQueue`] of shared frames plus the connection's low-water mark.
///
/// The low-water mark `W` is the resume cursor: every resumable frame at or below seq `W` has been written to the
/// connection. [`FrameQueue::drain`] writes an `id:` line carrying the new `W` before a resumable frame's body when
/// writing that frame advances `W`:
///
/// - a resumable frame that overtakes lower-priority pending resumable frames (one with a smaller seq is still
///   queued) is written without an `id:` line, and `W` does not move;
/// - otherwise `W` becomes `min(smallest pending resumable seq - 1, largest resumable seq written so far)`, which
///   may be past the frame's own seq when higher-priority frames overtook it; the `id:` line is written when that
///   is more than the old `W`.
///
/// Ephemeral frames never get an `id:`. Frames leave in strict priority order (no aging). A resumable frame refused with [`PushOutcome::Overflow`] counts as pending
/// for ever: `W` never passes it (the server closes the connection, and the client resumes from `W`).
///
/// Resumable frames must be pushed in increasing seq order (the replay log hands them out that way); the queue
/// relies on it to find the smallest pending seq at the level heads.
pub struct FrameQueue {
    /// Allocated by the first push: an idle connection holds only its bounds and marks (a hub of 10,000 idle
    /// streams saves about 280 bytes each, the levels' `VecDeque`s and counters times the map's spare room).
    queue: Option<Box<PriorityQueue<Arc<Frame>>>>,
    max_frames: usize,
    max_bytes: usize,
    watermark: u64,
    /// The largest resumable seq written so far.
    written: u64,
    /// The smallest seq refused with `Overflow` (`u64::MAX`: none).
    lost: u64,
    /// Resumable frames at or below this seq were written by the replay that opened the stream.
    floor: u64,
}

impl FrameQueue {
    /// An empty queue bounded by frame count and by the sum of the frames' lengths. Allocates nothing.
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        FrameQueue {
            queue: None,
            max_frames,
            max_bytes,
            watermark: 0,
            written: 0,
            lost: u64::MAX,
            floor: 0,
        }
    }

    /// Queue a frame at its own priority, sized by its length; resumable when it has a seq.
    pub fn push(&mut self, frame: Arc<Frame>) -> PushOutcome<Arc<Frame>> {
        let (priority, size, seq) = (frame.priority(), frame.len(), frame.seq());
        if seq.is_some_and(|seq| seq <= self.floor) {
            return PushOutcome::Duplicate(frame);
        }
        // A frame queue never ages (`drain` pops in strict priority order), so it skips the clock read: about
        // 23 ns, most of the cost of a push, times every recipient of a broadcast.
        let (max_frames, max_bytes) = (self.max_frames, self.max_bytes);
        let queue = self
            .queue
            .get_or_insert_with(|| Box::new(PriorityQueue::new(max_frames, max_bytes)));
        let outcome = queue.push_at(frame, priority, size, seq.is_some(), 0);
        if let (PushOutcome::Overflow(_), Some(seq)) = (&outcome, seq) {
            self.lost = self.lost.min(seq);
        }
        outcome
    }

    /// Pops frames in priority order into `out` until adding the next would pass `max_bytes` (always at least one
    /// frame when non-empty); returns how many frames were written.
    ///
    /// `max_bytes` counts the frames' bodies written by this call; the `id: <id_prefix><seq>` lines come on top.
    pub fn drain(&mut self, max_bytes: usize, id_prefix: &[u8], out: &mut Vec<u8>) -> usize {
        let (mut frames, mut used) = (0, 0usize);
        while let Some(next) = self.queue.as_ref().and_then(|q| q.peek()) {
            if frames > 0 && next.len() > max_bytes.saturating_sub(used) {
                break;
            }
            let Some(frame) = self.queue.as_mut().and_then(|q| q.pop()) else {
                break;
            };
            used = used.saturating_add(frame.len());
            if let Some(seq) = frame.seq() {
                self.advance(seq, id_prefix, out);
            }
            out.extend_from_slice(frame.body());
            frames += 1;
        }
        frames
    }

    /// Account for the resumable frame `seq` being written, writing an `id:` line if the watermark advances.
    fn advance(&mut self, seq: u64, id_prefix: &[u8], out: &mut Vec<u8>) {
        self.written = self.written.max(seq);
        let pending = self.min_pending_seq().min(self.lost);
        if pending < seq {
            return; // It overtook frames still queued: resuming from it would skip them.
        }
        let mark = self.written.min(pending.saturating_sub(1));
        if mark > self.watermark {
            self.watermark = mark;
            write_id_line(out, id_prefix, mark);
        }
    }

    /// The smallest seq of the resumable frames still queued (`u64::MAX`: none). Seqs rise in push order, so it is
    /// the first resumable frame of some level.
    fn min_pending_seq(&self) -> u64 {
        let Some(queue) = self.queue.as_ref() else {
            return u64::MAX;
        };
        (0..LEVELS)
            .filter_map(|l| queue.iter_level(l).find_map(|f| f.seq()))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The low-water mark: the last seq written as an `id:` (0 before any).
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Start from this low-water mark, after a replay was written outside the queue: resumable frames at or
    /// below it are refused as [`PushOutcome::Duplicate`] from now on.
    pub fn set_watermark(&mut self, seq: u64) {
        self.watermark = seq;
        self.written = seq;
        self.floor = seq;
    }

    /// How many frames are queued.
    pub fn len(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.len())
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.as_ref().is_none_or(|q| q.is_empty())
    }

    /// The sum of the queued frames' lengths.
    pub fn bytes(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.bytes())
    }

    /// The queue's event counts (a drained frame counts as popped).
    pub fn counters(&self) -> Counters {
        self.queue.as_ref().map_or_else(Counters::default, |q| q.counters())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::priority::{HIGH, LOW, NORMAL};

    fn accepted<T: std::fmt::Debug>(outcome: PushOutcome<T>) -> (u64, Vec<T>) {
        match outcome {
            PushOutcome::Accepted { handle, evicted } => (handle, evicted),
            other => panic!("expected Accepted, got {other:?}"),
        }
    }

    fn drain_all<T>(q: &mut PriorityQueue<T>) -> Vec<T> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn an_idle_frame_queue_is_small_until_its_first_push() {
        let mut q = FrameQueue::new(4, 100);
        assert_eq!(
            (q.len(), q.bytes(), q.is_empty(), q.counters()),
            (0, 0, true, Counters::default())
        );
        let mut out = Vec::new();
        assert_eq!(q.drain(100, b"e-", &mut out), 0);
        accepted(q.push(Arc::new(Frame::new(b"{}", "json", NORMAL, Some(1)).unwrap())));
        assert_eq!((q.len(), q.is_empty()), (1, false));
        assert_eq!(q.drain(100, b"e-", &mut out), 1);
        assert_eq!(out, b"id: e-1\nevent: json\ndata: {}\n\n");
    }

    #[test]
    fn fifo_within_a_level() {
        let mut q = PriorityQueue::new(10, 100);
        for i in 0..5 {
            accepted(q.push(i, NORMAL, 1, false));
        }
        assert_eq!(q.iter_level(1).copied().collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert_eq!(drain_all(&mut q), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn higher_levels_first() {
        let mut q = PriorityQueue::new(10, 100);
        for (item, level) in [
            ("low", LOW),
            ("crit", CRITICAL),
            ("normal", NORMAL),
            ("high", HIGH),
            ("low2", LOW),
        ] {
            accepted(q.push(item, level, 1, false));
        }
        assert_eq!(q.depths(), [2, 1, 1, 1]);
        assert_eq!(q.peek(), Some(&"crit"));
        assert_eq!(drain_all(&mut q), ["crit", "high", "normal", "low", "low2"]);
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
        assert_eq!(q.peek(), None);
    }

    #[test]
    fn handles_count_from_one_and_only_for_accepted_pushes() {
        let mut q = PriorityQueue::new(1, 100);
        assert_eq!(accepted(q.push('a', LOW, 1, true)).0, 1);
        assert!(matches!(q.push('b', LOW, 1, true), PushOutcome::Overflow('b')));
        q.pop();
        assert_eq!(accepted(q.push('c', LOW, 1, true)).0, 2);
    }

    #[test]
    fn an_empty_queue_owns_no_heap_memory() {
        let q = FrameQueue::new(1000, 1 << 20);
        assert!(q.queue.is_none(), "the levels are allocated by the first push");
        assert!(PriorityQueue::<Arc<Frame>>::new(1000, 1 << 20)
            .levels
            .iter()
            .all(|l| l.capacity() == 0));
        assert_eq!(std::mem::size_of::<Entry<Arc<Frame>>>(), 32);
        let size = std::mem::size_of::<FrameQueue>();
        println!("size_of::<FrameQueue>() = {size}");
        assert!(size <= 56, "FrameQueue grew to {size} bytes");
    }

    #[test]
    fn item_bound_evicts_the_oldest_ephemeral() {
        let mut q = PriorityQueue::new(2, 100);
        accepted(q.push(1, NORMAL, 1, false));
        accepted(q.push(2, NORMAL, 1, false));
        assert_eq!(accepted(q.push(3, NORMAL, 1, false)).1, [1]);
        assert_eq!(drain_all(&mut q), [2, 3]);
    }

    #[test]
    fn byte_bound_evicts_until_the_item_fits() {
        let mut q = PriorityQueue::new(100, 10);
        for i in 0..5 {
            accepted(q.push(i, LOW, 2, false));
        }
        assert_eq!(q.bytes(), 10);
        assert_eq!(accepted(q.push(9, LOW, 5, false)).1, [0, 1, 2]);
        assert_eq!(q.bytes(), 9);
        assert_eq!(drain_all(&mut q), [3, 4, 9]);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn eviction_takes_the_lowest_levels_first_and_skips_resumable_items() {
        let mut q = PriorityQueue::new(6, 1000);
        accepted(q.push("n-old", NORMAL, 1, false));
        accepted(q.push("l-resumable", LOW, 1, true));
        accepted(q.push("l-1", LOW, 1, false));
        accepted(q.push("h", HIGH, 1, false));
        accepted(q.push("l-2", LOW, 1, false));
        accepted(q.push("n-resumable", NORMAL, 1, true));
        assert_eq!(accepted(q.push("x", NORMAL, 1, false)).1, ["l-1"]);
        assert_eq!(accepted(q.push("y", NORMAL, 1, false)).1, ["l-2"]);
        assert_eq!(accepted(q.push("z", NORMAL, 1, false)).1, ["n-old"]);
        assert_eq!(q.iter_level(0).copied().collect::<Vec<_>>(), ["l-resumable"]);
        assert_eq!(
            q.iter_level(1).copied().collect::<Vec<_>>(),
            ["n-resumable", "x", "y", "z"]
        );
        assert_eq!(q.counters().evicted, 3);
    }

    #[test]
    fn eviction_never_reaches_above_the_incoming_level() {
        let mut q = PriorityQueue::new(2, 100);
        accepted(q.push("high", HIGH, 1, false));
        accepted(q.push("crit", CRITICAL, 1, false));
        assert!(matches!(q.push("low", LOW, 1, false), PushOutcome::Dropped("low")));
        assert!(matches!(
            q.push("normal", NORMAL, 1, true),
            PushOutcome::Overflow("normal")
        ));
        assert_eq!(accepted(q.push("crit2", CRITICAL, 1, false)).1, ["high"]);
    }

    #[test]
    fn eviction_is_all_or_nothing() {
        let mut q = PriorityQueue::new(10, 10);
        accepted(q.push('a', LOW, 3, false));
        accepted(q.push('b', LOW, 3, true));
        accepted(q.push('c', NORMAL, 3, false));
        // Evicting both ephemeral items frees 6 of the 7 bytes needed: evict nothing.
        assert!(matches!(q.push('d', NORMAL, 8, true), PushOutcome::Overflow('d')));
        assert!(matches!(q.push('e', NORMAL, 8, false), PushOutcome::Dropped('e')));
        assert_eq!(
            (q.len(), q.bytes(), q.counters().evicted, q.counters().overflowed),
            (3, 9, 0, 2)
        );
        assert_eq!(accepted(q.push('f', NORMAL, 7, true)).1, ['a', 'c']);
    }

    #[test]
    fn an_item_larger_than_max_bytes_never_fits() {
        let mut q = PriorityQueue::new(10, 10);
        assert!(matches!(q.push(1, CRITICAL, 11, true), PushOutcome::Overflow(1)));
        assert!(matches!(q.push(2, CRITICAL, 11, false), PushOutcome::Dropped(2)));
        accepted(q.push(3, CRITICAL, 10, false));
        assert_eq!(q.counters().overflowed, 2);
    }

    #[test]
    fn zero_bounds_refuse_everything() {
        let mut q = PriorityQueue::new(0, 10);
        assert!(matches!(q.push(1, LOW, 0, false), PushOutcome::Dropped(1)));
        let mut q = PriorityQueue::new(10, 0);
        assert!(matches!(q.push(1, LOW, 1, true), PushOutcome::Overflow(1)));
        accepted(q.push(2, LOW, 0, true));
    }

    #[test]
    fn remove_by_handle() {
        let mut q = PriorityQueue::new(10, 100);
        let (a, _) = accepted(q.push('a', LOW, 2, false));
        let (b, _) = accepted(q.push('b', HIGH, 3, true));
        let (c, _) = accepted(q.push('c', LOW, 4, false));
        assert_eq!(q.remove(a), Some('a'));
        assert_eq!(q.remove(a), None);
        assert_eq!(q.remove(999), None);
        assert_eq!(q.bytes(), 7);
        assert_eq!(q.pop(), Some('b'));
        assert_eq!(q.remove(b), None);
        assert_eq!(q.remove(c), Some('c'));
        assert!(q.is_empty());
        assert_eq!(q.counters().removed, 2);
    }

    #[test]
    fn clear_returns_items_in_pop_order() {
        let mut q = PriorityQueue::new(10, 100);
        for (item, level) in [(1, LOW), (2, HIGH), (3, LOW), (4, CRITICAL)] {
            accepted(q.push(item, level, 5, false));
        }
        assert_eq!(q.clear(), [4, 2, 1, 3]);
        assert_eq!((q.len(), q.bytes(), q.depths()), (0, 0, [0; 4]));
        assert_eq!(q.counters().removed, 4);
    }

    #[test]
    fn counters_balance_the_length() {
        let mut q = PriorityQueue::new(3, 100);
        for i in 0..10u8 {
            q.push(i, i % 4, 1, i % 3 == 0);
            if i % 4 == 0 {
                q.pop();
            }
        }
        let (h, _) = accepted(q.push(99, CRITICAL, 1, false));
        q.remove(h);
        let c = q.counters();
        assert_eq!(c.pushed - c.popped - c.evicted - c.removed, q.len() as u64);
        assert_eq!(
            c,
            Counters {
                pushed: 9,
                popped: 3,
                evicted: 3,
                overflowed: 2,
                removed: 1
            }
        );
    }

    #[test]
    fn iter_level_past_critical_is_empty() {
        let mut q = PriorityQueue::new(3, 100);
        accepted(q.push(1, CRITICAL, 1, false));
        assert_eq!(q.iter_level(4).count(), 0);
        assert_eq!(q.iter_level(3).count(), 1);
    }

    #[test]
    fn aging_lifts_waiting_items() {
        let t0 = epoch();
        let unit = Duration::from_secs(1000);
        let mut q = PriorityQueue::new(10, 100);
        accepted(q.push_at("low", LOW, 1, false, stamp(t0)));
        accepted(q.push_at("low2", LOW, 1, false, stamp(t0)));
        accepted(q.push_at("normal", NORMAL, 1, false, stamp(t0 + 2 * unit)));
        accepted(q.push_at("high", HIGH, 1, false, stamp(t0 + 2 * unit)));
        // Without aging, or before anyone has waited, priority decides.
        assert_eq!(q.peek(), Some(&"high"));
        assert_eq!(q.pop_aged(t0 + 2 * unit, Duration::from_secs(1_000_000)), Some("high"));
        accepted(q.push_at("high", HIGH, 1, false, stamp(t0 + 2 * unit)));
        // After 2.5 units, "low" is at 0 + 2 = HIGH, level with "high", and has waited longer.
        assert_eq!(q.pop_aged(t0 + 2 * unit + unit / 2, unit), Some("low"));
        // After 3 units, "low2" is at CRITICAL: above "high", which has only waited one unit (HIGH + 1, capped).
        // Both are CRITICAL then, and "low2" has waited longer.
        assert_eq!(q.pop_aged(t0 + 3 * unit, unit), Some("low2"));
        assert_eq!(q.pop_aged(t0 + 2 * unit, unit), Some("high"));
        assert_eq!(q.pop_aged(t0 + 2 * unit, unit), Some("normal"));
        assert_eq!(q.pop_aged(t0, unit), None);
        assert_eq!(q.counters().popped, 5);
    }

    #[test]
    fn aging_lets_a_long_wait_beat_a_higher_level() {
        let t0 = epoch();
        let unit = Duration::from_secs(1000);
        let mut q = PriorityQueue::new(10, 100);
        accepted(q.push_at("low", LOW, 1, false, stamp(t0)));
        accepted(q.push_at("high", HIGH, 1, false, stamp(t0 + 3 * unit)));
        // "low" has waited 3 units (CRITICAL); "high" none (HIGH).
        assert_eq!(q.pop_aged(t0 + 3 * unit, unit), Some("low"));
        // With a slower aging, "low" would have stayed at NORMAL.
        accepted(q.push_at("low", LOW, 1, false, stamp(t0)));
        assert_eq!(q.pop_aged(t0 + 3 * unit, 3 * unit), Some("high"));
    }

    #[test]
    fn aging_caps_at_critical_and_breaks_ties_by_waiting_time() {
        let t0 = epoch();
        let ms = Duration::from_millis(1);
        let mut q = PriorityQueue::new(10, 100);
        accepted(q.push_at("crit", CRITICAL, 1, false, stamp(t0 + 5 * ms)));
        accepted(q.push_at("low", LOW, 1, false, stamp(t0 + 6 * ms)));
        accepted(q.push_at("normal", NORMAL, 1, false, stamp(t0 + 7 * ms)));
        // Far in the future everything is CRITICAL: the longest-waiting wins, in push order.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(q.pop_aged(later, ms), Some("crit"));
        assert_eq!(q.pop_aged(later, ms), Some("low"));
        // A zero aging means no aging.
        accepted(q.push_at("high", HIGH, 1, false, stamp(later)));
        assert_eq!(q.pop_aged(later, Duration::ZERO), Some("high"));
    }

    fn frame(priority: u8, seq: Option<u64>) -> Arc<Frame> {
        let data = format!("{{\"seq\":{}}}", seq.map_or_else(|| "-1".to_owned(), |s| s.to_string()));
        Arc::new(Frame::new(data.as_bytes(), "m", priority, seq).unwrap())
    }

    /// Drain everything and render it as `<id>/<seq>` tokens (`-` for no id, `e` for an ephemeral frame).
    fn drained(q: &mut FrameQueue) -> Vec<String> {
        let mut out = Vec::new();
        q.drain(usize::MAX, b"E-", &mut out);
        let text = String::from_utf8(out).unwrap();
        let mut tokens = Vec::new();
        for block in text.split_terminator("\n\n") {
            let id = block
                .strip_prefix("id: E-")
                .and_then(|r| r.split('\n').next())
                .unwrap_or("-");
            let seq = block.rsplit("\"seq\":").next().unwrap().trim_end_matches('}');
            let seq = if seq == "-1" { "e" } else { seq };
            tokens.push(format!("{id}/{seq}"));
        }
        tokens
    }

    #[test]
    fn frames_the_replay_wrote_are_refused_as_duplicates() {
        let mut q = FrameQueue::new(16, 1 << 20);
        q.set_watermark(10);
        let old = Arc::new(Frame::new(b"{}", "json", 1, Some(9)).unwrap());
        assert!(matches!(q.push(old), PushOutcome::Duplicate(_)));
        let new = Arc::new(Frame::new(b"{}", "json", 1, Some(11)).unwrap());
        assert!(matches!(q.push(new), PushOutcome::Accepted { .. }));
        let ephemeral = Arc::new(Frame::new(b"{}", "json", 1, None).unwrap());
        assert!(matches!(q.push(ephemeral), PushOutcome::Accepted { .. }));
        assert_eq!(q.len(), 2);
    }

    fn push_all(q: &mut FrameQueue, frames: &[(u8, Option<u64>)]) {
        for &(priority, seq) in frames {
            accepted(q.push(frame(priority, seq)));
        }
    }

    #[test]
    fn in_order_frames_carry_their_own_seq() {
        let mut q = FrameQueue::new(10, 10_000);
        push_all(&mut q, &[(NORMAL, Some(1)), (NORMAL, None), (NORMAL, Some(2))]);
        assert_eq!(drained(&mut q), ["1/1", "-/e", "2/2"]);
        assert_eq!(q.watermark(), 2);
    }

    #[test]
    fn an_overtaking_frame_gets_no_id_and_the_overtaken_one_carries_the_new_mark() {
        let mut q = FrameQueue::new(10, 10_000);
        push_all(&mut q, &[(LOW, Some(5)), (HIGH, Some(10))]);
        assert_eq!(drained(&mut q), ["-/10", "10/5"]);
        assert_eq!(q.watermark(), 10);
    }

    #[test]
    fn the_mark_stops_below_frames_still_pending() {
        let mut q = FrameQueue::new(10, 10_000);
        push_all(
            &mut q,
            &[(LOW, Some(5)), (HIGH, Some(6)), (LOW, Some(7)), (HIGH, Some(8))],
        );
        assert_eq!(drained(&mut q), ["-/6", "-/8", "6/5", "8/7"]);
        // Seqs need not be dense: 7 was never for this connection, but every frame at or below it was written.
        push_all(&mut q, &[(LOW, Some(11)), (LOW, Some(13)), (HIGH, Some(20))]);
        assert_eq!(drained(&mut q), ["-/20", "12/11", "20/13"]);
    }

    #[test]
    fn the_mark_advances_across_drains() {
        let mut q = FrameQueue::new(10, 10_000);
        push_all(&mut q, &[(LOW, Some(1)), (CRITICAL, Some(2))]);
        let mut out = Vec::new();
        assert_eq!(q.drain(1, b"", &mut out), 1);
        assert_eq!(q.watermark(), 0);
        push_all(&mut q, &[(CRITICAL, Some(3))]);
        assert_eq!(drained(&mut q), ["-/3", "3/1"]);
    }

    #[test]
    fn set_watermark_starts_after_a_replay() {
        let mut q = FrameQueue::new(10, 10_000);
        q.set_watermark(40);
        assert!(matches!(q.push(frame(NORMAL, Some(38))), PushOutcome::Duplicate(_)));
        push_all(&mut q, &[(NORMAL, Some(41))]);
        assert_eq!(drained(&mut q), ["41/41"]);
        assert_eq!(q.watermark(), 41);
    }

    #[test]
    fn the_mark_never_passes_an_overflowed_frame() {
        let frame_len = frame(LOW, Some(1)).len();
        let mut q = FrameQueue::new(2, 10_000);
        push_all(&mut q, &[(LOW, Some(1)), (LOW, Some(2))]);
        assert!(matches!(q.push(frame(LOW, Some(3))), PushOutcome::Overflow(_)));
        assert_eq!(drained(&mut q), ["1/1", "2/2"]);
        push_all(&mut q, &[(LOW, Some(4))]);
        assert_eq!(drained(&mut q), ["-/4"]);
        assert_eq!(q.watermark(), 2);
        assert_eq!(q.bytes(), 0);
        assert!(frame_len > 0);
    }

    #[test]
    fn ephemeral_frames_are_evicted_for_resumable_ones() {
        let mut q = FrameQueue::new(2, 10_000);
        push_all(&mut q, &[(LOW, None), (NORMAL, None)]);
        let (_, evicted) = accepted(q.push(frame(NORMAL, Some(1))));
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].priority(), LOW);
        assert_eq!(drained(&mut q), ["-/e", "1/1"]);
    }

    #[test]
    fn drain_stops_before_passing_max_bytes_but_writes_at_least_one_frame() {
        let mut q = FrameQueue::new(10, 10_000);
        push_all(&mut q, &[(NORMAL, Some(1)), (NORMAL, Some(2)), (NORMAL, Some(3))]);
        let len = frame(NORMAL, Some(1)).len();
        let mut out = Vec::new();
        assert_eq!(q.drain(1, b"p", &mut out), 1);
        assert_eq!(q.drain(2 * len - 1, b"p", &mut out), 1);
        assert_eq!(q.drain(2 * len, b"p", &mut out), 1);
        assert_eq!(q.drain(2 * len, b"p", &mut out), 0);
        assert_eq!(out.len(), 3 * len + 3 * "id: p1\n".len());
        assert!(out.starts_with(b"id: p1\nevent: m\ndata: {\"seq\":1}\n\nid: p2\n"));
        assert_eq!(q.counters().popped, 3);
    }

    #[test]
    fn drain_limit_counts_only_this_call() {
        let mut q = FrameQueue::new(10, 10_000);
        push_all(&mut q, &[(NORMAL, None), (NORMAL, None)]);
        let len = frame(NORMAL, None).len();
        let mut out = vec![b'x'; 1000];
        assert_eq!(q.drain(2 * len, b"", &mut out), 2);
        assert_eq!(out.len(), 1000 + 2 * len);
    }
}
