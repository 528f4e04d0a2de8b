//! What the trainer's tests share: where MNIST is, and the test-data generators of the
//! workspace's end-to-end tests (`tests/common/datagen.rs`, used here by path so both suites
//! test against the same files).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

#[path = "../../../../tests/common/datagen.rs"]
pub mod datagen;

/// Where MNIST lives: `CNND_DATA_DIR` (scripts/test.sh sets it), else ../shared/data beside
/// the repository.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CNND_DATA_DIR") {
        return PathBuf::from(d);
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    assert!(
        shared.join("mnist").exists(),
        "set CNND_DATA_DIR to a folder holding mnist/ (scripts/test.sh does)"
    );
    shared
}
