//! TODO(queue): being written.
