//! The one error type of the core.

use std::fmt;

/// Everything the core can refuse. The binding maps each variant onto a Python exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A value that would break the SSE wire format (a line break in `event`/`id`, NUL in `id`), or a line or
    /// event over the decoder's size limit.
    Frame(String),
    /// An invalid topic or topic pattern.
    Topic(String),
    /// An argument outside its range (a priority above CRITICAL, a zero limit).
    Invalid(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Frame(msg) | Error::Topic(msg) | Error::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

/// The core's result type.
pub type Result<T> = std::result::Result<T, Error>;
