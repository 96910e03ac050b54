//! The content-addressed kernel cache. Pure parts: [`layout`] (where things live, which names
//! flasheva creates), [`meta`] (what an entry records, and its validating parser), [`damage`]
//! (what can be wrong with an entry), [`winner`] (tuning records), [`compat`] (where an entry
//! runs), [`text`] (terminal-safe text). File side: [`fsx`] (the only code that opens, creates
//! or deletes cache files), [`store`] (opening a cache root), [`entries`], [`winners`], [`gc`]
//! and [`txn`] (all-or-nothing imports); `bundle` moves caches between machines.
//!
//! Threat model: only the user and their flasheva processes write the cache; nothing in it is
//! followed through a link or across filesystems, and only names flasheva creates are deleted.
//! Bundles come from elsewhere and are untrusted until a trusted signature (or a rebuild) vouches
//! for them; see the README.

#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
pub mod bundle;
pub mod compat;
pub mod damage;
pub mod entries;
pub mod fsx;
pub mod gc;
pub mod layout;
pub mod meta;
pub mod store;
pub mod text;
pub mod txn;
pub mod winner;
pub mod winners;

pub use damage::Damage;
pub use entries::{ClearSummary, Entry, KeyLock, Lookup, Scanned, USED_FILE};
pub use gc::GcSummary;
pub use layout::Layout;
pub use meta::{EntryMeta, FileDigest};
pub use store::{CacheError, CacheStore};
