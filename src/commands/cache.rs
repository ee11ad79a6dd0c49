//! `strata build --cache-from SPEC` / `--cache-to SPEC`: adapters between the builder's
//! cache hooks (`CacheSource`, `CacheSink`) and the store's cache export/import
//! (`strata_store::transfer::cache`). Sources are opened before the build (entries are
//! read eagerly, layers fetched on a hit); sinks collect the keys of the build and write
//! the export once it is done (`finish`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use strata_builder::cache::{CacheSink, CacheSource};
use strata_store::refs::descriptor_digest;
use strata_store::transfer::cache::{self, CacheImport, CacheSpec};
use strata_store::{CacheEntry, Digest, Image, Store};

use super::transfer::client_options;

/// One `--cache-from`, as given.
pub struct CacheFrom {
    import: CacheImport,
    text: String,
}

impl CacheSource for CacheFrom {
    /// An entry whose layer cannot be had (missing from the cache, corrupt, gone from the
    /// registry) is a miss: the step runs, and a `--cache-to` of the same place mends it.
    fn fetch(&self, store: &Store, key: &Digest) -> strata_store::Result<Option<CacheEntry>> {
        match self.import.get(store, key) {
            Err(err) => {
                eprintln!(
                    "warning: --cache-from {}: {err}; running the step instead",
                    self.text
                );
                Ok(None)
            }
            found => found,
        }
    }
}

/// One `--cache-to`: remembers every entry the build wrote or reused.
pub struct CacheTo {
    spec: CacheSpec,
    insecure: bool,
    seen: Mutex<Vec<(Digest, Option<Digest>)>>,
}

impl CacheSink for CacheTo {
    fn export(&self, _store: &Store, key: &Digest, entry: &CacheEntry) -> strata_store::Result<()> {
        let layer = entry
            .layer
            .as_ref()
            .and_then(|l| descriptor_digest(&l.descriptor).ok());
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((*key, layer));
        Ok(())
    }
}

impl CacheTo {
    /// Writes the export. `mode=min` keeps the entries whose layer is in the final image
    /// (and those without a layer); `mode=max` keeps every stage's.
    pub fn finish(&self, store: &Store, image: &Image) -> anyhow::Result<usize> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let layers: HashSet<Digest> = image
            .manifest
            .layers()
            .iter()
            .filter_map(|l| descriptor_digest(l).ok())
            .collect();
        let all: Vec<Digest> = seen.iter().map(|(k, _)| *k).collect();
        let final_keys: Vec<Digest> = seen
            .iter()
            .filter(|(_, layer)| layer.is_none_or(|d| layers.contains(&d)))
            .map(|(k, _)| *k)
            .collect();
        let count = cache::export(
            store,
            &self.spec,
            &all,
            &final_keys,
            &client_options(self.insecure),
        )
        .with_context(|| format!("cache export to {:?} failed", self.spec))?;
        Ok(count)
    }
}

/// Opens every `--cache-from`. As with BuildKit a cache is best effort: one that cannot be
/// read (a registry that is down) is skipped with a warning, and an empty or missing one
/// is said so, so that a mistyped reference does not go unnoticed. A malformed spec is an
/// error.
pub fn sources(
    store: &Store,
    specs: &[String],
    insecure: bool,
) -> anyhow::Result<Vec<Arc<dyn CacheSource>>> {
    let mut out: Vec<Arc<dyn CacheSource>> = Vec::new();
    for text in specs {
        let spec = CacheSpec::parse(text)?;
        let import = match CacheImport::open(store, &spec, &client_options(insecure)) {
            Ok(import) => import,
            Err(err) => {
                eprintln!("warning: --cache-from {text}: {err}; building without it");
                continue;
            }
        };
        if import.is_empty() {
            eprintln!("note: --cache-from {text}: no cache there yet");
        }
        tracing::info!(entries = import.len(), "cache import from {text}");
        out.push(Arc::new(CacheFrom {
            import,
            text: text.clone(),
        }));
    }
    Ok(out)
}

/// Parses every `--cache-to`; call `finish` on each after the build.
pub fn sinks(specs: &[String], insecure: bool) -> anyhow::Result<Vec<Arc<CacheTo>>> {
    specs
        .iter()
        .map(|text| {
            let spec = CacheSpec::parse(text)?;
            Ok(Arc::new(CacheTo {
                spec,
                insecure,
                seen: Mutex::new(Vec::new()),
            }))
        })
        .collect()
}
