//! The wire format: `encode_*` functions and the `Event` and `Decoder` classes.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sse_fast_core::wire::{self, Decoder, Event};

use crate::errors::IntoPy;

/// Chunks larger than this are decoded with the GIL released.
const RELEASE_GIL_ABOVE: usize = 64 * 1024;

/// Frame one SSE event; CR/LF in `event` or `id`, or NUL in `id`, raise `FrameError`.
#[pyfunction]
#[pyo3(signature = (data, *, event = None, id = None, retry = None))]
fn encode_event<'py>(
    py: Python<'py>,
    data: &str,
    event: Option<&str>,
    id: Option<&str>,
    retry: Option<u64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let size = wire::event_frame_size(data, event, id, retry).py()?;
    PyBytes::new_with(py, size, |out| wire::write_event(out, data, event, id, retry).py())
}

/// Frame a comment block, one comment line per line of `text`.
#[pyfunction]
#[pyo3(signature = (text = ""))]
fn encode_comment<'py>(py: Python<'py>, text: &str) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &wire::encode_comment(text))
}

/// Frame a block that only sets the reconnection time.
#[pyfunction]
fn encode_retry(py: Python<'_>, ms: u64) -> Bound<'_, PyBytes> {
    PyBytes::new(py, &wire::encode_retry(ms))
}

/// Frame already-serialised single-line JSON; a raw CR or LF raises `FrameError`.
#[pyfunction]
#[pyo3(signature = (data, *, event = None, id = None))]
fn encode_json_frame<'py>(
    py: Python<'py>,
    data: &[u8],
    event: Option<&str>,
    id: Option<&str>,
) -> PyResult<Bound<'py, PyBytes>> {
    // Framed straight into the new `bytes` object: no intermediate buffer.
    let size = wire::json_frame_size(data, event, id).py()?;
    PyBytes::new_with(py, size, |out| wire::write_json_frame(out, data, event, id).py())
}

/// One dispatched event (see `_core.pyi`): immutable, compared and hashed by value.
#[pyclass(name = "Event", module = "sse_fast._core", frozen, eq, hash)]
#[derive(PartialEq, Eq, Hash)]
pub struct PyEvent(Event);

#[pymethods]
impl PyEvent {
    #[new]
    #[pyo3(signature = (data, event = "message", id = None, retry = None))]
    fn new(data: String, event: &str, id: Option<String>, retry: Option<u64>) -> Self {
        PyEvent(Event {
            event: event.to_owned(),
            data,
            id,
            retry,
        })
    }

    #[getter]
    fn event(&self) -> &str {
        &self.0.event
    }

    #[getter]
    fn data(&self) -> &str {
        &self.0.data
    }

    #[getter]
    fn id(&self) -> Option<&str> {
        self.0.id.as_deref()
    }

    #[getter]
    fn retry(&self) -> Option<u64> {
        self.0.retry
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        let event = &slf.get().0;
        Ok(format!(
            "Event(data={}, event={}, id={}, retry={})",
            event.data.as_str().into_pyobject(py)?.repr()?,
            event.event.as_str().into_pyobject(py)?.repr()?,
            event.id.as_deref().into_pyobject(py)?.repr()?,
            event.retry.into_pyobject(py)?.repr()?,
        ))
    }
}

/// The incremental stream decoder (see `_core.pyi`).
#[pyclass(name = "Decoder", module = "sse_fast._core")]
pub struct PyDecoder(Decoder);

#[pymethods]
impl PyDecoder {
    #[new]
    #[pyo3(signature = (*, max_line = 1_048_576, max_event = 4_194_304))]
    fn new(max_line: usize, max_event: usize) -> PyResult<Self> {
        Ok(PyDecoder(Decoder::new(max_line, max_event).py()?))
    }

    fn feed(&mut self, py: Python<'_>, chunk: &[u8]) -> PyResult<Vec<PyEvent>> {
        let decoder = &mut self.0;
        let events = if chunk.len() > RELEASE_GIL_ABOVE {
            // `chunk` borrows an immutable `bytes` object that the caller keeps alive for the call.
            py.allow_threads(|| decoder.feed(chunk))
        } else {
            decoder.feed(chunk)
        };
        Ok(events.py()?.into_iter().map(PyEvent).collect())
    }

    fn reset(&mut self) {
        self.0.reset();
    }

    #[getter]
    fn last_event_id(&self) -> &str {
        self.0.last_event_id()
    }

    #[getter]
    fn retry(&self) -> Option<u64> {
        self.0.retry()
    }

    fn __repr__(&self) -> String {
        format!(
            "Decoder(max_line={}, max_event={})",
            self.0.max_line(),
            self.0.max_event()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_event, m)?)?;
    m.add_function(wrap_pyfunction!(encode_comment, m)?)?;
    m.add_function(wrap_pyfunction!(encode_retry, m)?)?;
    m.add_function(wrap_pyfunction!(encode_json_frame, m)?)?;
    m.add_class::<PyEvent>()?;
    m.add_class::<PyDecoder>()?;
    Ok(())
}
