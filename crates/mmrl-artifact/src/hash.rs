//! Content hashing (blake3) of files and of artifact outputs.

use std::fs::File;
use std::path::Path;

use crate::error::{Result, io};

/// The blake3 hash (hex) and size in bytes of a file, read in a streaming pass.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let file = File::open(path).map_err(io("opening", path))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file).map_err(io("reading", path))?;
    let bytes = std::fs::metadata(path)
        .map_err(io("reading metadata of", path))?
        .len();
    Ok((hasher.finalize().to_hex().to_string(), bytes))
}

/// Combines named hashes into one, independent of the order they are given in.
///
/// Used for an artifact's `content_hash` (its outputs) and a folder's hash (its files).
pub fn combine<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut items: Vec<_> = items.into_iter().collect();
    items.sort_unstable();
    let mut hasher = blake3::Hasher::new();
    for (name, hash) in items {
        // Length-prefix the name so that ("ab", "c") and ("a", "bc") cannot collide.
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(hash.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// Hashes a byte slice (hex), for content-addressing samples and media.
pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The combined hash, total bytes and file count of every regular file under `dir`, by relative path.
///
/// Symbolic links are not followed: an artifact folder holds regular files only.
pub fn hash_dir(dir: &Path) -> Result<(String, u64, u64)> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    let mut hashed = Vec::with_capacity(files.len());
    let mut total = 0;
    for (rel, path) in &files {
        let (hash, bytes) = hash_file(path)?;
        total += bytes;
        hashed.push((rel.clone(), hash));
    }
    let combined = combine(hashed.iter().map(|(r, h)| (r.as_str(), h.as_str())));
    Ok((combined, total, files.len() as u64))
}

/// Total size in bytes of the regular files under `dir` (no hashing).
pub fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    let mut total = 0;
    for (_, path) in files {
        total += std::fs::metadata(&path)
            .map_err(io("reading metadata of", &path))?
            .len();
    }
    Ok(total)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, std::path::PathBuf)>) -> Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(io("listing", dir))?
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io("listing", dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(io("reading metadata of", &path))?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push((rel, path));
        }
    }
    Ok(())
}
