//! TODO(topic): being written.
