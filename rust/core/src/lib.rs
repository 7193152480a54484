//! The pure-Rust core of sse-fast.
//!
//! Everything on the hot path of an SSE notification server, without Python:
//!
//! - [`wire`]: the SSE frame encoder and the incremental stream decoder (WHATWG rules);
//! - [`topic`]: topic validation and NATS-style pattern matching (`*`, trailing `>`), and the topic index;
//! - [`queue`]: the bounded four-level priority queue, and [`queue::FrameQueue`], a connection's outbound queue;
//! - [`hub`]: the fan-out registry that routes one shared frame to every recipient's queue;
//! - [`replay`]: the bounded log of recent resumable frames behind `Last-Event-ID` resume, and the encoding of a
//!   replay with its `id:` lines;
//! - [`cursor`]: the resume cursor `<epoch>-<seq>` ([`Cursor`]) and the mapping of seqs to Redis stream ids.
//!
//! Errors are values of one enum, [`Error`]; the binding crate maps them onto Python exceptions in one place.

pub mod cursor;
pub mod error;
pub mod frame;
pub mod hub;
pub mod queue;
pub mod replay;
pub mod topic;
pub mod wire;

pub use cursor::Cursor;
pub use error::Error;
pub use frame::Frame;

/// Priority levels, lowest first.
pub mod priority {
    pub const LOW: u8 = 0;
    pub const NORMAL: u8 = 1;
    pub const HIGH: u8 = 2;
    pub const CRITICAL: u8 = 3;
    /// How many levels there are.
    pub const LEVELS: usize = 4;
}
