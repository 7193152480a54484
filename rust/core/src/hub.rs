//! TODO(hub): being written.
