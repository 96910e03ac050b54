//! Reading a bundle as a stream: the manifest must be the first member and the signature, when
//! there is one, the second; both are read (bounded) and handed to the caller's check before any
//! other member is looked at. Then each member must be a regular file the manifest lists, not
//! seen before, exactly the size the manifest declares; it is streamed into the staging folder
//! and hashed on the way. Nothing is written that the manifest does not declare, and the sum of
//! the declared sizes is capped. Tar members are read raw: GNU long names, PAX headers, links,
//! devices and folders are refused, not interpreted.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::cache::bundle::BundleError;
use crate::cache::bundle::manifest::{
    MANIFEST, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES, Manifest, SIGNATURE, member_name,
};
use crate::cache::fsx;
use crate::cache::meta::FileDigest;

fn kind_name(kind: tar::EntryType) -> Option<&'static str> {
    match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous => None,
        tar::EntryType::Symlink => Some("a symbolic link"),
        tar::EntryType::Link => Some("a hard link"),
        tar::EntryType::Directory => Some("a directory"),
        tar::EntryType::GNULongName | tar::EntryType::GNULongLink => Some("a GNU long-name record"),
        tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => Some("a PAX header"),
        _ => Some("not a regular file"),
    }
}

type Member<'a, R> = (tar::Entry<'a, R>, String, u64);

/// The next member: a regular file with a plain relative name, and its declared size.
fn next_member<'a, R: Read>(
    path: &Path,
    members: &mut tar::Entries<'a, R>,
) -> Result<Option<Member<'a, R>>, BundleError> {
    let damaged = |e: io::Error| BundleError::Damaged {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let refuse = |raw: &[u8], reason: String| BundleError::Member {
        path: path.to_path_buf(),
        member: String::from_utf8_lossy(raw).into_owned(),
        reason,
    };
    match members.next() {
        None => Ok(None),
        Some(e) => {
            let e = e.map_err(damaged)?;
            let raw = e.path_bytes().into_owned();
            if let Some(what) = kind_name(e.header().entry_type()) {
                return Err(refuse(
                    &raw,
                    format!("is {what}: bundles hold regular files only"),
                ));
            }
            let name = member_name(&raw).map_err(|r| refuse(&raw, r.to_string()))?;
            let size = e.header().entry_size().map_err(damaged)?;
            Ok(Some((e, name, size)))
        }
    }
}

/// Reads a small member (manifest, signature) whole, refusing one over `cap`.
fn read_small<R: Read>(
    path: &Path,
    mut e: tar::Entry<'_, R>,
    name: &str,
    size: u64,
    cap: u64,
) -> Result<Vec<u8>, BundleError> {
    if size > cap {
        return Err(BundleError::Member {
            path: path.to_path_buf(),
            member: name.to_string(),
            reason: format!("is {size} bytes, over the {cap}-byte limit"),
        });
    }
    let mut v = Vec::with_capacity(size as usize);
    (&mut e)
        .take(size)
        .read_to_end(&mut v)
        .map_err(|e| BundleError::Damaged {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if v.len() as u64 != size {
        return Err(BundleError::Damaged {
            path: path.to_path_buf(),
            reason: format!("member {name} ends early"),
        });
    }
    Ok(v)
}

/// Reads a bundle from `input` (`path` names it in messages). `accept` sees the manifest, its
/// bytes and the signature bytes before any member is read, and may refuse. Members are streamed
/// into `stage` (which must be an empty folder this process owns), or only hashed when `stage` is
/// `None`.
pub fn read<R: Read, T>(
    path: &Path,
    input: R,
    accept: impl FnOnce(&Manifest, &[u8], Option<&[u8]>) -> Result<T, BundleError>,
    stage: Option<&Path>,
) -> Result<(Manifest, T), BundleError> {
    let damaged = |e: io::Error| BundleError::Damaged {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let invalid = |reason: String| BundleError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let refuse = |raw: &[u8], reason: String| BundleError::Member {
        path: path.to_path_buf(),
        member: String::from_utf8_lossy(raw).into_owned(),
        reason,
    };
    let dec = zstd::Decoder::new(input).map_err(damaged)?;
    let mut ar = tar::Archive::new(dec);
    let mut members = ar.entries().map_err(damaged)?.raw(true);

    // 1. The manifest, first.
    let Some((e, name, size)) = next_member(path, &mut members)? else {
        return Err(invalid(format!("it is empty: it has no {MANIFEST}")));
    };
    if name != MANIFEST {
        return Err(invalid(format!(
            "it has no {MANIFEST} first (the first member is {name:?})"
        )));
    }
    let manifest_bytes = read_small(path, e, &name, size, MAX_MANIFEST_BYTES)?;
    let manifest = Manifest::parse(&manifest_bytes).map_err(invalid)?;

    // 2. The signature, second, if any; then the caller's verdict, before anything is written.
    let mut pending = next_member(path, &mut members)?;
    let mut sig = None;
    if let Some((e, name, size)) = pending.take() {
        if name == SIGNATURE {
            sig = Some(read_small(path, e, &name, size, MAX_SIGNATURE_BYTES)?);
        } else {
            pending = Some((e, name, size));
        }
    }
    let verdict = accept(&manifest, &manifest_bytes, sig.as_deref())?;

    // 3. Every other member: listed, once, exactly its declared size, streamed and hashed.
    let mut expected: BTreeMap<String, FileDigest> = manifest.members();
    loop {
        let (mut e, name, size) = match pending.take() {
            Some(p) => p,
            None => match next_member(path, &mut members)? {
                Some(p) => p,
                None => break,
            },
        };
        let Some(want) = expected.remove(&name) else {
            let reason = if name == MANIFEST || name == SIGNATURE {
                "appears twice, or not at the start of the bundle".to_string()
            } else {
                "is not in the manifest, or appears twice".to_string()
            };
            return Err(refuse(name.as_bytes(), reason));
        };
        if size != want.bytes {
            return Err(refuse(
                name.as_bytes(),
                format!("is {size} bytes, the manifest declares {}", want.bytes),
            ));
        }
        let mut out: Box<dyn Write> = match stage {
            Some(dir) => {
                let target = dir.join(&name);
                let parent = target.parent().expect("member has a folder");
                fs::create_dir_all(parent).map_err(|source| BundleError::Io {
                    action: "create folder",
                    path: parent.to_path_buf(),
                    source,
                })?;
                Box::new(fsx::create_new(&target)?)
            }
            None => Box::new(io::sink()),
        };
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut left = size;
        let mut src = (&mut e).take(size);
        while left > 0 {
            let n = src.read(&mut buf).map_err(damaged)?;
            if n == 0 {
                return Err(BundleError::Damaged {
                    path: path.to_path_buf(),
                    reason: format!("member {name} ends early"),
                });
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|source| BundleError::Io {
                action: "write",
                path: stage.unwrap_or(path).join(&name),
                source,
            })?;
            left -= n as u64;
        }
        out.flush().map_err(|source| BundleError::Io {
            action: "write",
            path: stage.unwrap_or(path).join(&name),
            source,
        })?;
        if hex::encode(hasher.finalize()) != want.sha256 {
            return Err(invalid(format!(
                "{name} does not match its sha256 in the manifest"
            )));
        }
    }
    if let Some(name) = expected.keys().next() {
        return Err(invalid(format!(
            "{name} is in the manifest but not in the bundle"
        )));
    }
    Ok((manifest, verdict))
}
