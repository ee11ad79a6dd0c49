//! `strata diff CONTAINER` lists what a container changed (its upper against its image's
//! layers); `strata diff IMAGE IMAGE` compares two images. Docker's `A|C|D /path` lines,
//! sorted, or `--json`.

use std::process::ExitCode;

use anyhow::Context;
use strata_store::Store;
use strata_store::diff::{self, Change};

use crate::cli::DiffArgs;
use crate::commands::Globals;

/// A container's changes against its image.
pub fn container_changes(store: &Store, reference: &str) -> anyhow::Result<Vec<Change>> {
    let container = store.container(reference)?;
    let lowers = match container.state.image_id {
        Some(id) => store.layer_dirs(&store.resolve(&id.to_string())?)?,
        None => Vec::new(),
    };
    // A copy-up the union's server is still finishing would show with holes.
    strata_unionfs::finish_copy_ups(
        &container.upper_dir(),
        &container.work_dir(),
        std::time::Duration::from_secs(600),
    )?;
    diff::upper_changes(&container.upper_dir(), &lowers)
        .with_context(|| format!("failed to diff container {}", container.state.name))
}

pub fn run(globals: &Globals, args: DiffArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    let changes = match args.args.as_slice() {
        [container] => match container_changes(&store, container) {
            Err(_) if store.container(container).is_err() && store.resolve(container).is_ok() => {
                anyhow::bail!(
                    "{container} is an image, not a container: `strata diff IMAGE IMAGE` compares two images"
                )
            }
            result => result?,
        },
        [a, b] => diff::image_changes(&store, &store.resolve(a)?, &store.resolve(b)?)?,
        _ => anyhow::bail!("usage: strata diff CONTAINER | strata diff IMAGE IMAGE"),
    };
    if args.json {
        let list: Vec<serde_json::Value> = changes
            .iter()
            .map(|c| serde_json::json!({"kind": c.kind.letter().to_string(), "path": c.path}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        let out: String = changes.iter().map(|change| format!("{change}\n")).collect();
        print!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}
