//! A scratch directory for one test, shared by the test binaries that
//! write files (data directories, certificates and keys, token files).

use std::path::{Path, PathBuf};

/// `$TMPDIR/abacus-NAME-PID`, empty when made and removed when dropped —
/// a failing test's too, so no run leaves its files (keys among them)
/// behind.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory; `name` keeps it apart from the other
    /// tests of this process.
    ///
    /// # Panics
    /// When it cannot be created (a test cannot go on without).
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("abacus-{name}-{}", std::process::id()));
        // Left over by an earlier process of the same id.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Self(dir)
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
