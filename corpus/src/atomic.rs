//! Atomic file writes: the workspace's one way to put a file in place.
//!
//! [`AtomicFile`] writes to a temporary file beside the target (`tempfile`), hashes and counts the
//! bytes as they go, and on [`AtomicFile::commit`] flushes, fsyncs, renames it over the target
//! (`tempfile`'s `persist`) and fsyncs the folder, so after a crash the target holds either its
//! old bytes or all of its new ones. Dropped without a commit, the temporary file is removed.
//! Temporary names start with `.` and end with `.tmp`, so [`remove_stale_temporaries`] can clear
//! what a killed process left.
//!
//! ```no_run
//! # fn main() -> Result<(), corpus::Error> {
//! let info = corpus::atomic::write("out/report.json".as_ref(), b"{}\n")?;
//! assert_eq!(info.bytes, 3);
//! # Ok(()) }
//! ```

use crate::{Error, Result};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::Xxh3;

/// What a committed file holds: its size and the xxh3-64 of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub bytes: u64,
    pub xxh3: u64,
}

impl Written {
    /// The checksum as it is recorded in manifests and completion records: `xxh3:` and 16 hex
    /// digits.
    pub fn checksum(&self) -> String {
        format!("xxh3:{:016x}", self.xxh3)
    }
}

/// A file being written under a temporary name; see the module documentation.
pub struct AtomicFile {
    path: PathBuf,
    file: BufWriter<tempfile::NamedTempFile>,
    hasher: Xxh3,
    bytes: u64,
}

impl AtomicFile {
    /// Starts writing `path` (its folder is created if needed).
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let dir = parent(path);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!(".{name}.");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        // A temporary file is private (0600); the finished file is an ordinary one (0666 less
        // the umask, as `File::create` makes it).
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let tmp = builder.tempfile_in(&dir).map_err(|e| Error::io(path, e))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            file: BufWriter::with_capacity(1 << 20, tmp),
            hasher: Xxh3::new(),
            bytes: 0,
        })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Flushes, fsyncs and renames the file into place, then fsyncs its folder.
    pub fn commit(self) -> Result<Written> {
        let path = self.path;
        let tmp = self
            .file
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        tmp.as_file().sync_all().map_err(|e| Error::io(&path, e))?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        sync_dir(&parent(&path))?;
        Ok(Written {
            bytes: self.bytes,
            xxh3: self.hasher.digest(),
        })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `data` to `path` atomically (see [`AtomicFile`]).
pub fn write(path: &Path, data: &[u8]) -> Result<Written> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(data).map_err(|e| Error::io(path, e))?;
    f.commit()
}

/// Makes the entries of folder `dir` (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
    f.sync_all().map_err(|e| Error::io(dir, e))
}

/// Streams a file through xxh3-64 (as [`Written::xxh3`] records it), without holding it.
pub fn hash_file(path: &Path) -> Result<Written> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(Written {
        bytes,
        xxh3: hasher.digest(),
    })
}

/// Removes the temporary files a killed writer left in `dir` and its subfolders; returns how many.
/// Only for folders no other process is writing into.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if kind.is_dir() {
            removed += remove_stale_temporaries(&path)?;
        } else if name.starts_with('.') && name.ends_with(".tmp") {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_whole_files_and_leaves_nothing_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/a.txt");
        let w = write(&target, b"hello").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        assert_eq!(w.bytes, 5);
        assert_eq!(w, hash_file(&target).unwrap());
        assert!(w.checksum().starts_with("xxh3:"));
        {
            let mut f = AtomicFile::create(&target).unwrap();
            f.write_all(b"half").unwrap();
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            1
        );
        // What a killed writer leaves is found and removed.
        std::fs::write(dir.path().join("sub/.a.txt.XYZ.tmp"), b"x").unwrap();
        assert_eq!(remove_stale_temporaries(dir.path()).unwrap(), 1);
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            1
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_written_file_has_ordinary_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        write(&path, b"x").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // Readable by others unless the umask says otherwise (022 here and in CI).
        assert_eq!(mode & 0o600, 0o600);
        assert_ne!(mode, 0o600, "{mode:o}");
    }
}
