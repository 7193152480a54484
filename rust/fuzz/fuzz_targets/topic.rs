//! Topic and pattern parsing and matching, and the topic index: no panic; validation keeps its promises (length,
//! alphabet, segments); `matches` agrees with a naive reference on valid input; a topic matches itself; and the
//! index (a trie) visits exactly the subscriptions whose pattern matches, and prunes itself empty.
#![no_main]

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sse_fast_core::topic::{matches, validate_topic, TopicIndex, MAX_TOPIC_LEN};

#[derive(Arbitrary, Debug)]
enum Op {
    Insert { pattern: u8, id: u8 },
    Remove { pattern: u8, id: u8 },
    Match { topic: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    texts: Vec<String>,
    ops: Vec<Op>,
}

/// The matching rule, written the obvious recursive way.
fn reference(pattern: &[&str], topic: &[&str]) -> bool {
    match (pattern.split_first(), topic.split_first()) {
        (None, None) => true,
        (Some((&">", [])), Some(_)) => true,
        (Some((p, prest)), Some((t, trest))) if *p == "*" || p == t => reference(prest, trest),
        _ => false,
    }
}

fn check_validation(text: &str) {
    let as_topic = validate_topic(text, false).is_ok();
    let as_pattern = validate_topic(text, true).is_ok();
    if as_topic {
        assert!(as_pattern, "a topic is a pattern: {text:?}");
        assert!(matches(text, text), "a topic matches itself: {text:?}");
    }
    if as_pattern {
        assert!(text.len() <= MAX_TOPIC_LEN);
        let segments: Vec<&str> = text.split('.').collect();
        for (i, segment) in segments.iter().enumerate() {
            let wild = *segment == "*" || (*segment == ">" && i + 1 == segments.len());
            assert!(
                wild || (!segment.is_empty()
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_:/-".contains(&b)))
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let texts: Vec<&str> = input.texts.iter().map(String::as_str).take(16).collect();
    for text in &texts {
        check_validation(text);
    }
    for pattern in &texts {
        for topic in &texts {
            let got = matches(pattern, topic);
            if validate_topic(pattern, true).is_ok() && validate_topic(topic, false).is_ok() {
                let want = reference(
                    &pattern.split('.').collect::<Vec<_>>(),
                    &topic.split('.').collect::<Vec<_>>(),
                );
                assert_eq!(got, want, "matches({pattern:?}, {topic:?})");
            }
        }
    }
    let patterns: Vec<&str> = texts
        .iter()
        .copied()
        .filter(|t| validate_topic(t, true).is_ok())
        .collect();
    let topics: Vec<&str> = texts
        .iter()
        .copied()
        .filter(|t| validate_topic(t, false).is_ok())
        .collect();
    let mut index = TopicIndex::new();
    let mut model: BTreeSet<(usize, u64)> = BTreeSet::new();
    for op in input.ops.iter().take(256) {
        match *op {
            Op::Insert { pattern, id } if !patterns.is_empty() => {
                let p = usize::from(pattern) % patterns.len();
                let fresh = !model
                    .iter()
                    .any(|&(q, i)| patterns[q] == patterns[p] && i == u64::from(id));
                assert_eq!(index.insert(patterns[p], u64::from(id)), fresh);
                if fresh {
                    model.insert((p, u64::from(id)));
                }
            }
            Op::Remove { pattern, id } if !patterns.is_empty() => {
                let p = usize::from(pattern) % patterns.len();
                let held = model
                    .iter()
                    .find(|&&(q, i)| patterns[q] == patterns[p] && i == u64::from(id))
                    .copied();
                assert_eq!(index.remove(patterns[p], u64::from(id)), held.is_some());
                if let Some(entry) = held {
                    model.remove(&entry);
                }
            }
            Op::Match { topic } if !topics.is_empty() => {
                let topic = topics[usize::from(topic) % topics.len()];
                let mut got = Vec::new();
                index.matching(topic, |id| got.push(id));
                got.sort_unstable();
                let mut want: Vec<u64> = model
                    .iter()
                    .filter(|&&(p, _)| matches(patterns[p], topic))
                    .map(|&(_, id)| id)
                    .collect();
                want.sort_unstable();
                assert_eq!(got, want, "index.matching({topic:?})");
            }
            _ => {}
        }
        assert_eq!(index.len(), model.len());
    }
    for &(p, id) in &model.clone() {
        assert!(index.remove(patterns[p], id));
    }
    assert!(
        index.is_empty() && index.is_pruned(),
        "an emptied index keeps trie nodes"
    );
});
