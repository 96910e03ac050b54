//! What can be wrong with a cache entry: the typed outcome of verifying one. A damaged entry is
//! a miss (warned about, never loaded, replaced by the next compile). Pure.

use crate::key::Key;

/// Why an entry folder is not a usable entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Damage {
    /// A file could not be opened or read.
    #[error("cannot read {file}: {error}")]
    Unreadable {
        /// The file's name inside the entry.
        file: String,
        /// The OS error.
        error: String,
    },
    /// A file is a link, a FIFO, a device or a folder: only regular files are read.
    #[error("{file} is {kind}, not a regular file")]
    NotRegular {
        /// The file's name inside the entry.
        file: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// A file's size differs from the recorded one (checked before reading it).
    #[error("{file} has {actual} bytes, {recorded} recorded")]
    Size {
        /// The file.
        file: String,
        /// Its size on disk.
        actual: u64,
        /// The size the metadata records.
        recorded: u64,
    },
    /// A file's bytes do not match the recorded sha256.
    #[error("{file} does not match its sha256")]
    Hash {
        /// The file.
        file: String,
    },
    /// The metadata file does not parse, or holds an impossible spec, tile or value.
    #[error("meta.json is not valid: {0}")]
    Meta(String),
    /// The metadata's seal does not match its content.
    #[error("meta.json was modified (seal mismatch)")]
    Seal,
    /// The metadata lists a file an entry does not have, or misses one it must have.
    #[error("meta.json {0}")]
    Files(String),
    /// The folder is not where the metadata says the entry lives.
    #[error("folder does not match its metadata (expected .../{expected})")]
    Location {
        /// The path the metadata implies, below `kernels/`.
        expected: String,
    },
    /// The key recomputed from the metadata and the source is not the recorded key.
    #[error("its key is not the key of its inputs (recorded {recorded:?}, computed {computed:?})")]
    Key {
        /// The key in the metadata.
        recorded: Key,
        /// The key of the recorded inputs.
        computed: Key,
    },
    /// The folder holds something flasheva does not write there.
    #[error("the folder holds {0:?}, which is not a file of an entry")]
    Foreign(String),
}

/// What a non-regular file is, for messages.
pub fn kind_of(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a folder"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}
