//! `sse_fast._core`: the thin `PyO3` binding of `sse-fast-core`.
//!
//! This crate only converts types, wraps classes and maps errors ([`errors`]); the logic lives in the core.

use pyo3::prelude::*;

mod cursor;
mod errors;
mod frame;
mod hub;
mod queue;
mod replay;
mod sock;
mod topic;
mod wire;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "build_profile",
        if cfg!(debug_assertions) { "debug" } else { "release" },
    )?;
    m.add("LOW", sse_fast_core::priority::LOW)?;
    m.add("NORMAL", sse_fast_core::priority::NORMAL)?;
    m.add("HIGH", sse_fast_core::priority::HIGH)?;
    m.add("CRITICAL", sse_fast_core::priority::CRITICAL)?;
    frame::register(m)?;
    wire::register(m)?;
    topic::register(m)?;
    queue::register(m)?;
    hub::register(m)?;
    replay::register(m)?;
    cursor::register(m)?;
    sock::register(m)?;
    Ok(())
}
