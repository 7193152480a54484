//! [`Cursor`]: the resume position `<epoch>-<seq>` that the server writes as `id:` and a client sends back as
//! `Last-Event-ID`, with the one rule by which every broker reads it; and the mapping between a seq and a Redis
//! stream id (`<ms>-<n>`), which the Redis broker uses as its seqs.
//!
//! A cursor comes from the client, so parsing is strict and total: anything but the exact text [`Cursor`]'s
//! `Display` writes is `None`, never an error or a panic. The seq is canonical ASCII decimal (`"0"` or no leading
//! zero), so that one position has one cursor; Unicode digits (`"²"`, `"٣"`), signs and whitespace are refused.

use std::fmt;

use crate::error::{Error, Result};

/// The longest epoch, in bytes.
pub const MAX_EPOCH_LEN: usize = 64;

/// The most digits of a seq: `u64::MAX` has 20.
const MAX_SEQ_DIGITS: usize = 20;

/// The longest cursor, in bytes: an epoch, `-` and a seq. Longer text is refused before it is scanned.
pub const MAX_LEN: usize = MAX_EPOCH_LEN + 1 + MAX_SEQ_DIGITS;

/// How many low bits of a seq hold a Redis stream id's sequence part `n` (the high bits hold its `ms`).
pub const STREAM_ID_SEQ_BITS: u32 = 20;

/// The characters an epoch or an id prefix may contain: none of them can end or break an `id:` line.
fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.:@/+=-".contains(c)
}

/// Refuse an epoch that could break a cursor or an `id:` line: it must be 1 to 64 characters of
/// `[A-Za-z0-9_.:@/+=-]`.
pub fn check_epoch(epoch: &str) -> Result<()> {
    if epoch.is_empty() || epoch.len() > MAX_EPOCH_LEN || !epoch.chars().all(is_id_char) {
        return Err(Error::Invalid(format!(
            "epoch must be 1 to {MAX_EPOCH_LEN} characters of [A-Za-z0-9_.:@/+=-], got {epoch:?}"
        )));
    }
    Ok(())
}

/// Refuse an `id:` line prefix (`<epoch>-`, or empty) that could break the line: at most 65 characters of
/// `[A-Za-z0-9_.:@/+=-]`.
pub fn check_id_prefix(prefix: &str) -> Result<()> {
    if prefix.len() > MAX_EPOCH_LEN + 1 || !prefix.chars().all(is_id_char) {
        return Err(Error::Invalid(format!(
            "id_prefix must be at most {} characters of [A-Za-z0-9_.:@/+=-], got {prefix:?}",
            MAX_EPOCH_LEN + 1
        )));
    }
    Ok(())
}

/// A resume position: a seq of the log named by an epoch. Written (`Display`) as `<epoch>-<seq>`.
///
/// The epoch is checked on construction ([`check_epoch`]), so every cursor written parses back to itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor<'a> {
    epoch: &'a str,
    seq: u64,
}

impl<'a> Cursor<'a> {
    /// The cursor of `seq` in the log of `epoch`; refuses an epoch [`check_epoch`] refuses.
    pub fn new(epoch: &'a str, seq: u64) -> Result<Cursor<'a>> {
        check_epoch(epoch)?;
        Ok(Cursor { epoch, seq })
    }

    /// Read `<epoch>-<seq>`, split at the last `-`: a valid epoch, then a seq of canonical ASCII digits that fits
    /// a `u64`. `None` for anything else, and for any text longer than [`MAX_LEN`].
    pub fn parse(text: &'a str) -> Option<Cursor<'a>> {
        if text.len() > MAX_LEN {
            return None;
        }
        let (epoch, digits) = text.rsplit_once('-')?;
        check_epoch(epoch).ok()?;
        Some(Cursor {
            epoch,
            seq: parse_canonical(digits, MAX_SEQ_DIGITS)?,
        })
    }

    /// The seq of `text` if it is a cursor (see [`Cursor::parse`]) of exactly this `epoch`; `None` otherwise.
    pub fn parse_for(text: &str, epoch: &str) -> Option<u64> {
        Cursor::parse(text)
            .filter(|cursor| cursor.epoch == epoch)
            .map(|cursor| cursor.seq)
    }

    /// The epoch: which log the seq belongs to.
    pub fn epoch(&self) -> &'a str {
        self.epoch
    }

    /// The position in that log.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl fmt::Display for Cursor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// The seq of a Redis stream id `<ms>-<n>`: `ms << 20 | n`. Both parts are canonical ASCII decimal (as Redis
/// writes them), `n` below 2**20 and `ms` below 2**44 (so that the seq fits a `u64`); `None` otherwise.
pub fn seq_of_stream_id(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    let (ms, n) = text.split_once('-')?;
    let (ms, n) = (parse_canonical(ms, MAX_SEQ_DIGITS)?, parse_canonical(n, 7)?);
    if n >> STREAM_ID_SEQ_BITS != 0 || ms >> (64 - STREAM_ID_SEQ_BITS) != 0 {
        return None;
    }
    Some(ms << STREAM_ID_SEQ_BITS | n)
}

/// The Redis stream id `<ms>-<n>` of a seq: the inverse of [`seq_of_stream_id`].
pub fn stream_id_of(seq: u64) -> String {
    let n = seq & ((1 << STREAM_ID_SEQ_BITS) - 1);
    format!("{}-{n}", seq >> STREAM_ID_SEQ_BITS)
}

/// A non-negative integer written in canonical ASCII decimal (`"0"`, or no leading zero) in at most `max_digits`
/// digits that fits a `u64`; `None` otherwise. No sign, no whitespace, no non-ASCII digit.
fn parse_canonical(digits: &str, max_digits: usize) -> Option<u64> {
    let bytes = digits.as_bytes();
    let canonical = bytes == b"0" || bytes.first().is_some_and(|b| matches!(b, b'1'..=b'9'));
    if !canonical || bytes.len() > max_digits || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        for (epoch, seq) in [("ep", 0), ("ep", 12), ("a-b", 7), ("x-", u64::MAX), ("+/=:@._", 1)] {
            let text = Cursor::new(epoch, seq).unwrap().to_string();
            assert_eq!(text, format!("{epoch}-{seq}"));
            assert_eq!(Cursor::parse(&text), Some(Cursor { epoch, seq }), "{text}");
            assert_eq!(Cursor::parse_for(&text, epoch), Some(seq), "{text}");
        }
        let longest = format!("{}-{}", "e".repeat(MAX_EPOCH_LEN), u64::MAX);
        assert_eq!(longest.len(), MAX_LEN);
        assert_eq!(Cursor::parse(&longest).map(|c| c.seq()), Some(u64::MAX));
    }

    #[test]
    fn splits_at_the_last_dash() {
        let cursor = Cursor::parse("a-b-5").unwrap();
        assert_eq!((cursor.epoch(), cursor.seq()), ("a-b", 5));
        assert_eq!(Cursor::parse_for("a-b-5", "a"), None);
        assert_eq!(Cursor::parse_for("a--5", "a-"), Some(5));
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "-",
            "ep",
            "ep-",
            "-5",
            "ep-007",
            "ep-00",
            "ep-+5",
            "ep- 5",
            "ep-5 ",
            " ep-5",
            "ep-5\n",
            "ep-1x",
            "ep-0x1",
            "ep-1e3",
            "ep-1_000",
            "ep-²",
            "ep-٣",
            "ep-５",
            "e p-5",
            "ep\n-5",
            "é-5",
            "ep-18446744073709551616",
            "ep-99999999999999999999999",
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Cursor::parse(&format!("{}-1", "e".repeat(MAX_EPOCH_LEN + 1))), None);
        assert_eq!(Cursor::parse(&format!("ep-{}", "1".repeat(MAX_LEN))), None);
        // A minus sign is read as part of the epoch, so it names another log.
        assert_eq!(Cursor::parse_for("ep--5", "ep"), None);
        assert_eq!(Cursor::parse_for("other-1", "ep"), None);
        assert_eq!(Cursor::parse_for("ep-1", ""), None);
    }

    #[test]
    fn refuses_a_bad_epoch_or_prefix() {
        for bad in ["", "a\nb", "a b", "é", "a,b", &"e".repeat(MAX_EPOCH_LEN + 1)] {
            assert!(matches!(Cursor::new(bad, 1), Err(Error::Invalid(_))), "{bad:?}");
        }
        assert!(check_id_prefix("").is_ok());
        assert!(check_id_prefix(&format!("{}-", "e".repeat(MAX_EPOCH_LEN))).is_ok());
        assert!(matches!(check_id_prefix("a\r-"), Err(Error::Invalid(_))));
    }

    #[test]
    fn stream_ids_round_trip() {
        for (id, seq) in [
            ("0-0", 0),
            ("0-1", 1),
            ("1-0", 1 << 20),
            ("1700000000000-3", 1_700_000_000_000 << 20 | 3),
            ("0-1048575", (1 << 20) - 1),
            ("17592186044415-1048575", u64::MAX),
        ] {
            assert_eq!(seq_of_stream_id(id.as_bytes()), Some(seq), "{id}");
            assert_eq!(stream_id_of(seq), id);
        }
    }

    #[test]
    fn refuses_what_is_not_a_stream_id() {
        for bad in [
            "",
            "5",
            "-5",
            "5-",
            "0-1048576",
            "17592186044416-0",
            "01-1",
            "1-01",
            "+1-1",
            "1-+1",
            "1 -1",
            "1-1 ",
            "1-1-1",
            "²-1",
            "1-٣",
            "1.5-1",
            "99999999999999999999999-0",
        ] {
            assert_eq!(seq_of_stream_id(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(seq_of_stream_id(b"1-\xff"), None);
    }
}
