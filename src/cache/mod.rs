//! The content-addressed kernel cache: [`layout`] says where things live (pure), [`meta`] what
//! an entry records (pure), [`store`] is the only code that touches the cache's files.

#[cfg(feature = "cli")]
pub mod bundle;
pub mod compat;
pub mod layout;
pub mod meta;
pub mod store;
pub mod winner;

pub use layout::Layout;
pub use meta::{EntryMeta, FileDigest};
pub use store::{CacheError, CacheStore, Entry, GcSummary, KeyLock, Lookup, Scanned};
