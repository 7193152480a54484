//! TODO(wire): being written.
