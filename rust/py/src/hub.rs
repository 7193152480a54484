//! The `Hub` and `Delivery` classes, the routing arguments shared with the replay log, and `route_admits`.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBytes, PyDict};
use sse_fast_core::hub::{Delivery, Hub, Route, RouteRef};

use crate::errors::IntoPy;
use crate::frame::PyFrame;

/// Above this many connections a broadcast, topic publish or `push_all` releases the GIL: routing touches no Python object and takes long enough
/// for other threads to use the time.
const RELEASE_GIL_ABOVE: usize = 512;

/// The route named by `publish`/`append` keywords (the core's rule, `RouteRef::from_parts`), validated to publish.
pub fn route(target: Option<&str>, topic: Option<&str>, exclude: Option<&str>) -> PyResult<Route> {
    RouteRef::from_parts(target, topic, exclude)
        .and_then(RouteRef::to_route)
        .py()
}

/// Whether a subscriber receives what is sent on the route named by the keywords (see `_core.pyi`).
#[pyfunction]
#[pyo3(signature = (client_id, patterns, *, target = None, topic = None, exclude = None))]
#[allow(clippy::needless_pass_by_value)] // PyO3 extracts a sequence argument into an owned Vec
fn route_admits(
    client_id: &str,
    patterns: Vec<PyBackedStr>,
    target: Option<&str>,
    topic: Option<&str>,
    exclude: Option<&str>,
) -> PyResult<bool> {
    // `PyBackedStr` borrows each pattern's UTF-8 from its Python str: the only allocation is the Vec.
    Ok(RouteRef::from_parts(target, topic, exclude)
        .py()?
        .admits(client_id, &patterns))
}

/// The result of a publish or push (see `_core.pyi`).
#[pyclass(name = "Delivery", module = "sse_fast._core", frozen)]
pub struct PyDelivery {
    inner: Delivery,
}

#[pymethods]
impl PyDelivery {
    #[getter]
    fn delivered(&self) -> usize {
        self.inner.delivered
    }

    #[getter]
    fn woken(&self) -> Vec<u64> {
        self.inner.woken.clone()
    }

    #[getter]
    fn overflowed(&self) -> Vec<u64> {
        self.inner.overflowed.clone()
    }

    #[getter]
    fn dropped(&self) -> usize {
        self.inner.dropped
    }

    fn __repr__(&self) -> String {
        let Delivery {
            delivered,
            woken,
            overflowed,
            dropped,
        } = &self.inner;
        format!(
            "Delivery(delivered={delivered}, woken={}, overflowed={}, dropped={dropped})",
            woken.len(),
            overflowed.len()
        )
    }
}

/// The fan-out registry (see `_core.pyi`).
#[pyclass(name = "Hub", module = "sse_fast._core")]
pub struct PyHub {
    inner: Hub,
}

#[pymethods]
impl PyHub {
    #[new]
    #[pyo3(signature = (*, queue_frames, queue_bytes, id_prefix))]
    fn new(queue_frames: usize, queue_bytes: usize, id_prefix: &str) -> PyResult<Self> {
        Ok(PyHub {
            inner: Hub::new(queue_frames, queue_bytes, id_prefix).py()?,
        })
    }

    #[pyo3(signature = (client_id, topics = Vec::new()), text_signature = "(self, client_id, topics=())")]
    #[allow(clippy::needless_pass_by_value)] // PyO3 extracts a sequence argument into an owned Vec
    fn add(&mut self, client_id: &str, topics: Vec<String>) -> PyResult<u64> {
        self.inner.add(client_id, &topics).py()
    }

    #[allow(clippy::needless_pass_by_value)] // PyO3 extracts a sequence argument into an owned Vec
    fn set_topics(&mut self, conn: u64, topics: Vec<String>) -> PyResult<bool> {
        self.inner.set_topics(conn, &topics).py()
    }

    fn remove(&mut self, conn: u64) -> bool {
        self.inner.remove(conn)
    }

    #[pyo3(signature = (frame, *, target = None, topic = None, exclude = None))]
    fn publish(
        &mut self,
        py: Python<'_>,
        frame: &Bound<'_, PyFrame>,
        target: Option<&str>,
        topic: Option<&str>,
        exclude: Option<&str>,
    ) -> PyResult<PyDelivery> {
        let route = route(target, topic, exclude)?;
        let frame = Arc::clone(&frame.get().inner);
        let hub = &mut self.inner;
        // A targeted publish touches a handful of connections whatever the hub's size: keep the GIL.
        let inner = if hub.len() > RELEASE_GIL_ABOVE && !matches!(route, Route::Client(_)) {
            py.allow_threads(|| hub.publish(&frame, &route))
        } else {
            hub.publish(&frame, &route)
        };
        Ok(PyDelivery { inner })
    }

    fn push(&mut self, conn: u64, frame: &Bound<'_, PyFrame>) -> PyDelivery {
        PyDelivery {
            inner: self.inner.push(conn, &frame.get().inner),
        }
    }

    fn push_all(&mut self, py: Python<'_>, data: &[u8]) -> Vec<u64> {
        let hub = &mut self.inner;
        if hub.len() > RELEASE_GIL_ABOVE {
            py.allow_threads(|| hub.push_all(data))
        } else {
            hub.push_all(data)
        }
    }

    #[pyo3(
        signature = (conn, max_bytes = usize::MAX >> 1),
        text_signature = "(self, conn, max_bytes=9223372036854775807)"
    )]
    fn drain<'py>(&mut self, py: Python<'py>, conn: u64, max_bytes: usize) -> Bound<'py, PyBytes> {
        let mut out = Vec::new();
        self.inner.drain(conn, max_bytes, &mut out);
        PyBytes::new(py, &out)
    }

    fn set_watermark(&mut self, conn: u64, seq: u64) {
        self.inner.set_watermark(conn, seq);
    }

    fn watermark(&self, conn: u64) -> u64 {
        self.inner.watermark(conn)
    }

    fn connections_of(&self, client_id: &str) -> Vec<u64> {
        self.inner.connections_of(client_id).to_vec()
    }

    fn client_of(&self, conn: u64) -> Option<&str> {
        self.inner.client_of(conn)
    }

    fn topics_of(&self, conn: u64) -> Vec<&str> {
        self.inner
            .topics_of(conn)
            .unwrap_or_default()
            .iter()
            .map(|p| &**p)
            .collect()
    }

    fn queue_stats(&self, conn: u64) -> (usize, usize, u64) {
        self.inner.queue_stats(conn).unwrap_or_default()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, conn: &Bound<'_, PyAny>) -> bool {
        conn.extract::<u64>().is_ok_and(|id| self.inner.contains(id))
    }

    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner.counters();
        let dict = PyDict::new(py);
        dict.set_item("connections", c.connections)?;
        dict.set_item("clients", c.clients)?;
        dict.set_item("published", c.published)?;
        dict.set_item("delivered", c.delivered)?;
        dict.set_item("evicted", c.evicted)?;
        dict.set_item("dropped", c.dropped)?;
        dict.set_item("overflowed", c.overflowed)?;
        dict.set_item("queued_frames", c.queued_frames)?;
        dict.set_item("queued_bytes", c.queued_bytes)?;
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        let c = self.inner.counters();
        format!(
            "Hub(connections={}, clients={}, queued_frames={})",
            c.connections, c.clients, c.queued_frames
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(route_admits, m)?)?;
    m.add_class::<PyDelivery>()?;
    m.add_class::<PyHub>()
}
