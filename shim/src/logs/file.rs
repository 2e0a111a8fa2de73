//! A container's CRI log file: appended to by both stream pumps (whole lines at a time, so
//! lines never interleave), reopened on ReopenContainerLog after kubelet rotated it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

fn open(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(open(path)?),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends formatted lines.
    pub fn write(&self, lines: &[u8]) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut file = self.file.lock();
        file.write_all(lines)
    }

    /// Opens the path anew (creating the file before returning) and writes there from now on.
    pub fn reopen(&self) -> io::Result<()> {
        let new = open(&self.path)?;
        *self.file.lock() = new;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_after_rotation_creates_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod/c/0.log");
        let log = LogFile::open(&path).unwrap();
        log.write(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("rotated")).unwrap();
        log.write(b"two\n").unwrap();
        log.reopen().unwrap();
        assert!(path.exists());
        log.write(b"three\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("rotated")).unwrap(),
            "one\ntwo\n"
        );
    }
}
