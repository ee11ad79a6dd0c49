//! The build driver: Buildfile -> stages reachable from the target -> steps, each looked
//! up in the cache by key and executed only on a miss -> an image in the store.
//!
//! Stages run in dependency waves: every stage whose dependencies are built runs at the
//! same time as the others of its wave, on its own thread.

pub(crate) mod archive;
mod copy;
mod state;
mod step;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use strata_store::{Image, Store};

pub use state::{HealthConfig, ImageState, RunConfig};

use crate::cache::{CacheSink, CacheSource};
use crate::context::{Context, Ignore};
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::progress::{Progress, Silent};
use crate::stages::{self, Buildfile, Scope};

/// What to build and how.
#[derive(Clone)]
pub struct BuildOptions {
    /// The Buildfile (`-f`); errors name it as given.
    pub buildfile: PathBuf,
    /// What errors call the Buildfile instead of its path (`stdin` for one read from it, its
    /// path inside a fetched context).
    pub buildfile_name: Option<String>,
    /// The build context directory.
    pub context: PathBuf,
    /// `-t NAME[:TAG]`, repeatable.
    pub tags: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: bool,
    /// Timestamps of executed steps (else the clock); cached steps keep theirs.
    pub source_date_epoch: Option<i64>,
    pub progress: Arc<dyn Progress>,
    /// `--cache-from`: consulted on a local miss.
    pub cache_from: Vec<Arc<dyn CacheSource>>,
    /// `--cache-to`: told about every entry of the build.
    pub cache_to: Vec<Arc<dyn CacheSink>>,
    /// Finds the images FROM, `COPY --from` and `RUN --mount=from=` name (the binary
    /// pulls what the store lacks); `None` = the store only.
    pub images: Option<Arc<dyn ImageSource>>,
    /// `--secret id=ID,...`: what `RUN --mount=type=secret,id=ID` gets.
    pub secrets: BTreeMap<String, Secret>,
    /// `--ssh ID=SOCKET`: the SSH agent sockets `RUN --mount=type=ssh,id=ID` gets.
    pub ssh: BTreeMap<String, PathBuf>,
    /// A signal number once the build is to stop (the caller's signal handler sets it, and
    /// an executor whose RUN a signal killed): no step starts after it, and the build
    /// fails with [`Error::Cancelled`].
    pub cancel: Arc<std::sync::atomic::AtomicUsize>,
}

/// Where a build secret's value comes from; read when a RUN needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    File(PathBuf),
    Env(String),
}

impl Secret {
    pub fn value(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Secret::File(path) => std::fs::read(path),
            Secret::Env(name) => std::env::var_os(name)
                .map(std::os::unix::ffi::OsStringExt::into_vec)
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("environment variable {name} is not set"),
                    )
                }),
        }
    }
}

/// Where images named in a Buildfile come from.
pub trait ImageSource: Send + Sync {
    fn image(&self, store: &Store, reference: &str) -> strata_store::Result<Image>;
}

/// Resolves `reference` through `opts.images`, else the store.
pub(crate) fn find_image(
    store: &Store,
    opts: &BuildOptions,
    reference: &str,
) -> strata_store::Result<Image> {
    match &opts.images {
        Some(source) => source.image(store, reference),
        None => store.resolve(reference),
    }
}

impl BuildOptions {
    pub fn new(context: impl Into<PathBuf>, buildfile: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            buildfile: buildfile.into(),
            buildfile_name: None,
            context: context.into(),
            tags: Vec::new(),
            build_args: BTreeMap::new(),
            secrets: BTreeMap::new(),
            ssh: BTreeMap::new(),
            target: None,
            no_cache: false,
            source_date_epoch: None,
            progress: Arc::new(Silent),
            cache_from: Vec::new(),
            cache_to: Vec::new(),
            images: None,
            cancel: Arc::default(),
        }
    }

    /// [`Error::Cancelled`] once `cancel` is set.
    pub fn check_cancelled(&self) -> Result<()> {
        check_cancelled(&self.cancel)
    }
}

/// [`Error::Cancelled`] once `cancel` (a [`BuildOptions::cancel`]) holds a signal number.
pub fn check_cancelled(cancel: &std::sync::atomic::AtomicUsize) -> Result<()> {
    match cancel.load(std::sync::atomic::Ordering::SeqCst) {
        0 => Ok(()),
        signal => Err(Error::Cancelled(signal as i32)),
    }
}

/// Everything the steps of every stage share.
pub(crate) struct BuildCx<'a> {
    pub store: &'a Store,
    pub executor: &'a dyn Executor,
    pub opts: &'a BuildOptions,
    pub buildfile: &'a Buildfile,
    pub meta: Scope,
    pub context: Context,
    /// ARGs declared by the ONBUILD triggers of base images: they consume build args too.
    pub trigger_args: std::sync::Mutex<Vec<String>>,
}

/// Builds the image and names it with `opts.tags`.
pub fn build(store: &Store, executor: &dyn Executor, opts: &BuildOptions) -> Result<Image> {
    let file = opts
        .buildfile_name
        .clone()
        .unwrap_or_else(|| opts.buildfile.display().to_string());
    let text = std::fs::read_to_string(&opts.buildfile)
        .map_err(|e| Error::io("failed to read Buildfile", &file, e))?;
    let buildfile = stages::load(&text, &file)?;
    let meta = buildfile.meta_scope(&opts.build_args)?;
    let target = buildfile.target(opts.target.as_deref())?;
    let order = buildfile.reachable(target, &meta, &opts.build_args)?;
    let ignore = Ignore::load(&opts.context, &opts.buildfile)?;
    let context = Context::scan(&opts.context, ignore)?;
    let cx = BuildCx {
        store,
        executor,
        opts,
        buildfile: &buildfile,
        meta,
        context,
        trigger_args: Default::default(),
    };

    let mut deps: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &index in &order {
        deps.insert(
            index,
            buildfile.dependencies(&buildfile.stages[index], &cx.meta, &opts.build_args)?,
        );
    }
    let mut done: Vec<Option<ImageState>> = vec![None; buildfile.stages.len()];
    let mut remaining = order;
    while !remaining.is_empty() {
        let ready: Vec<usize> = remaining
            .iter()
            .copied()
            .filter(|i| deps[i].iter().all(|d| done[*d].is_some()))
            .collect();
        if ready.is_empty() {
            return Err(Error::Other(format!(
                "{file}: stages {remaining:?} depend on each other"
            )));
        }
        let built: Vec<(usize, Result<ImageState>)> = if ready.len() == 1 {
            vec![(ready[0], step::build_stage(&cx, ready[0], &done))]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = ready
                    .iter()
                    .map(|&index| {
                        let cx = &cx;
                        let done = &done;
                        (
                            index,
                            scope.spawn(move || step::build_stage(cx, index, done)),
                        )
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|(index, handle)| {
                        (
                            index,
                            handle.join().unwrap_or_else(|_| {
                                Err(Error::Other(format!("stage {index} panicked")))
                            }),
                        )
                    })
                    .collect()
            })
        };
        for (index, result) in built {
            done[index] = Some(result?);
        }
        remaining.retain(|i| !ready.contains(i));
    }
    let trigger_args = cx.trigger_args.lock().unwrap_or_else(|e| e.into_inner());
    let declared: Vec<&str> = buildfile
        .meta_args
        .iter()
        .map(|(_, decl)| decl.name.as_str())
        .chain(trigger_args.iter().map(String::as_str))
        .chain(
            buildfile
                .stages
                .iter()
                .flat_map(|stage| stage.steps.iter())
                .flat_map(|step| match &step.instruction {
                    crate::instructions::Instruction::Arg(decls) => {
                        decls.iter().map(|d| d.name.as_str()).collect()
                    }
                    _ => Vec::new(),
                }),
        )
        .collect();
    let unused: Vec<&str> = opts
        .build_args
        .keys()
        .map(String::as_str)
        // SOURCE_DATE_EPOCH is the builder's own (BuildKit's), consumed by dating the image
        .filter(|key| {
            !declared.contains(key)
                && !step::PROXY_ARGS.contains(key)
                && !crate::stages::AUTOMATIC_ARGS.contains(key)
                && *key != "SOURCE_DATE_EPOCH"
        })
        .collect();
    if !unused.is_empty() {
        opts.progress.note(&format!(
            "warning: build args not consumed by {file}: {}",
            unused.join(", ")
        ));
    }
    let mut final_state = done[target]
        .take()
        .ok_or_else(|| Error::Other("target stage was not built".into()))?;
    if let Some(epoch) = opts.source_date_epoch {
        // reproducible-builds.org: the image is dated SOURCE_DATE_EPOCH, whatever the base
        final_state.created = epoch;
    }
    opts.progress.note("writing image");
    final_state.commit(store, &opts.tags)
}

/// Where `RUN --mount=type=cache` directories live: `<root>/cache/mounts/<id-hash>`.
pub fn cache_mount_dir(store: &Store, id: &str) -> PathBuf {
    store
        .root()
        .join("cache")
        .join("mounts")
        .join(&strata_store::Digest::of(id.as_bytes()).hex()[..32])
}

pub(crate) fn is_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}
