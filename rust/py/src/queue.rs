//! `PushResult`, `PriorityQueue` and `FrameQueue`: thin wrappers of `sse_fast_core::queue`.
//!
//! Arguments are validated here (priority 0..=3, sizes >= 0, limits > 0) and refused with `ValueError` through
//! [`crate::errors`]; the core only debug-asserts them.

use std::time::{Duration, Instant};

use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use pyo3::PyTraverseError;
use sse_fast_core::frame::check_priority;
use sse_fast_core::queue::{Counters, FrameQueue, PriorityQueue, PushOutcome};
use sse_fast_core::Error;

use crate::errors::IntoPy;
use crate::frame::PyFrame;

/// Drains of at least this many pending bytes copy them with the GIL released.
const RELEASE_GIL_BYTES: usize = 64 * 1024;

/// A priority level, refused unless it is 0..=3.
fn level(priority: i64) -> PyResult<u8> {
    let level = u8::try_from(priority)
        .map_err(|_| Error::Invalid(format!("priority must be 0..=3, got {priority}")))
        .py()?;
    check_priority(level).py()?;
    Ok(level)
}

/// A size or limit, refused below `min` (0 for sizes, 1 for limits).
fn at_least(name: &str, value: i64, min: i64) -> PyResult<usize> {
    if value < min {
        return Err(Error::Invalid(format!("{name} must be >= {min}, got {value}"))).py();
    }
    usize::try_from(value)
        .map_err(|_| Error::Invalid(format!("{name} is too large: {value}")))
        .py()
}

fn counters_dict(py: Python<'_>, c: Counters) -> PyResult<Bound<'_, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("pushed", c.pushed)?;
    dict.set_item("popped", c.popped)?;
    dict.set_item("evicted", c.evicted)?;
    dict.set_item("overflowed", c.overflowed)?;
    dict.set_item("removed", c.removed)?;
    Ok(dict)
}

fn outcome_name<T>(outcome: &PushOutcome<T>) -> &'static str {
    match outcome {
        PushOutcome::Accepted { .. } => "accepted",
        PushOutcome::Overflow(_) => "overflow",
        PushOutcome::Dropped(_) => "dropped",
        PushOutcome::Duplicate(_) => "duplicate",
    }
}

/// What happened to one push (see `_core.pyi`). `handle` is 0 unless the item was accepted.
#[pyclass(name = "PushResult", module = "sse_fast._core", frozen)]
pub struct PyPushResult {
    outcome: &'static str,
    handle: u64,
    evicted: Vec<Py<PyAny>>,
}

#[pymethods]
impl PyPushResult {
    #[getter]
    fn outcome(&self) -> &'static str {
        self.outcome
    }

    #[getter]
    fn handle(&self) -> u64 {
        self.handle
    }

    #[getter]
    fn evicted<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.evicted.iter().map(|item| item.clone_ref(py)))
    }

    fn __repr__(&self) -> String {
        format!(
            "PushResult(outcome={:?}, handle={}, evicted=<{} items>)",
            self.outcome,
            self.handle,
            self.evicted.len()
        )
    }

    #[allow(clippy::needless_pass_by_value)] // PyO3's protocol hands the visitor over by value.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.evicted.iter().try_for_each(|item| visit.call(item))
    }
}

/// A bounded four-level priority queue of Python objects (see `_core.pyi`).
#[pyclass(name = "PriorityQueue", module = "sse_fast._core")]
pub struct PyPriorityQueue {
    inner: PriorityQueue<Py<PyAny>>,
}

#[pymethods]
impl PyPriorityQueue {
    #[new]
    #[pyo3(signature = (*, max_items, max_bytes = 9_223_372_036_854_775_807))]
    fn new(max_items: i64, max_bytes: i64) -> PyResult<Self> {
        let inner = PriorityQueue::new(
            at_least("max_items", max_items, 1)?,
            at_least("max_bytes", max_bytes, 1)?,
        );
        Ok(PyPriorityQueue { inner })
    }

    #[pyo3(signature = (item, priority = 1, *, size = 1, resumable = false))]
    fn push(&mut self, item: Py<PyAny>, priority: i64, size: i64, resumable: bool) -> PyResult<PyPushResult> {
        let (priority, size) = (level(priority)?, at_least("size", size, 0)?);
        let outcome = self.inner.push(item, priority, size, resumable);
        let outcome_name = outcome_name(&outcome);
        let (handle, evicted) = match outcome {
            PushOutcome::Accepted { handle, evicted } => (handle, evicted),
            PushOutcome::Overflow(_) | PushOutcome::Dropped(_) | PushOutcome::Duplicate(_) => (0, Vec::new()),
        };
        Ok(PyPushResult {
            outcome: outcome_name,
            handle,
            evicted,
        })
    }

    #[pyo3(signature = (*, aging_ms = None))]
    fn pop(&mut self, aging_ms: Option<i64>) -> PyResult<Option<Py<PyAny>>> {
        let Some(aging_ms) = aging_ms else {
            return Ok(self.inner.pop());
        };
        let aging = Duration::from_millis(at_least("aging_ms", aging_ms, 1)? as u64);
        Ok(self.inner.pop_aged(Instant::now(), aging))
    }

    fn peek(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.peek().map(|item| item.clone_ref(py))
    }

    fn remove(&mut self, handle: i64) -> Option<Py<PyAny>> {
        self.inner.remove(u64::try_from(handle).ok()?)
    }

    fn clear<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.inner.clear())
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.bytes()
    }

    #[getter]
    fn max_items(&self) -> usize {
        self.inner.max_items()
    }

    #[getter]
    fn max_bytes(&self) -> usize {
        self.inner.max_bytes()
    }

    fn depths(&self) -> [usize; 4] {
        self.inner.depths()
    }

    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        counters_dict(py, self.inner.counters())
    }

    fn __repr__(&self) -> String {
        format!(
            "PriorityQueue(len={}, nbytes={}, max_items={}, max_bytes={})",
            self.inner.len(),
            self.inner.bytes(),
            self.inner.max_items(),
            self.inner.max_bytes()
        )
    }

    #[allow(clippy::needless_pass_by_value)] // PyO3's protocol hands the visitor over by value.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        (0..4)
            .flat_map(|l| self.inner.iter_level(l))
            .try_for_each(|item| visit.call(item))
    }

    fn __clear__(&mut self) {
        drop(self.inner.clear());
    }
}

/// A connection's outbound frame queue (see `_core.pyi`); the hub owns the real ones, this one is for tests.
#[pyclass(name = "FrameQueue", module = "sse_fast._core")]
pub struct PyFrameQueue {
    inner: FrameQueue,
    id_prefix: Box<[u8]>,
}

#[pymethods]
impl PyFrameQueue {
    #[new]
    #[pyo3(signature = (*, max_frames, max_bytes, id_prefix = ""))]
    fn new(max_frames: i64, max_bytes: i64, id_prefix: &str) -> PyResult<Self> {
        if id_prefix.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'\0')) {
            return Err(Error::Frame("id_prefix must not contain CR, LF or NUL".into())).py();
        }
        Ok(PyFrameQueue {
            inner: FrameQueue::new(
                at_least("max_frames", max_frames, 1)?,
                at_least("max_bytes", max_bytes, 1)?,
            ),
            id_prefix: id_prefix.as_bytes().into(),
        })
    }

    fn push(&mut self, frame: &Bound<'_, PyFrame>) -> &'static str {
        outcome_name(&self.inner.push(frame.get().inner.clone()))
    }

    #[pyo3(signature = (max_bytes = 9_223_372_036_854_775_807))]
    fn drain<'py>(&mut self, py: Python<'py>, max_bytes: i64) -> PyResult<Bound<'py, PyBytes>> {
        let max_bytes = at_least("max_bytes", max_bytes, 1)?;
        let pending = self.inner.bytes().min(max_bytes);
        let mut out = Vec::with_capacity(pending + 64);
        let (queue, prefix) = (&mut self.inner, &*self.id_prefix);
        if pending >= RELEASE_GIL_BYTES {
            py.allow_threads(|| queue.drain(max_bytes, prefix, &mut out));
        } else {
            queue.drain(max_bytes, prefix, &mut out);
        }
        Ok(PyBytes::new(py, &out))
    }

    #[getter]
    fn watermark(&self) -> u64 {
        self.inner.watermark()
    }

    fn set_watermark(&mut self, seq: i64) -> PyResult<()> {
        self.inner.set_watermark(at_least("seq", seq, 0)? as u64);
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.bytes()
    }

    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        counters_dict(py, self.inner.counters())
    }

    fn __repr__(&self) -> String {
        format!(
            "FrameQueue(len={}, nbytes={}, watermark={})",
            self.inner.len(),
            self.inner.bytes(),
            self.inner.watermark()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPushResult>()?;
    m.add_class::<PyPriorityQueue>()?;
    m.add_class::<PyFrameQueue>()
}
