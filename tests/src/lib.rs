//! Helpers for mmrl's workspace-level end-to-end tests.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().unwrap_or(dir).to_path_buf()
}

/// The cargo profile the running test binary was built with, so nested builds reuse the same artifacts.
pub fn current_profile() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile dir>/deps/<test binary>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str());
    match dir {
        Some("release") => "release".to_owned(),
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    }
}
