//! `strata gc [--cache [AGE]] [--dangling]`: frees unreferenced blobs, unpacked layers and
//! tmp files, and says how much; optionally forgets the build cache and dangling images first.

use std::process::ExitCode;

use strata_store::Store;

use super::Globals;
use super::images::human_size;
use crate::cli::GcArgs;

/// `90s`, `30m`, `24h`, `7d` (a bare number is seconds).
fn parse_age(text: &str) -> anyhow::Result<std::time::Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if seconds > 0 => Ok(std::time::Duration::from_secs(n * seconds)),
        _ => anyhow::bail!("invalid age {text:?}: a number with s, m, h or d, as 24h"),
    }
}

pub fn run(globals: &Globals, args: GcArgs) -> anyhow::Result<ExitCode> {
    // Exclusive from the start: waits until no other strata process uses the store.
    let store = match Store::try_open_exclusive(&globals.root)? {
        Some(store) => store,
        None => {
            eprintln!(
                "waiting for other strata processes using {} to finish...",
                globals.root.display()
            );
            Store::open_exclusive(&globals.root)?
        }
    };
    // A stale FUSE mount (its daemon crashed) would keep gc from removing what is below it.
    strata_unionfs::sweep_stale(store.root())?;
    // Nothing runs in tmp/ while gc holds the store: a mount there was left by a killed
    // build, and emptying tmp/ must not delete through it (a bound cache directory).
    strata_unionfs::detach_all_below(&store.root().join("tmp"))?;
    crate::commands::run::sweep_abandoned(&store);
    // Empty cgroups a killed build left (its steps', of any store: they share the parent),
    // ten minutes old at least: one made a moment ago may be about to get its process.
    // Containers' cgroups are left to `rm`, which knows when their runner is done.
    let cgroups = strata_runtime::sweep_cgroups(std::time::Duration::from_secs(600), |name| {
        name.starts_with(super::build::BUILD_CGROUP_PREFIX)
    });
    if cgroups > 0 {
        tracing::debug!("removed {cgroups} empty cgroups left by killed processes");
    }
    let forgotten = match &args.cache {
        Some(age) => store.cache_prune(parse_age(age)?)?,
        None => 0,
    };
    let pruned = if args.dangling {
        store.prune_dangling()?
    } else {
        Vec::new()
    };
    // said now: should the sweep below fail, these are gone already
    if !args.json {
        for id in &pruned {
            println!("Deleted: {id}");
        }
    }
    let report = store.gc()?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["cache_entries"] = forgotten.into();
        value["images"] = serde_json::to_value(&pruned)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "freed {}: {} blobs, {} unpacked layers, {} tmp entries, {forgotten} cache entries",
            human_size(report.freed_bytes),
            report.blobs,
            report.layers,
            report.tmp
        );
    }
    Ok(ExitCode::SUCCESS)
}
