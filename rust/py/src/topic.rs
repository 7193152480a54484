//! `validate_topic` and `topic_matches`.

use pyo3::prelude::*;
use sse_fast_core::topic;

use crate::errors::IntoPy;

/// Raise `TopicError` unless `topic` is a valid topic (or, with `pattern`, a valid pattern).
#[pyfunction]
#[pyo3(signature = (topic, *, pattern = false))]
fn validate_topic(topic: &str, pattern: bool) -> PyResult<()> {
    topic::validate_topic(topic, pattern).py()
}

/// Whether the concrete `topic` matches `pattern` (NATS-style `*` and trailing `>`).
#[pyfunction]
fn topic_matches(pattern: &str, topic: &str) -> bool {
    topic::matches(pattern, topic)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(validate_topic, m)?)?;
    m.add_function(wrap_pyfunction!(topic_matches, m)?)
}
