//! Container logs in the CRI format, written to the path kubelet chose.

pub mod file;
pub mod format;

pub use file::LogFile;
pub use format::{LineSplitter, Stream, MAX_LINE};
