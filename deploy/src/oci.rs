//! Wasm modules as OCI images Istio pulls, written to an OCI image layout without a registry.
//!
//! The image is the "compat" variant of the Wasm image spec Istio's fetcher reads
//! (istio `pkg/wasm/imagefetcher.go`): a standard OCI image manifest whose last (here only)
//! layer is `application/vnd.oci.image.layer.v1.tar+gzip` holding `plugin.wasm`, annotated
//! `module.wasm.image/variant: compat`. Standard media types, so any registry and any OCI
//! tool (skopeo, crane, oras) copies it unchanged. (Istio's fetcher wants the other, "oci"
//! artifact variant with exactly two layers, a runtime config and the
//! `application/vnd.module.wasm.content.layer.v1+wasm` module; one layer is not enough.)
//!
//! Every byte is deterministic: tar entry with mode 0644, owner 0, mtime 0; gzip without
//! name or time; JSON from structs in a fixed field order. The same module gives the same
//! manifest digest on every machine, so a WasmPlugin's `sha256` can be pinned in git.
//!
//! Under Istio, `sha256` of an `oci://` URL is the **manifest digest** (istiod compares it
//! with the pulled image's `img.Digest()`); of an `https://` URL, the module's own digest.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MODULE_FILE: &str = "plugin.wasm";
pub const VARIANT: (&str, &str) = ("module.wasm.image/variant", "compat");
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Lower-case hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
struct ImageConfig<'a> {
    architecture: &'a str,
    os: &'a str,
    config: BTreeMap<String, String>,
    rootfs: RootFs,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

/// The blobs of one image: manifest, config and layer, each with its digest.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
}

impl Image {
    /// The manifest digest, hex: what a WasmPlugin's `sha256` must be for this image.
    pub fn digest(&self) -> String {
        sha256_hex(&self.manifest)
    }
}

fn descriptor(media_type: &str, blob: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: format!("sha256:{}", sha256_hex(blob)),
        size: blob.len() as u64,
        annotations: BTreeMap::new(),
    }
}

fn json(value: &impl Serialize) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| e.to_string())
}

/// The compat image of a module. `title` names it (`org.opencontainers.image.title`).
pub fn image(wasm: &[u8], title: &str) -> Result<Image, String> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_path(MODULE_FILE).map_err(|e| e.to_string())?;
    header.set_size(wasm.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append(&header, wasm).map_err(|e| e.to_string())?;
    let tar = tar.into_inner().map_err(|e| e.to_string())?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&tar).map_err(|e| e.to_string())?;
    let layer = gz.finish().map_err(|e| e.to_string())?;
    let config = json(&ImageConfig {
        architecture: "wasm",
        os: "wasip1",
        config: BTreeMap::new(),
        rootfs: RootFs {
            kind: "layers",
            diff_ids: vec![format!("sha256:{}", sha256_hex(&tar))],
        },
    })?;
    let mut annotations = BTreeMap::new();
    annotations.insert(VARIANT.0.to_owned(), VARIANT.1.to_owned());
    annotations.insert(
        "org.opencontainers.image.title".to_owned(),
        title.to_owned(),
    );
    let manifest = json(&Manifest {
        schema_version: 2,
        media_type: MANIFEST.to_owned(),
        config: descriptor(CONFIG, &config),
        layers: vec![descriptor(LAYER, &layer)],
        annotations,
    })?;
    Ok(Image {
        manifest,
        config,
        layer,
    })
}

/// Writes `image` as the only image of the OCI layout `dir`, tagged `tag`. Whatever the
/// directory held is replaced. Returns the manifest digest (hex).
pub fn write_layout(dir: &Path, image: &Image, tag: &str) -> Result<String, String> {
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(io)?;
    }
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io)?;
    for blob in [&image.manifest, &image.config, &image.layer] {
        fs::write(blobs.join(sha256_hex(blob)), blob).map_err(io)?;
    }
    let mut manifest = descriptor(MANIFEST, &image.manifest);
    manifest
        .annotations
        .insert(REF_NAME.to_owned(), tag.to_owned());
    let index = json(&Index {
        schema_version: 2,
        media_type: INDEX.to_owned(),
        manifests: vec![manifest],
    })?;
    fs::write(dir.join("index.json"), index).map_err(io)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
    Ok(image.digest())
}

/// An image read back from a layout, every blob checked against its digest and size.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub tag: String,
    /// Manifest digest, hex.
    pub digest: String,
    pub manifest: Manifest,
    /// `plugin.wasm` from the last layer, as Istio extracts it.
    pub wasm: Vec<u8>,
}

fn blob(dir: &Path, d: &Descriptor) -> Result<Vec<u8>, String> {
    let hex = d
        .digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("{}: not a sha256 digest", d.digest))?;
    let path = dir.join("blobs").join("sha256").join(hex);
    let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if sha256_hex(&bytes) != hex || bytes.len() as u64 != d.size {
        return Err(format!(
            "{}: content does not match its digest or size",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Reads the image tagged `tag` (or the only one) from the OCI layout `dir`, the way Istio
/// reads a pulled compat image: the last layer, gunzipped, untarred, `plugin.wasm`.
pub fn read_layout(dir: &Path, tag: Option<&str>) -> Result<Pulled, String> {
    let path = dir.join("index.json");
    let text = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let index: Index =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let chosen: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|m| tag.is_none_or(|t| m.annotations.get(REF_NAME).map(String::as_str) == Some(t)))
        .collect();
    let [descriptor] = chosen.as_slice() else {
        return Err(format!(
            "{}: {} images{}, expected one",
            path.display(),
            chosen.len(),
            tag.map(|t| format!(" tagged {t}")).unwrap_or_default()
        ));
    };
    let bytes = blob(dir, descriptor)?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    blob(dir, &manifest.config)?;
    let last = manifest.layers.last().ok_or("the manifest has no layer")?;
    if last.media_type != LAYER {
        return Err(format!(
            "last layer is {}, expected {LAYER}",
            last.media_type
        ));
    }
    let layer = blob(dir, last)?;
    let mut archive = tar::Archive::new(GzDecoder::new(layer.as_slice()));
    let mut wasm = None;
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let is_module = entry
            .path()
            .map_err(|e| e.to_string())?
            .file_name()
            .is_some_and(|n| n == MODULE_FILE);
        if is_module {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
            wasm = Some(bytes);
            break;
        }
    }
    Ok(Pulled {
        tag: descriptor
            .annotations
            .get(REF_NAME)
            .cloned()
            .unwrap_or_default(),
        digest: sha256_hex(&bytes),
        manifest,
        wasm: wasm.ok_or_else(|| format!("no {MODULE_FILE} in the last layer"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WASM: &[u8] = b"\0asm\x01\0\0\0 pretend module";

    #[test]
    fn layout_round_trips_and_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let image = image(WASM, "traceid").unwrap();
        let digest = write_layout(dir.path(), &image, "0.1.0").unwrap();
        let pulled = read_layout(dir.path(), Some("0.1.0")).unwrap();
        assert_eq!(pulled.wasm, WASM);
        assert_eq!(pulled.digest, digest);
        assert_eq!(pulled.manifest.layers.len(), 1);
        assert_eq!(
            pulled
                .manifest
                .annotations
                .get(VARIANT.0)
                .map(String::as_str),
            Some("compat")
        );
        assert_eq!(self::image(WASM, "traceid").unwrap().digest(), digest);
        assert_ne!(
            self::image(b"\0asm\x01\0\0\0 other", "traceid")
                .unwrap()
                .digest(),
            digest
        );
        assert!(read_layout(dir.path(), Some("0.2.0")).is_err());
    }

    #[test]
    fn a_corrupted_blob_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let image = image(WASM, "x").unwrap();
        write_layout(dir.path(), &image, "1").unwrap();
        let layer = dir
            .path()
            .join("blobs/sha256")
            .join(sha256_hex(&image.layer));
        fs::write(&layer, b"garbage").unwrap();
        let err = read_layout(dir.path(), None).unwrap_err();
        assert!(err.contains("does not match its digest"), "{err}");
    }
}
