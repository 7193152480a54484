//! [`Frame`]: one message framed once and shared (behind an `Arc`) by every queue and log that holds it.

use crate::error::{Error, Result};
use crate::priority::CRITICAL;

/// One framed message: `event: <event>\ndata: <json>\n\n`, or raw bytes such as a keepalive comment.
///
/// The `id:` line is not part of the frame: a connection's queue writes it when the frame advances that
/// connection's low-water mark (see [`crate::queue::FrameQueue`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    body: Box<[u8]>,
    event: Box<str>,
    seq: Option<u64>,
    priority: u8,
}

impl Frame {
    /// Frame single-line JSON (or any single-line data) under an event type.
    ///
    /// Refuses a CR or LF in `event` or `data`: they would end the field early and let the rest be read as
    /// another field or frame.
    pub fn new(data: &[u8], event: &str, priority: u8, seq: Option<u64>) -> Result<Frame> {
        check_priority(priority)?;
        if has_line_break(event.as_bytes()) {
            return Err(Error::Frame("event type must not contain CR or LF".into()));
        }
        if has_line_break(data) {
            return Err(Error::Frame(
                "frame data must be a single line (no raw CR or LF)".into(),
            ));
        }
        let mut body = Vec::with_capacity(data.len() + event.len() + 16);
        body.extend_from_slice(b"event: ");
        body.extend_from_slice(event.as_bytes());
        body.extend_from_slice(b"\ndata: ");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\n\n");
        Ok(Frame {
            body: body.into_boxed_slice(),
            event: event.into(),
            seq,
            priority,
        })
    }

    /// Already-framed bytes (a comment, a `retry:` block): ephemeral, never given an `id:`.
    pub fn raw(bytes: &[u8], priority: u8) -> Result<Frame> {
        check_priority(priority)?;
        Ok(Frame {
            body: bytes.into(),
            event: "".into(),
            seq: None,
            priority,
        })
    }

    /// The frame's bytes, without an `id:` line.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The event type (empty for a raw frame).
    pub fn event(&self) -> &str {
        &self.event
    }

    /// The replay-log position of a resumable frame; `None` for an ephemeral one.
    pub fn seq(&self) -> Option<u64> {
        self.seq
    }

    /// The priority level, `LOW` (0) to `CRITICAL` (3).
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Whether the frame is kept for resume (it has a seq).
    pub fn is_resumable(&self) -> bool {
        self.seq.is_some()
    }

    /// The frame's size in bytes, as counted against queue limits.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether the frame has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }
}

/// Refuse a priority above `CRITICAL`.
pub fn check_priority(priority: u8) -> Result<()> {
    if priority > CRITICAL {
        return Err(Error::Invalid(format!("priority must be 0..=3, got {priority}")));
    }
    Ok(())
}

fn has_line_break(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| b == b'\n' || b == b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_event_and_data() {
        let frame = Frame::new(br#"{"a":1}"#, "json", 1, Some(7)).unwrap();
        assert_eq!(frame.body(), b"event: json\ndata: {\"a\":1}\n\n");
        assert_eq!(frame.seq(), Some(7));
        assert!(frame.is_resumable());
    }

    #[test]
    fn refuses_line_breaks_and_bad_priority() {
        assert!(matches!(Frame::new(b"{}", "a\nb", 1, None), Err(Error::Frame(_))));
        assert!(matches!(Frame::new(b"{\r}", "a", 1, None), Err(Error::Frame(_))));
        assert!(matches!(Frame::new(b"{}", "a", 4, None), Err(Error::Invalid(_))));
    }
}
