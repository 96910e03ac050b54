//! Fuzzes the streaming bundle reader (zstd, tar members, manifest, signature) with any bytes:
//! it must return an error or a validated manifest, never panic, and never allocate beyond its
//! caps. Nothing is written (no staging folder).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let r = flasheva::cache::bundle::reader::read(
        std::path::Path::new("fuzz"),
        std::io::Cursor::new(data),
        |_, manifest, sig| {
            if let Some(sig) = sig {
                let _ = flasheva::cache::bundle::keys::check_signature(manifest, sig);
            }
            Ok(())
        },
        None,
    );
    if let Ok((m, ())) = r {
        assert!(m.validate().is_ok());
    }
});
