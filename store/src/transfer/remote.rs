//! Registry transfers. Push: HEAD the manifest (the same one already there: done), HEAD
//! each blob, mount it from another repository of the same
//! registry that we know holds it (`sources.json`), upload only what is still missing,
//! then PUT the manifest bytes with their own media type. Pull: fetch the manifest (or the
//! index, then the manifest for the platform), download the missing blobs in parallel
//! straight into the store's blob writer, which verifies each digest before the blob
//! becomes visible, then store the manifest bytes under the reference's name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::{Descriptor, LocalImage, ManifestDoc, TransferOptions, select_platform};
use crate::Digest;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::layout::Store;
use crate::registry::{self, BlobSource, Client, Reference, media};

/// Which repositories (`registry/repo`) are known to hold a blob: every repository we pushed
/// it to or pulled it from. A hint for cross-repository mounts, kept in `<root>/sources.json`.
pub struct BlobSources {
    path: std::path::PathBuf,
    map: Mutex<BTreeMap<Digest, BTreeSet<String>>>,
}

impl BlobSources {
    pub fn load(store: &Store) -> BlobSources {
        let path = store.root().join("sources.json");
        // A missing or damaged hint file only costs mounts: start empty.
        let map = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        BlobSources {
            path,
            map: Mutex::new(map),
        }
    }

    /// Repositories of `registry` other than `except` that hold `digest`.
    pub fn repositories(&self, digest: &Digest, registry: &str, except: &str) -> Vec<String> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let prefix = format!("{registry}/");
        map.get(digest)
            .into_iter()
            .flatten()
            .filter_map(|r| r.strip_prefix(&prefix))
            .filter(|r| *r != except)
            .map(str::to_string)
            .collect()
    }

    pub fn record(
        &self,
        digests: impl IntoIterator<Item = Digest>,
        registry: &str,
        repository: &str,
    ) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for digest in digests {
            map.entry(digest)
                .or_default()
                .insert(format!("{registry}/{repository}"));
        }
    }

    pub fn save(&self, store: &Store) -> Result<()> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = serde_json::to_vec(&*map).unwrap_or_default();
        store.write_atomic(&self.path, &bytes)
    }
}

/// Runs `f` over `items` on up to `jobs` threads; the first error stops the rest.
fn parallel<T: Sync>(items: &[T], jobs: usize, f: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    if let Err(e) = f(item) {
                        failed.store(true, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Pushes a local image to `reference`; returns the manifest digest.
pub fn push_to_registry(
    store: &Store,
    image: &LocalImage,
    reference: &Reference,
    opts: &TransferOptions<'_>,
) -> Result<Digest> {
    let client = Client::new(reference.api_host(), opts.client.clone())?;
    let repo = reference.repository.as_str();
    if let Some(digest) = reference.digest
        && digest != image.manifest_digest
    {
        return Err(Error::Distribution {
            what: reference.to_string(),
            message: format!(
                "the image's manifest is {}, not the digest named",
                image.manifest_digest
            ),
        });
    }
    let sources = BlobSources::load(store);
    let blobs: Vec<&Descriptor> = image.doc.blobs().collect();
    let target = reference.reference();
    // A registry only accepts a manifest whose blobs it holds, so the same manifest already
    // under this tag means there is nothing to do: one HEAD instead of one per blob.
    if let Some((digest, _, _)) = client.manifest_exists(repo, &target)?
        && digest == image.manifest_digest
    {
        for blob in &blobs {
            opts.progress.end(&blob.digest, "exists");
        }
        return Ok(image.manifest_digest);
    }
    parallel(&blobs, opts.jobs, |blob| {
        let digest = &blob.digest;
        if client.blob_exists(repo, digest)?.is_some() {
            opts.progress.end(digest, "exists");
            return Ok(());
        }
        // A mount from another repository saves the upload; it is optional to the registry,
        // which may refuse or fail it. Three tries at most, as docker makes, then upload.
        for from in sources
            .repositories(digest, &reference.registry, repo)
            .into_iter()
            .take(3)
        {
            match client.mount_blob(repo, digest, &from) {
                Ok(true) => {
                    opts.progress.end(digest, &format!("mounted from {from}"));
                    return Ok(());
                }
                Ok(false) => {}
                Err(err) => tracing::debug!(%digest, %from, "blob mount failed, uploading: {err}"),
            }
        }
        let path = image.blob_path(digest);
        let size = std::fs::metadata(&path)
            .map_err(|e| Error::io("failed to read blob", &path, e))?
            .len();
        opts.progress.begin(digest, size, "push");
        let advance = |n: u64| opts.progress.advance(digest, n);
        if let Err(err) =
            client.upload_blob(repo, digest, size, BlobSource::File(&path), Some(&advance))
        {
            // A registry that refuses a blob (DIGEST_INVALID) may be right: the local copy
            // may be corrupt, and that is the error to give.
            let actual =
                std::fs::File::open(&path).and_then(|mut file| Digest::of_reader(&mut file));
            if let Ok(actual) = actual
                && actual != *digest
            {
                return Err(Error::DigestMismatch {
                    expected: *digest,
                    actual,
                });
            }
            return Err(err);
        }
        opts.progress.end(digest, "done");
        Ok(())
    })?;
    client.put_manifest(repo, &target, &image.manifest, &image.media_type)?;
    sources.record(blobs.iter().map(|b| b.digest), &reference.registry, repo);
    sources.save(store)?;
    Ok(image.manifest_digest)
}

/// Pulls `reference` into the store.
pub(crate) fn pull_from_registry(
    store: &Store,
    reference: &Reference,
    opts: &TransferOptions<'_>,
) -> Result<Image> {
    let client = Client::new(reference.api_host(), opts.client.clone())?;
    let repo = reference.repository.as_str();
    let what = reference.to_string();
    let mut raw = client.fetch_manifest(repo, &reference.reference())?;
    // What the tag names in the registry (an index, for a multi-platform image): the repo
    // digest docker records, so `{{index .RepoDigests 0}}` pins what was pulled.
    let repo_digest = Digest::of(&raw.bytes);
    if media::is_index(&raw.media_type) {
        let index = ManifestDoc::parse(&raw.bytes, &what)?;
        let chosen = select_platform(&index, &opts.platform, &what)?;
        raw = client.fetch_manifest(repo, &chosen.digest.to_string())?;
    }
    let doc = ManifestDoc::parse(&raw.bytes, &what)?;
    if !media::is_manifest(&raw.media_type) || doc.config.is_none() {
        return Err(Error::Distribution {
            what,
            message: format!("unsupported manifest media type {:?}", raw.media_type),
        });
    }
    doc.check_layers(&what)?;
    fetch_blobs(store, &client, repo, &doc.blobs().collect::<Vec<_>>(), opts)?;
    let sources = BlobSources::load(store);
    sources.record(doc.blobs().map(|b| b.digest), &reference.registry, repo);
    sources.save(store)?;
    // Named by the tag pulled, and `repo@sha256:..` as docker records a repo digest (by
    // digest, that is the only name).
    let mut names = vec![reference.name()];
    if reference.digest.is_none() {
        names.push(format!(
            "{}/{}@{repo_digest}",
            reference.registry, reference.repository
        ));
    }
    store.put_manifest_raw(&raw.bytes, &names)
}

/// Downloads the blobs the store lacks, in parallel, each verified before it is stored.
pub(crate) fn fetch_blobs(
    store: &Store,
    client: &Client,
    repo: &str,
    blobs: &[&Descriptor],
    opts: &TransferOptions<'_>,
) -> Result<()> {
    let missing: Vec<&Descriptor> = blobs
        .iter()
        .copied()
        .filter(|b| {
            // A blob of the wrong size (cut short by a crash or damaged) is fetched again;
            // the verified copy replaces it.
            let present = std::fs::metadata(store.blob_path(&b.digest))
                .is_ok_and(|meta| meta.is_file() && meta.len() == b.size);
            if present {
                opts.progress.end(&b.digest, "exists");
            }
            !present
        })
        .collect();
    parallel(&missing, opts.jobs, |blob| {
        let digest = &blob.digest;
        opts.progress.begin(digest, blob.size, "pull");
        let mut writer = store.blob_writer()?;
        let advance = |n: u64| opts.progress.advance(digest, n);
        // The blob writer hashes what it stores; commit refuses a mismatch and keeps nothing.
        // A mismatch is then the registry's doing, not the store's: named by its URL.
        let size = client.fetch_blob(
            repo,
            digest,
            Some(blob.size),
            &mut writer,
            false,
            Some(&advance),
        )?;
        writer.commit(Some(digest)).map_err(|err| match err {
            Error::DigestMismatch { expected, actual } => registry::wrong_blob(
                client.blob_url(repo, digest),
                expected,
                actual,
                size,
                Some(blob.size),
            ),
            err => err,
        })?;
        if size != blob.size {
            tracing::warn!(%digest, expected = blob.size, actual = size, "blob size differs from its descriptor");
        }
        opts.progress.end(digest, "done");
        Ok(())
    })
}
