//! The one place where core errors become Python exceptions.
//!
//! The exception classes are defined in Python (`sse_fast.errors`), so that they can subclass both
//! `SseFastError` and the natural built-in (`ValueError`, `PermissionError`); they are imported on first use.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::PyType;
use sse_fast_core::Error;

static FRAME_ERROR: GILOnceCell<Py<PyType>> = GILOnceCell::new();
static TOPIC_ERROR: GILOnceCell<Py<PyType>> = GILOnceCell::new();

fn class<'py>(py: Python<'py>, cell: &'static GILOnceCell<Py<PyType>>, name: &str) -> PyResult<&'py Py<PyType>> {
    cell.get_or_try_init(py, || {
        let module = py.import("sse_fast.errors")?;
        Ok(module.getattr(name)?.downcast_into::<PyType>()?.unbind())
    })
}

/// Convert a core error into the matching Python exception.
pub fn to_py(err: Error) -> PyErr {
    Python::with_gil(|py| {
        let (cell, name, msg) = match err {
            Error::Frame(msg) => (&FRAME_ERROR, "FrameError", msg),
            Error::Topic(msg) => (&TOPIC_ERROR, "TopicError", msg),
            Error::Invalid(msg) => return PyValueError::new_err(msg),
        };
        match class(py, cell, name) {
            Ok(cls) => PyErr::from_type(cls.bind(py).clone(), msg),
            Err(import_err) => PyRuntimeError::new_err(format!("{msg} (and sse_fast.errors failed: {import_err})")),
        }
    })
}

/// `?`-friendly conversion: `core_call().map_err(to_py)?` reads as `core_call().py()?`.
pub trait IntoPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, Error> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
