//! The `Frame` class: a shared, immutable framed message.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sse_fast_core::Frame;

use crate::errors::IntoPy;

/// One framed message (see `_core.pyi`). Holds the core frame behind an `Arc`, so handing it to the hub, a
/// queue or the replay log never copies its bytes.
#[pyclass(name = "Frame", module = "sse_fast._core", frozen)]
pub struct PyFrame {
    pub inner: Arc<Frame>,
}

impl PyFrame {
    pub fn wrap(inner: Arc<Frame>) -> Self {
        PyFrame { inner }
    }
}

#[pymethods]
impl PyFrame {
    #[new]
    #[pyo3(signature = (data, *, event, priority = 1, seq = None))]
    fn new(data: &[u8], event: &str, priority: u8, seq: Option<u64>) -> PyResult<Self> {
        Ok(PyFrame {
            inner: Arc::new(Frame::new(data, event, priority, seq).py()?),
        })
    }

    #[getter]
    fn seq(&self) -> Option<u64> {
        self.inner.seq()
    }

    #[getter]
    fn priority(&self) -> u8 {
        self.inner.priority()
    }

    #[getter]
    fn event(&self) -> &str {
        self.inner.event()
    }

    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.body())
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "Frame(event={:?}, priority={}, seq={:?}, len={})",
            self.inner.event(),
            self.inner.priority(),
            self.inner.seq(),
            self.inner.len()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyFrame>()
}
