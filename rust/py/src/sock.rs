//! `dead_peers`: the dead-peer sweep's socket reads (`TCP_INFO`), for every stream in one call without the GIL.

use pyo3::prelude::*;

/// Whether the peer of TCP socket `fd` is dead: the kernel retransmitted (or sent more than one zero-window
/// probe) without any acknowledgement for more than `dead_after_ms` (see `sse_fast.server.backlog`). False when
/// the socket cannot be read.
#[cfg(target_os = "linux")]
fn is_dead(fd: i32, dead_after_ms: u32) -> bool {
    // SAFETY: `tcp_info` is plain old data, zeroed is a valid value; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>()).unwrap_or(0);
    // SAFETY: `info` and `len` are valid for writes of `len` bytes; an fd that is not a TCP socket (or no longer
    // open) makes the call fail, which reads as alive.
    let status = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_last_ack_recv) + 4;
    if status != 0 || (len as usize) < needed {
        return false;
    }
    // A live peer that stopped reading still answers zero-window probes (one at a time, so probes <= 1).
    let unanswered = info.tcpi_retransmits > 0 || info.tcpi_probes > 1;
    unanswered && info.tcpi_last_ack_recv > dead_after_ms
}

#[cfg(not(target_os = "linux"))]
fn is_dead(_fd: i32, _dead_after_ms: u32) -> bool {
    false
}

/// The positions in `fds` of the sockets whose peer is dead (see `_core.pyi`).
#[pyfunction]
#[allow(clippy::needless_pass_by_value)] // PyO3 extracts a sequence argument into an owned Vec
fn dead_peers(py: Python<'_>, fds: Vec<i32>, dead_after_ms: u32) -> Vec<usize> {
    py.allow_threads(|| {
        fds.iter()
            .enumerate()
            .filter(|&(_, &fd)| fd >= 0 && is_dead(fd, dead_after_ms))
            .map(|(i, _)| i)
            .collect()
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(dead_peers, m)?)
}
