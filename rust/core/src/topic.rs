//! Topics: validation, NATS-style pattern matching, and [`TopicIndex`], the index from patterns to connections.
//!
//! A topic is `.`-separated non-empty segments of `[A-Za-z0-9_:/-]`, 128 characters at most (`/` and `:` are
//! ordinary characters). In a pattern a segment may be `*` (exactly one segment) and the last segment may be `>`
//! (one or more segments), as in NATS subjects.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{Error, Result};

/// The longest topic or pattern, in characters.
pub const MAX_TOPIC_LEN: usize = 128;

/// Refuse anything but a valid topic (or, with `pattern`, a valid pattern), with a message that says why.
pub fn validate_topic(topic: &str, pattern: bool) -> Result<()> {
    let what = if pattern { "topic pattern" } else { "topic" };
    if topic.is_empty() {
        return Err(Error::Topic(format!("{what} must not be empty")));
    }
    let mut segments = topic.split('.').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        check_segment(topic, segment, last, pattern, what)?;
    }
    // Every character is ASCII by now, so bytes are characters.
    if topic.len() > MAX_TOPIC_LEN {
        return Err(Error::Topic(format!(
            "{what} {} is {} characters long; the limit is {MAX_TOPIC_LEN}",
            shown(topic),
            topic.len()
        )));
    }
    Ok(())
}

fn check_segment(topic: &str, segment: &str, last: bool, pattern: bool, what: &str) -> Result<()> {
    let shown = shown(topic);
    if segment.is_empty() {
        return Err(Error::Topic(format!(
            "{what} {shown} has an empty segment (a leading, trailing or doubled '.')"
        )));
    }
    if pattern && segment == "*" || pattern && last && segment == ">" {
        return Ok(());
    }
    if pattern && segment == ">" {
        return Err(Error::Topic(format!(
            "{what} {shown}: '>' may only be the last segment"
        )));
    }
    if let Some(bad) = segment.chars().find(|&c| !is_topic_char(c)) {
        let hint = match bad {
            '*' | '>' if pattern => "; '*' and '>' must be whole segments",
            '*' | '>' => "; '*' and '>' are only allowed in patterns",
            _ => "",
        };
        return Err(Error::Topic(format!(
            "{what} {shown}: character {bad:?} is not allowed (segments are [A-Za-z0-9_:/-]){hint}"
        )));
    }
    Ok(())
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '/' | '-')
}

/// The topic as quoted in an error message, cut short when it is long.
fn shown(topic: &str) -> String {
    match topic.char_indices().nth(48) {
        Some((cut, _)) => format!("{:?}...", &topic[..cut]),
        None => format!("{topic:?}"),
    }
}

/// Whether the concrete `topic` matches `pattern`: `*` matches one segment, a final `>` one or more, anything
/// else itself. Neither argument is validated (callers validate at the edge); an empty one matches nothing.
pub fn matches(pattern: &str, topic: &str) -> bool {
    if pattern.is_empty() || topic.is_empty() {
        return false;
    }
    let mut wanted = pattern.split('.');
    let mut given = topic.split('.');
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) if wanted.clone().next().is_none() => return true,
            (Some(w), Some(g)) if w == "*" || w == g => {}
            _ => return false,
        }
    }
}

/// A fast hasher for connection ids (small sequential integers that no client chooses), after rustc's `FxHasher`.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A set of connection ids.
pub type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;
/// A map keyed by connection id.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// One level of the segment trie.
#[derive(Default, Debug)]
struct Node {
    /// Literal next segments.
    children: HashMap<Box<str>, Node>,
    /// The `*` next segment.
    star: Option<Box<Node>>,
    /// Subscribers whose pattern ends at this node.
    here: IdSet,
    /// Subscribers of `<this node's path>.>`: one or more further segments.
    rest: IdSet,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.star.is_none() && self.here.is_empty() && self.rest.is_empty()
    }

    /// The subscribers of `tail` (the topic after this node's path, `None` when the path is the whole topic).
    fn walk(&self, tail: Option<&str>, visit: &mut impl FnMut(u64)) {
        let Some(topic) = tail else {
            self.here.iter().for_each(|&id| visit(id));
            return;
        };
        self.rest.iter().for_each(|&id| visit(id));
        let (segment, tail) = match topic.split_once('.') {
            Some((segment, tail)) => (segment, Some(tail)),
            None => (topic, None),
        };
        if let Some(child) = self.children.get(segment) {
            child.walk(tail, visit);
        }
        if let Some(star) = &self.star {
            star.walk(tail, visit);
        }
    }

    /// Remove `id` from the set that `segments` leads to; prunes the nodes left empty. Returns whether it was there.
    fn remove<'a>(&mut self, mut segments: impl Iterator<Item = &'a str> + Clone, id: u64) -> bool {
        let Some(segment) = segments.next() else {
            return self.here.remove(&id);
        };
        if segment == ">" && segments.clone().next().is_none() {
            return self.rest.remove(&id);
        }
        if segment == "*" {
            let Some(star) = self.star.as_deref_mut() else {
                return false;
            };
            let removed = star.remove(segments, id);
            if star.is_empty() {
                self.star = None;
            }
            return removed;
        }
        let Some(child) = self.children.get_mut(segment) else {
            return false;
        };
        let removed = child.remove(segments, id);
        if child.is_empty() {
            self.children.remove(segment);
        }
        removed
    }
}

/// An index from topic patterns to connection ids: a segment trie with literal children, a `*` child and `>`
/// subscriber sets (the shape of NATS's sublist), so that finding a topic's subscribers costs O(matches and the
/// trie nodes on their paths), not O(subscriptions).
#[derive(Default, Debug)]
pub struct TopicIndex {
    root: Node,
    len: usize,
}

impl TopicIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribe `id` to `pattern` (which the caller has validated). Returns false when it already was.
    pub fn insert(&mut self, pattern: &str, id: u64) -> bool {
        let mut node = &mut self.root;
        let mut segments = pattern.split('.').peekable();
        while let Some(segment) = segments.next() {
            let last = segments.peek().is_none();
            if last && segment == ">" {
                let inserted = node.rest.insert(id);
                return self.count(inserted);
            }
            node = if segment == "*" {
                node.star.get_or_insert_with(Box::default)
            } else {
                node.children.entry(segment.into()).or_default()
            };
        }
        let inserted = node.here.insert(id);
        self.count(inserted)
    }

    fn count(&mut self, inserted: bool) -> bool {
        self.len += usize::from(inserted);
        inserted
    }

    /// Unsubscribe `id` from `pattern`, freeing the trie nodes no longer used. Returns whether it was subscribed.
    pub fn remove(&mut self, pattern: &str, id: u64) -> bool {
        let removed = self.root.remove(pattern.split('.'), id);
        self.len -= usize::from(removed);
        removed
    }

    /// Call `visit` with the id of every subscription whose pattern matches the concrete `topic`. An id subscribed
    /// through several matching patterns is visited once per pattern: the caller dedupes.
    pub fn matching(&self, topic: &str, mut visit: impl FnMut(u64)) {
        if !topic.is_empty() {
            self.root.walk(Some(topic), &mut visit);
        }
    }

    /// How many (pattern, id) subscriptions the index holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index holds no subscription.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the trie holds no node beyond its root (every removal pruned what it left empty).
    pub fn is_pruned(&self) -> bool {
        self.root.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_topics() {
        for ok in ["a", "a.b.c", "A-z_0:9/x", "orders.eu-west.created", &"x".repeat(128)] {
            assert_eq!(validate_topic(ok, false), Ok(()), "{ok}");
            assert_eq!(validate_topic(ok, true), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a b",
            "a.*",
            "a.>",
            "é",
            "a\nb",
            &"x".repeat(129),
        ] {
            assert!(matches!(validate_topic(bad, false), Err(Error::Topic(_))), "{bad:?}");
        }
    }

    #[test]
    fn validates_patterns() {
        for ok in ["*", ">", "a.*", "a.>", "*.b.>", "*.*"] {
            assert_eq!(validate_topic(ok, true), Ok(()), "{ok}");
        }
        for bad in [">.a", "a.>.b", "a*", "a.b>", "**", "a.>>", ""] {
            assert!(matches!(validate_topic(bad, true), Err(Error::Topic(_))), "{bad:?}");
        }
        let Err(Error::Topic(msg)) = validate_topic("a.>.b", true) else {
            panic!()
        };
        assert!(msg.contains("last segment"), "{msg}");
    }

    #[test]
    fn matches_like_nats() {
        let cases = [
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.*", "a.b", true),
            ("a.*", "a", false),
            ("a.*", "a.b.c", false),
            ("a.>", "a", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c", true),
            (">", "a", true),
            ("*", "a.b", false),
            ("*.b.>", "x.b.y.z", true),
            ("*.b.>", "x.c.y", false),
            ("a", "", false),
        ];
        for (pattern, topic, want) in cases {
            assert_eq!(matches(pattern, topic), want, "{pattern} ~ {topic}");
        }
    }

    fn matching(index: &TopicIndex, topic: &str) -> Vec<u64> {
        let mut ids = Vec::new();
        index.matching(topic, |id| ids.push(id));
        ids.sort_unstable();
        ids
    }

    #[test]
    fn index_agrees_with_matches_and_prunes() {
        let patterns = ["a", "a.b", "a.*", "a.>", "*.b", ">", "*.*.c", "b.>", "a.b.c"];
        let mut index = TopicIndex::new();
        for (id, pattern) in patterns.iter().enumerate() {
            assert!(index.insert(pattern, id as u64));
        }
        assert!(!index.insert("a.*", 2));
        assert_eq!(index.len(), patterns.len());
        for topic in ["a", "a.b", "a.b.c", "x.b", "b", "b.x.c", "c.d.e.f"] {
            let want: Vec<u64> = (0..patterns.len() as u64)
                .filter(|&id| matches(patterns[id as usize], topic))
                .collect();
            assert_eq!(matching(&index, topic), want, "{topic}");
        }
        assert!(!index.remove("a.*", 99));
        assert!(!index.remove("q.r", 0));
        for (id, pattern) in patterns.iter().enumerate() {
            assert!(index.remove(pattern, id as u64), "{pattern}");
        }
        assert!(index.is_empty());
        assert!(index.is_pruned());
    }
}
