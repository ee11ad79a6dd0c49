//! The image a stage is building: its layers, its runtime config (Docker's `config`
//! object, which carries Healthcheck, OnBuild and Shell that the OCI struct lacks), its
//! history, and the cache key of its last step. At the end it becomes a config blob and a
//! manifest, both canonical JSON, so equal inputs give equal digests.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use strata_store::{Digest, Image, LayerBlob, Store, time};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Empty {}

/// Docker's health check config (durations in nanoseconds).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// The image config's `config` object (image-spec `config.md` plus Docker's extras).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_build: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shell: Vec<String>,
}

impl RunConfig {
    pub fn set_env(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self
            .env
            .iter_mut()
            .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
        {
            Some(existing) => *existing = entry,
            None => self.env.push(entry),
        }
    }

    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.clone(), String::new()),
            })
            .collect()
    }

    /// The shell for shell-form commands (SHELL, else `/bin/sh -c`).
    pub fn shell(&self) -> Vec<String> {
        if self.shell.is_empty() {
            vec!["/bin/sh".into(), "-c".into()]
        } else {
            self.shell.clone()
        }
    }
}

/// A stage's image while it is being built.
#[derive(Debug, Clone)]
pub struct ImageState {
    /// Bottom first.
    pub layers: Vec<LayerBlob>,
    /// Unpacked dirs for `layers` where already known (bottom first).
    pub dirs: Vec<Option<PathBuf>>,
    pub config: RunConfig,
    pub history: Vec<Value>,
    /// The base config's other fields (architecture, os, variant, ...).
    pub base: serde_json::Map<String, Value>,
    /// Cache key of the last step (the chain continues from here).
    pub key: Digest,
    /// `created` of the last step, seconds since the epoch.
    pub created: i64,
}

impl ImageState {
    pub fn scratch(key: Digest) -> ImageState {
        let mut base = serde_json::Map::new();
        base.insert("architecture".into(), json!(host_arch()));
        base.insert("os".into(), json!("linux"));
        ImageState {
            layers: Vec::new(),
            dirs: Vec::new(),
            config: RunConfig::default(),
            history: Vec::new(),
            base,
            key,
            created: 0,
        }
    }

    /// Starts from an image of the store, reading its config blob as written (so fields
    /// the OCI struct does not know, like Healthcheck, survive).
    pub fn from_image(store: &Store, image: &Image, key: Digest) -> Result<ImageState> {
        let bytes = store.read_blob(&image.id)?;
        let mut raw: serde_json::Map<String, Value> =
            serde_json::from_slice(&bytes).map_err(|e| {
                Error::Other(format!("image config {} is not valid JSON: {e}", image.id))
            })?;
        let config: RunConfig = match raw.remove("config") {
            Some(Value::Null) | None => RunConfig::default(),
            Some(value) => serde_json::from_value(value)
                .map_err(|e| Error::Other(format!("image config {}: {e}", image.id)))?,
        };
        let history = match raw.remove("history") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        let created = raw
            .get("created")
            .and_then(Value::as_str)
            .and_then(time::parse_rfc3339)
            .unwrap_or(0);
        raw.remove("rootfs");
        raw.remove("created");
        let layers: Vec<LayerBlob> = image
            .manifest
            .layers()
            .iter()
            .zip(image.diff_ids()?)
            .map(|(descriptor, diff_id)| LayerBlob {
                descriptor: descriptor.clone(),
                diff_id,
            })
            .collect();
        let dirs = vec![None; layers.len()];
        Ok(ImageState {
            layers,
            dirs,
            config,
            history,
            base: raw,
            key,
            created,
        })
    }

    /// Unpacked layer dirs, top first (mount order), unpacking what is not yet.
    pub fn lowers(&mut self, store: &Store) -> Result<Vec<PathBuf>> {
        for (index, layer) in self.layers.iter().enumerate() {
            if self.dirs[index].is_none() {
                self.dirs[index] = Some(store.unpacked_layer(&layer.descriptor, &layer.diff_id)?);
            }
        }
        Ok(self.dirs.iter().rev().flatten().cloned().collect())
    }

    pub fn push_history(&mut self, created: i64, created_by: &str, empty_layer: bool) {
        let mut entry = serde_json::Map::new();
        entry.insert("created".into(), json!(time::format_rfc3339(created)));
        entry.insert("created_by".into(), json!(created_by));
        entry.insert("comment".into(), json!("strata build"));
        if empty_layer {
            entry.insert("empty_layer".into(), json!(true));
        }
        self.history.push(Value::Object(entry));
        self.created = self.created.max(created);
    }

    /// Writes the config and manifest and names the image.
    pub fn commit(&self, store: &Store, names: &[String]) -> Result<Image> {
        let mut config = self.base.clone();
        config.insert("created".into(), json!(time::format_rfc3339(self.created)));
        config.insert(
            "config".into(),
            serde_json::to_value(&self.config).map_err(|e| Error::Other(e.to_string()))?,
        );
        let diff_ids: Vec<String> = self.layers.iter().map(|l| l.diff_id.to_string()).collect();
        config.insert(
            "rootfs".into(),
            json!({"type": "layers", "diff_ids": diff_ids}),
        );
        config.insert("history".into(), Value::Array(self.history.clone()));
        let config_bytes =
            strata_store::json::to_canonical(&Value::Object(config), "image config")?;
        let (config_digest, config_size) = store.put_blob(&config_bytes)?;
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| serde_json::to_value(&l.descriptor).unwrap_or(Value::Null))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest.to_string(),
                "size": config_size,
            },
            "layers": layers,
        });
        let manifest_bytes = strata_store::json::to_canonical(&manifest, "image manifest")?;
        Ok(store.put_manifest_raw(&manifest_bytes, names)?)
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}
