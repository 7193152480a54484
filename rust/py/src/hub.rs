//! The `Hub` and `Delivery` classes, the routing arguments shared with the replay log, and `route_admits`.

use std::sync::Arc;

use pyo3::exceptions::PyStopIteration;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBytes, PyDict, PyType};
use sse_fast_core::hub::{Delivery, Hub, Route, RouteRef};
use sse_fast_core::topic::IdMap;

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
    /// Recipients that went from empty to non-empty and are written by `Hub.flush` (attached writers).
    ready: usize,
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
    fn ready(&self) -> usize {
        self.ready
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
            "Delivery(delivered={delivered}, woken={}, ready={}, overflowed={}, dropped={dropped})",
            woken.len(),
            self.ready,
            overflowed.len()
        )
    }
}

/// What `Hub.flush` reports when a write needs Python's attention: the connections whose stream closed, and
/// `(connection, bytes)` for those that wrote `report_bytes` more since their last report.
type FlushReport = (Vec<u64>, Vec<(u64, u64)>);

/// A connection's transport, written by `Hub.flush` without a Python frame per write.
struct Writer {
    /// An object whose `send_bytes(data)` queues `data` and returns an already-finished awaitable (granian's RSGI
    /// transport): stepping it raises `StopIteration` when the bytes were taken, anything else when the stream is
    /// closed.
    transport: Py<PyAny>,
    /// Bytes written since the last report (`Hub.report_bytes`).
    unreported: u64,
    /// When the last write happened (the `now` given to `flush`).
    written_at: f64,
    /// Whether the connection is already in `ready`.
    scheduled: bool,
}

/// The fan-out registry (see `_core.pyi`).
#[pyclass(name = "Hub", module = "sse_fast._core")]
pub struct PyHub {
    inner: Hub,
    /// Attached writers, at most one per live connection (dropped with it).
    writers: IdMap<Writer>,
    /// Connections with an attached writer and queued frames, waiting for `flush`: at most one entry each.
    ready: Vec<u64>,
    /// Report a connection's written bytes once they reach this many (0: never).
    report_bytes: u64,
    /// The class of the finished awaitable `send_bytes` returns for queued bytes, learned from the first one.
    queued: Option<Py<PyType>>,
    /// The buffer each drain is written into before it becomes a `bytes` (reused: no allocation per write).
    scratch: Vec<u8>,
}

impl PyHub {
    /// Move the woken connections that have a writer into `ready` (once each); the others stay in `woken`.
    fn schedule(&mut self, mut inner: Delivery) -> PyDelivery {
        let mut ready = 0;
        if !self.writers.is_empty() {
            let (writers, queue) = (&mut self.writers, &mut self.ready);
            inner.woken.retain(|id| match writers.get_mut(id) {
                Some(writer) => {
                    if !writer.scheduled {
                        writer.scheduled = true;
                        queue.push(*id);
                        ready += 1;
                    }
                    false
                }
                None => true,
            });
        }
        PyDelivery { inner, ready }
    }

    /// Hand `data` to a writer's transport; false when the stream is closed (or the call failed).
    fn send(py: Python<'_>, queued: &mut Option<Py<PyType>>, writer: &Writer, data: Bound<'_, PyBytes>) -> bool {
        let Ok(result) = writer
            .transport
            .bind(py)
            .call_method1(intern!(py, "send_bytes"), (data,))
        else {
            return false;
        };
        if queued.as_ref().is_some_and(|t| result.get_type().is(t)) {
            return true;
        }
        match result.call_method0(intern!(py, "__next__")) {
            Ok(_) => true, // not finished yet: taken, as the Python sink treats it
            Err(err) if err.is_instance_of::<PyStopIteration>(py) => {
                *queued = Some(result.get_type().unbind());
                true
            }
            Err(_) => false,
        }
    }
}

#[pymethods]
impl PyHub {
    #[new]
    #[pyo3(signature = (*, queue_frames, queue_bytes, id_prefix))]
    fn new(queue_frames: usize, queue_bytes: usize, id_prefix: &str) -> PyResult<Self> {
        Ok(PyHub {
            inner: Hub::new(queue_frames, queue_bytes, id_prefix).py()?,
            writers: IdMap::default(),
            ready: Vec::new(),
            report_bytes: 0,
            queued: None,
            scratch: Vec::new(),
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
        self.writers.remove(&conn);
        self.inner.remove(conn)
    }

    /// Write this connection's frames from `flush` from now on, through `transport.send_bytes`.
    fn attach(&mut self, conn: u64, transport: Py<PyAny>) -> bool {
        if !self.inner.contains(conn) {
            return false;
        }
        let writer = Writer {
            transport,
            unreported: 0,
            written_at: 0.0,
            scheduled: false,
        };
        self.writers.insert(conn, writer);
        true
    }

    /// Stop writing this connection from `flush`; returns the bytes written since the last report.
    fn detach(&mut self, conn: u64) -> Option<u64> {
        self.writers.remove(&conn).map(|writer| writer.unreported)
    }

    fn attached(&self, conn: u64) -> bool {
        self.writers.contains_key(&conn)
    }

    fn written_at(&self, conn: u64) -> Option<f64> {
        self.writers.get(&conn).map(|writer| writer.written_at)
    }

    #[getter]
    fn get_report_bytes(&self) -> u64 {
        self.report_bytes
    }

    #[setter]
    fn set_report_bytes(&mut self, value: u64) {
        self.report_bytes = value;
    }

    #[getter]
    fn pending(&self) -> usize {
        self.ready.len()
    }

    /// Drain every ready connection into one `bytes` and hand it to its writer (see `_core.pyi`).
    fn flush(&mut self, py: Python<'_>, now: f64) -> Option<FlushReport> {
        let mut ready = std::mem::take(&mut self.ready);
        let (mut closed, mut reports) = (Vec::new(), Vec::new());
        // One publish reaches most connections with the same bytes: they share one `bytes` object.
        let mut last: Option<Bound<'_, PyBytes>> = None;
        let Self {
            inner,
            writers,
            report_bytes,
            queued,
            scratch,
            ..
        } = self;
        for &id in &ready {
            let Some(writer) = writers.get_mut(&id) else {
                continue; // detached or removed since it was woken
            };
            writer.scheduled = false;
            scratch.clear();
            inner.drain(id, usize::MAX >> 1, scratch);
            if scratch.is_empty() {
                continue;
            }
            let data = match &last {
                Some(bytes) if bytes.as_bytes() == scratch.as_slice() => bytes.clone(),
                _ => {
                    let bytes = PyBytes::new(py, scratch);
                    last = Some(bytes.clone());
                    bytes
                }
            };
            if !Self::send(py, queued, writer, data) {
                writers.remove(&id);
                closed.push(id);
                continue;
            }
            writer.written_at = now;
            writer.unreported += scratch.len() as u64;
            if *report_bytes > 0 && writer.unreported >= *report_bytes {
                reports.push((id, writer.unreported));
                writer.unreported = 0;
            }
        }
        ready.clear();
        if self.ready.is_empty() {
            self.ready = ready; // keep the capacity
        }
        (!closed.is_empty() || !reports.is_empty()).then_some((closed, reports))
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
        Ok(self.schedule(inner))
    }

    fn push(&mut self, conn: u64, frame: &Bound<'_, PyFrame>) -> PyDelivery {
        let inner = self.inner.push(conn, &frame.get().inner);
        self.schedule(inner)
    }

    fn push_all(&mut self, py: Python<'_>, data: &[u8]) -> PyDelivery {
        let hub = &mut self.inner;
        let woken = if hub.len() > RELEASE_GIL_ABOVE {
            py.allow_threads(|| hub.push_all(data))
        } else {
            hub.push_all(data)
        };
        self.schedule(Delivery {
            woken,
            ..Delivery::default()
        })
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
