//! `parse_cursor`, `format_cursor`, `stream_id_seq` and `seq_stream_id`: thin wrappers of `sse_fast_core::cursor`.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use sse_fast_core::cursor::{self, Cursor};

use crate::errors::IntoPy;

/// The seq of `text` if it is a cursor `<epoch>-<seq>` of exactly this `epoch`, else None (never raises).
#[pyfunction]
fn parse_cursor(text: &Bound<'_, PyString>, epoch: &str) -> Option<u64> {
    // A str that is not valid UTF-8 (a lone surrogate) is not a cursor either.
    Cursor::parse_for(text.to_str().ok()?, epoch)
}

/// The cursor `<epoch>-<seq>`; an epoch that could break a cursor or an `id:` line raises `ValueError`.
#[pyfunction]
fn format_cursor(epoch: &str, seq: u64) -> PyResult<String> {
    Ok(Cursor::new(epoch, seq).py()?.to_string())
}

/// The seq (`ms << 20 | n`) of a Redis stream id `<ms>-<n>`, else None (never raises for a str or bytes).
#[pyfunction]
fn stream_id_seq(text: &Bound<'_, PyAny>) -> PyResult<Option<u64>> {
    if let Ok(bytes) = text.downcast::<PyBytes>() {
        return Ok(cursor::seq_of_stream_id(bytes.as_bytes()));
    }
    let text = text
        .downcast::<PyString>()
        .map_err(|_| PyTypeError::new_err("a stream id is str or bytes"))?;
    Ok(text
        .to_str()
        .ok()
        .and_then(|text| cursor::seq_of_stream_id(text.as_bytes())))
}

/// The Redis stream id `<ms>-<n>` of a seq: the inverse of `stream_id_seq`.
#[pyfunction]
fn seq_stream_id(seq: u64) -> String {
    cursor::stream_id_of(seq)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(parse_cursor, m)?)?;
    m.add_function(wrap_pyfunction!(format_cursor, m)?)?;
    m.add_function(wrap_pyfunction!(stream_id_seq, m)?)?;
    m.add_function(wrap_pyfunction!(seq_stream_id, m)?)
}
