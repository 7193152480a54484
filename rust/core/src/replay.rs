//! TODO(replay): being written.
