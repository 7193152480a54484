//! The replay log behind `Last-Event-ID` resume: a ring of recent resumable frames, each with its route.
//!
//! Frames get consecutive seqs from 1; a cursor is `<epoch>-<seq>` ([`Cursor`]). The log is bounded by frame
//! count, bytes and age; only the oldest frames leave it, so the retained seqs are always one contiguous run ending
//! at or before [`ReplayLog::head`]. [`encode_replay`] writes a replay out, each frame after its `id:` line.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::cursor::{check_epoch, check_id_prefix, Cursor};
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::hub::Route;
use crate::wire::write_id_line;

/// Why a cursor cannot be resumed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// Another epoch, not a cursor at all, or a seq this log never issued.
    UnknownCursor,
    /// Some frame after the cursor is no longer retained (evicted or expired).
    Expired,
}

impl Gap {
    /// The protocol's name for the gap: `unknown_cursor` or `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Gap::UnknownCursor => "unknown_cursor",
            Gap::Expired => "expired",
        }
    }
}

/// The log's running totals.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayCounters {
    /// Frames ever appended.
    pub appended: u64,
    /// Frames dropped to respect the count or byte bound.
    pub evicted: u64,
    /// Frames dropped for age.
    pub expired: u64,
    /// Frames retained.
    pub frames: usize,
    /// Bytes retained.
    pub bytes: usize,
}

struct Entry {
    frame: Arc<Frame>,
    route: Route,
    at_ms: u64,
}

/// A bounded ring of recent resumable frames (see the module docs).
pub struct ReplayLog {
    epoch: Box<str>,
    entries: VecDeque<Entry>,
    head: u64,
    max_frames: usize,
    max_bytes: usize,
    ttl_ms: u64,
    bytes: usize,
    appended: u64,
    evicted: u64,
    expired: u64,
}

impl ReplayLog {
    /// An empty log of this epoch keeping at most `max_frames` frames, `max_bytes` bytes, for `ttl_ms` each.
    pub fn new(epoch: &str, max_frames: usize, max_bytes: usize, ttl_ms: u64) -> Result<ReplayLog> {
        if max_frames == 0 || max_bytes == 0 || ttl_ms == 0 {
            return Err(Error::Invalid(
                "max_frames, max_bytes and ttl_ms must be positive".into(),
            ));
        }
        check_epoch(epoch)?;
        Ok(ReplayLog {
            epoch: epoch.into(),
            entries: VecDeque::new(),
            head: 0,
            max_frames,
            max_bytes,
            ttl_ms,
            bytes: 0,
            appended: 0,
            evicted: 0,
            expired: 0,
        })
    }

    /// The epoch named by every cursor of this log.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The seq of the newest frame ever appended (0 before any).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The cursor of `seq`: `<epoch>-<seq>` (a [`Cursor`] written out).
    pub fn cursor(&self, seq: u64) -> String {
        Cursor::new(&self.epoch, seq)
            .expect("the epoch was checked by ReplayLog::new")
            .to_string()
    }

    /// The seq named by a cursor of this epoch ([`Cursor::parse_for`]); `None` otherwise.
    pub fn parse(&self, cursor: &str) -> Option<u64> {
        Cursor::parse_for(cursor, &self.epoch)
    }

    /// Frame `data` as the next resumable frame, remember it with its route, and return it. Frames past their
    /// TTL at `now_ms` leave first, then the oldest until the bounds hold (an oversized frame does not stay).
    pub fn append(&mut self, data: &[u8], event: &str, priority: u8, route: Route, now_ms: u64) -> Result<Arc<Frame>> {
        let frame = Arc::new(Frame::new(data, event, priority, Some(self.head + 1))?);
        self.head += 1;
        self.appended += 1;
        self.expire(now_ms);
        self.bytes += frame.len();
        let at_ms = now_ms;
        self.entries.push_back(Entry {
            frame: Arc::clone(&frame),
            route,
            at_ms,
        });
        while self.entries.len() > self.max_frames || self.bytes > self.max_bytes {
            self.pop_front();
            self.evicted += 1;
        }
        Ok(frame)
    }

    /// The retained frames after `cursor` that a subscriber with this client id and these patterns may see,
    /// oldest first, or why there is a gap. A cursor at the head replays nothing.
    pub fn since<P: AsRef<str>>(
        &mut self,
        cursor: &str,
        client_id: &str,
        patterns: &[P],
        now_ms: u64,
    ) -> std::result::Result<Vec<Arc<Frame>>, Gap> {
        let seq = self
            .parse(cursor)
            .filter(|&seq| seq <= self.head)
            .ok_or(Gap::UnknownCursor)?;
        if seq == self.head {
            return Ok(Vec::new());
        }
        self.expire(now_ms);
        let first = self.first_seq().ok_or(Gap::Expired)?;
        if seq + 1 < first {
            return Err(Gap::Expired);
        }
        let skip = (seq + 1 - first) as usize;
        let frames = self.entries.range(skip..);
        let admitted = frames.filter(|entry| entry.route.admits(client_id, patterns));
        Ok(admitted.map(|entry| Arc::clone(&entry.frame)).collect())
    }

    /// Drop the frames older than the TTL at `now_ms` (age above `ttl_ms`); returns how many were dropped.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut dropped = 0;
        while self
            .entries
            .front()
            .is_some_and(|entry| now_ms.saturating_sub(entry.at_ms) > self.ttl_ms)
        {
            self.pop_front();
            dropped += 1;
        }
        self.expired += dropped as u64;
        dropped
    }

    /// Frames retained.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no frame is retained.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes retained (the frames' sizes).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The running totals.
    pub fn counters(&self) -> ReplayCounters {
        ReplayCounters {
            appended: self.appended,
            evicted: self.evicted,
            expired: self.expired,
            frames: self.entries.len(),
            bytes: self.bytes,
        }
    }

    fn first_seq(&self) -> Option<u64> {
        self.entries.front().and_then(|entry| entry.frame.seq())
    }

    fn pop_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.bytes -= entry.frame.len();
        }
    }
}

/// Write replayed frames, oldest first, into `out`: each resumable frame after its `id: <id_prefix><seq>` line
/// (its cursor, with `id_prefix` = `<epoch>-`), an ephemeral one as it is. Takes frames until this call has written
/// at least `chunk_bytes` bytes (the last frame may pass it; at least one frame) or `frames` runs out, and
/// returns how many it took: it pulls no frame it does not write.
///
/// Refuses an `id_prefix` that could break the `id:` line ([`check_id_prefix`]).
pub fn encode_replay<F: Borrow<Frame>>(
    frames: impl IntoIterator<Item = F>,
    id_prefix: &str,
    chunk_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<usize> {
    check_id_prefix(id_prefix)?;
    let (start, mut taken) = (out.len(), 0);
    let mut frames = frames.into_iter();
    while taken == 0 || out.len() - start < chunk_bytes {
        let Some(frame) = frames.next() else { break };
        let frame = frame.borrow();
        if let Some(seq) = frame.seq() {
            write_id_line(out, id_prefix.as_bytes(), seq);
        }
        out.extend_from_slice(frame.body());
        taken += 1;
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Route = Route::Broadcast { exclude: None };

    fn log(max_frames: usize, max_bytes: usize) -> ReplayLog {
        ReplayLog::new("ep", max_frames, max_bytes, 1000).unwrap()
    }

    fn seqs(frames: &[Arc<Frame>]) -> Vec<u64> {
        frames.iter().filter_map(|f| f.seq()).collect()
    }

    #[test]
    fn cursors_round_trip() {
        let log = log(4, 1 << 20);
        assert_eq!(log.cursor(12), "ep-12");
        assert_eq!(log.parse("ep-12"), Some(12));
        assert_eq!(log.parse("ep-0"), Some(0));
        for bad in [
            "ep-",
            "ep-012",
            "ep-+1",
            "ep- 1",
            "other-1",
            "ep1",
            "ep-1x",
            "ep-99999999999999999999999",
        ] {
            assert_eq!(log.parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn replays_after_the_cursor() {
        let mut log = log(4, 1 << 20);
        assert_eq!(log.since("ep-0", "a", &[] as &[&str], 0), Ok(vec![]));
        for i in 1..=6 {
            let route = if i % 2 == 0 { Route::Client("a".into()) } else { ALL };
            assert_eq!(log.append(b"{}", "json", 1, route, i).unwrap().seq(), Some(i));
        }
        assert_eq!((log.head(), log.len(), log.counters().evicted), (6, 4, 2));
        assert_eq!(
            log.since("ep-2", "a", &[] as &[&str], 6).map(|f| seqs(&f)),
            Ok(vec![3, 4, 5, 6])
        );
        assert_eq!(log.since("ep-3", "b", &[] as &[&str], 6).map(|f| seqs(&f)), Ok(vec![5]));
        assert_eq!(log.since("ep-6", "a", &[] as &[&str], 6), Ok(vec![]));
        assert_eq!(log.since("ep-1", "a", &[] as &[&str], 6), Err(Gap::Expired));
        assert_eq!(log.since("ep-7", "a", &[] as &[&str], 6), Err(Gap::UnknownCursor));
        assert_eq!(log.since("zz-3", "a", &[] as &[&str], 6), Err(Gap::UnknownCursor));
    }

    #[test]
    fn bounds_by_bytes_and_age() {
        let mut log = log(100, 60);
        for i in 1..=3 {
            log.append(b"{}", "json", 1, ALL, i * 100).unwrap(); // 22 bytes each
        }
        assert_eq!((log.len(), log.bytes()), (2, 44));
        assert_eq!(log.expire(1150), 0);
        assert_eq!(log.expire(1250), 1);
        assert_eq!(
            log.since("ep-2", "a", &[] as &[&str], 1250).map(|f| seqs(&f)),
            Ok(vec![3])
        );
        assert_eq!(log.since("ep-2", "a", &[] as &[&str], 5000), Err(Gap::Expired));
        assert_eq!(log.since("ep-3", "a", &[] as &[&str], 5000), Ok(vec![]));
        let counters = log.counters();
        assert_eq!(
            (counters.appended, counters.evicted, counters.expired, counters.frames),
            (3, 1, 2, 0)
        );
        log.append(&[b'x'; 100], "json", 1, ALL, 5000).unwrap();
        assert_eq!((log.len(), log.bytes(), log.head()), (0, 0, 4));
    }

    #[test]
    fn refuses_bad_arguments() {
        assert!(matches!(ReplayLog::new("", 1, 1, 1), Err(Error::Invalid(_))));
        assert!(matches!(ReplayLog::new("a\nb", 1, 1, 1), Err(Error::Invalid(_))));
        assert!(matches!(ReplayLog::new("a", 0, 1, 1), Err(Error::Invalid(_))));
        let mut log = log(1, 100);
        assert!(matches!(log.append(b"a\nb", "json", 1, ALL, 0), Err(Error::Frame(_))));
        assert_eq!(log.head(), 0);
    }

    #[test]
    fn encodes_a_replay_in_chunks_with_id_lines() {
        let frames: Vec<Frame> = (1..=5)
            .map(|seq| Frame::new(b"{}", "json", 1, Some(seq)).unwrap())
            .collect();
        let mut out = b"kept".to_vec();
        // 9 bytes of id line and 22 of body per frame: the chunk ends with the frame that reaches 40 bytes.
        assert_eq!(encode_replay(&frames, "ep-", 40, &mut out), Ok(2));
        assert_eq!(
            out,
            b"keptid: ep-1\nevent: json\ndata: {}\n\nid: ep-2\nevent: json\ndata: {}\n\n"
        );
        let mut out = Vec::new();
        assert_eq!(encode_replay(&frames[2..], "ep-", 1 << 20, &mut out), Ok(3));
        assert_eq!(out.len(), 3 * 31);
        assert!(out.ends_with(b"id: ep-5\nevent: json\ndata: {}\n\n"));
    }

    #[test]
    fn encode_replay_takes_one_frame_at_least_and_pulls_no_extra() {
        let frames: Vec<Arc<Frame>> = (7..=8)
            .map(|seq| Arc::new(Frame::new(b"{}", "json", 1, Some(seq)).unwrap()))
            .collect();
        let mut iter = frames.iter().map(Arc::as_ref);
        let mut out = Vec::new();
        assert_eq!(encode_replay(&mut iter, "", 0, &mut out), Ok(1));
        assert_eq!(out, b"id: 7\nevent: json\ndata: {}\n\n");
        assert_eq!(iter.next().and_then(Frame::seq), Some(8));
        assert_eq!(encode_replay(std::iter::empty::<&Frame>(), "ep-", 0, &mut out), Ok(0));
    }

    #[test]
    fn encode_replay_writes_no_id_for_an_ephemeral_frame_and_refuses_a_bad_prefix() {
        let frames = [Frame::raw(b": hi\n\n", 0).unwrap()];
        let mut out = Vec::new();
        assert_eq!(encode_replay(&frames, "ep-", 100, &mut out), Ok(1));
        assert_eq!(out, b": hi\n\n");
        let refused = encode_replay(&frames, "ep\n-", 100, &mut out);
        assert!(matches!(refused, Err(Error::Invalid(_))));
    }
}
