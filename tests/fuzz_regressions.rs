//! Replays the fuzz targets' seeds and every case the fuzzer found
//! (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`) through the same checks,
//! so a fixed finding stays fixed without the fuzzer installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                panic!("{} breaks the {target} check", path.display());
            }
            n += 1;
        }
    }
    n
}

#[test]
fn sse_cases() {
    assert!(replay("sse", checks::sse) > 0, "no seeds");
}

#[test]
fn body_cases() {
    assert!(replay("body", checks::body) > 0, "no seeds");
}

#[test]
fn header_cases() {
    assert!(replay("headers", checks::headers) > 0, "no seeds");
}
