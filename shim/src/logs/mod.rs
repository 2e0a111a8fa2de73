//! Container logs in the CRI format, written to the path kubelet chose.

pub mod format;

pub use format::{LineSplitter, Stream, MAX_LINE};
