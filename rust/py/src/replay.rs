//! The `ReplayLog` and `ReplayResult` classes, and `encode_replay`.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use sse_fast_core::replay::{self, ReplayLog};

use crate::errors::IntoPy;
use crate::frame::PyFrame;
use crate::hub::route;

/// Frames to replay, or a gap (see `_core.pyi`).
#[pyclass(name = "ReplayResult", module = "sse_fast._core", frozen)]
pub struct PyReplayResult {
    frames: Vec<Py<PyFrame>>,
    gap: Option<&'static str>,
}

#[pymethods]
impl PyReplayResult {
    #[getter]
    fn frames(&self, py: Python<'_>) -> Vec<Py<PyFrame>> {
        self.frames.iter().map(|f| f.clone_ref(py)).collect()
    }

    #[getter]
    fn gap(&self) -> Option<&'static str> {
        self.gap
    }

    fn __repr__(&self) -> String {
        match self.gap {
            Some(gap) => format!("ReplayResult(gap={gap:?})"),
            None => format!("ReplayResult(frames={})", self.frames.len()),
        }
    }
}

/// The bounded log of recent resumable frames (see `_core.pyi`).
#[pyclass(name = "ReplayLog", module = "sse_fast._core")]
pub struct PyReplayLog {
    inner: ReplayLog,
}

#[pymethods]
impl PyReplayLog {
    #[new]
    #[pyo3(signature = (*, epoch, max_frames, max_bytes, ttl_ms))]
    fn new(epoch: &str, max_frames: usize, max_bytes: usize, ttl_ms: u64) -> PyResult<Self> {
        Ok(PyReplayLog {
            inner: ReplayLog::new(epoch, max_frames, max_bytes, ttl_ms).py()?,
        })
    }

    #[getter]
    fn epoch(&self) -> &str {
        self.inner.epoch()
    }

    #[getter]
    fn head(&self) -> u64 {
        self.inner.head()
    }

    fn cursor(&self, seq: u64) -> String {
        self.inner.cursor(seq)
    }

    fn parse(&self, cursor: &str) -> Option<u64> {
        self.inner.parse(cursor)
    }

    #[pyo3(signature = (data, *, event, priority = 1, target = None, topic = None, exclude = None, now_ms))]
    #[allow(clippy::too_many_arguments)] // the keyword arguments of the Python signature
    fn append(
        &mut self,
        data: &[u8],
        event: &str,
        priority: u8,
        target: Option<&str>,
        topic: Option<&str>,
        exclude: Option<&str>,
        now_ms: u64,
    ) -> PyResult<PyFrame> {
        let route = route(target, topic, exclude)?;
        Ok(PyFrame::wrap(
            self.inner.append(data, event, priority, route, now_ms).py()?,
        ))
    }

    #[pyo3(signature = (cursor, *, client_id, topics, now_ms))]
    #[allow(clippy::needless_pass_by_value)] // PyO3 extracts a sequence argument into an owned Vec
    fn since(
        &mut self,
        py: Python<'_>,
        cursor: &str,
        client_id: &str,
        topics: Vec<String>,
        now_ms: u64,
    ) -> PyResult<PyReplayResult> {
        Ok(match self.inner.since(cursor, client_id, &topics, now_ms) {
            Ok(frames) => {
                let frames = frames.into_iter().map(|f| Py::new(py, PyFrame::wrap(f)));
                PyReplayResult {
                    frames: frames.collect::<PyResult<_>>()?,
                    gap: None,
                }
            }
            Err(gap) => PyReplayResult {
                frames: Vec::new(),
                gap: Some(gap.as_str()),
            },
        })
    }

    fn expire(&mut self, now_ms: u64) -> usize {
        self.inner.expire(now_ms)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.bytes()
    }

    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner.counters();
        let dict = PyDict::new(py);
        dict.set_item("appended", c.appended)?;
        dict.set_item("evicted", c.evicted)?;
        dict.set_item("expired", c.expired)?;
        dict.set_item("frames", c.frames)?;
        dict.set_item("bytes", c.bytes)?;
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        let log = &self.inner;
        format!(
            "ReplayLog(epoch={:?}, head={}, frames={})",
            log.epoch(),
            log.head(),
            log.len()
        )
    }
}

/// Write the next chunk of a replay, each frame after its `id:` line; returns the bytes and how many frames it took.
#[pyfunction]
#[pyo3(signature = (frames, *, id_prefix, chunk_bytes))]
fn encode_replay<'py>(
    py: Python<'py>,
    frames: &Bound<'py, PyAny>,
    id_prefix: &str,
    chunk_bytes: usize,
) -> PyResult<(Bound<'py, PyBytes>, usize)> {
    // Frames are converted as the core pulls them, so a chunk costs its own frames, not the whole replay's.
    let mut failed = None;
    let frames =
        frames.try_iter()?.map_while(
            |item| match item.and_then(|item| Ok(item.downcast_into::<PyFrame>()?)) {
                Ok(frame) => Some(Arc::clone(&frame.get().inner)),
                Err(err) => {
                    failed = Some(err);
                    None
                }
            },
        );
    let mut out = Vec::new();
    let taken = replay::encode_replay(frames, id_prefix, chunk_bytes, &mut out).py()?;
    match failed {
        Some(err) => Err(err),
        None => Ok((PyBytes::new(py, &out), taken)),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_replay, m)?)?;
    m.add_class::<PyReplayResult>()?;
    m.add_class::<PyReplayLog>()
}
