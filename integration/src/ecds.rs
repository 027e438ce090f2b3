//! The filters' configs served through Envoy's extension config discovery (ECDS), as istiod
//! pushes WasmPlugin changes to running sidecars, from files in the format of
//! [`mesh_deploy::ecds`] (which the demo's `mesh-push` writes too). Envoy applies or rejects
//! each version, counted in its `extension_config_discovery.<name>.config_reload` /
//! `config_fail` stats ([`Applied`]).
//!
//! Modules named by a pushed config are copied into the directory first: it is mounted into a
//! container at its own path, so a config names them by the same path on both backends.

use std::fs;
use std::path::{Path, PathBuf};

use mesh_deploy::ecds;
use serde_json::Value;

/// The directory of the pushed configs and modules.
#[derive(Debug)]
pub struct Discovery {
    dir: tempfile::TempDir,
    version: u64,
}

impl Discovery {
    pub fn new() -> Result<Self, crate::envoy::StartError> {
        let dir = crate::backend::scratch_dir()?;
        Ok(Self { dir, version: 0 })
    }

    /// The directory: what a container must mount at the same path.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The listener's filter entry for `name`: its config comes from [`Self::push`]'s file.
    pub fn filter(&self, name: &str) -> Value {
        ecds::discovered_filter(self.dir(), name)
    }

    /// `wasm` copied into the directory (a distinct name per content, so a new build of a
    /// module is a new file): the path a pushed config names.
    pub fn module(&self, wasm: &Path) -> std::io::Result<PathBuf> {
        let bytes = fs::read(wasm)?;
        let stem = wasm.file_stem().unwrap_or_default().to_string_lossy();
        let path = self
            .dir()
            .join(format!("{stem}-{:016x}.wasm", fingerprint(&bytes)));
        if !path.is_file() {
            fs::write(&path, bytes)?;
        }
        Ok(path)
    }

    /// Writes `typed_config` (a Wasm filter's, as `envoy::wasm_filter` makes it) as the next
    /// version of `name`'s config.
    pub fn push(&mut self, name: &str, typed_config: &Value) -> Result<(), String> {
        self.version += 1;
        ecds::push(self.dir(), name, self.version, typed_config)
    }
}

/// FNV-1a of the module's bytes: tells builds apart in a file name.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Envoy's counts for one discovered config, from admin `/stats`: how many versions it
/// applied and rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    pub reloads: u64,
    pub failures: u64,
}

impl Applied {
    /// Reads them for `name` from the text of admin `/stats?filter=extension_config_discovery`.
    pub fn read(stats: &str, name: &str) -> Self {
        let mut applied = Self::default();
        for line in stats.lines() {
            let Some((stat, value)) = line.rsplit_once(": ") else {
                continue;
            };
            let value = value.trim().parse().unwrap_or(0);
            if !stat.contains(&format!(".{name}.")) {
                continue;
            }
            if stat.ends_with(".config_reload") {
                applied.reloads += value;
            } else if stat.ends_with(".config_fail") {
                applied.failures += value;
            }
        }
        applied
    }
}
