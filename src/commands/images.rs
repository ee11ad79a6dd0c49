//! `strata images [--json]`: one row per name (REPOSITORY TAG IMAGE ID CREATED SIZE),
//! unnamed images as `<none>`, like `docker images`.

use std::process::ExitCode;

use strata_store::{Image, Store, refs, time};

use super::Globals;
use crate::cli::ImagesArgs;
use crate::commands::format::RowFormat;

pub fn run(globals: &Globals, args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    let mut images = store.images()?;
    if let Some(filter) = &args.filter {
        // `busybox` matches every tag of busybox; `busybox:1.36` only that name.
        let (repo, tag) = refs::split_name(filter);
        images.retain_mut(|image| {
            image.names.retain(|name| {
                let (r, t) = refs::split_name(name);
                r == repo && tag.is_none_or(|tag| Some(tag) == t)
            });
            !image.names.is_empty()
        });
    }
    if let Some(format) = RowFormat::from_arg(args.format.as_deref())? {
        let header = serde_json::json!({
            "ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST",
            "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE",
        });
        let now = time::now();
        let mut rows = Vec::new();
        for image in &images {
            let digest = image
                .names
                .iter()
                .find_map(|n| n.split_once('@').map(|(_, d)| d.to_string()))
                .unwrap_or_else(|| "<none>".into());
            let created = created(image);
            for (repo, tag) in table_names(image) {
                rows.push(serde_json::json!({
                    "ID": shown_id(image, args.no_trunc),
                    "Repository": repo,
                    "Tag": tag,
                    "Digest": digest,
                    "CreatedSince": created.map(|t| time::ago(t, now)).unwrap_or_else(|| "N/A".into()),
                    "CreatedAt": created.map(super::ps::docker_time).unwrap_or_default(),
                    "Size": human_size(image.size()),
                }));
            }
        }
        format.print(&header, &rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.quiet {
        let mut ids: Vec<String> = images
            .iter()
            .map(|image| shown_id(image, args.no_trunc))
            .collect();
        ids.dedup();
        for id in ids {
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        let list: Vec<serde_json::Value> = images.iter().map(summary).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = time::now();
    let mut rows = vec![[
        "REPOSITORY".to_string(),
        "TAG".into(),
        "IMAGE ID".into(),
        "CREATED".into(),
        "SIZE".into(),
    ]];
    for image in &images {
        let created = created(image)
            .map(|t| time::ago(t, now))
            .unwrap_or_else(|| "N/A".into());
        for (repo, tag) in table_names(image) {
            rows.push([
                repo,
                tag,
                shown_id(image, args.no_trunc),
                created.clone(),
                human_size(image.size()),
            ]);
        }
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

/// An image's id as the lists show it: 12 digits, or whole under `--no-trunc`.
pub fn shown_id(image: &Image, no_trunc: bool) -> String {
    if no_trunc {
        image.id.to_string()
    } else {
        image.id.short()
    }
}

/// (REPOSITORY, TAG) rows of an image: one per tag, whose row stands for its repo digest
/// too (docker's `images`); an image known only by digest is `repo <none>`, one without
/// a name `<none> <none>`.
fn table_names(image: &Image) -> Vec<(String, String)> {
    let tagged: Vec<&String> = image.names.iter().filter(|n| !n.contains('@')).collect();
    let shown: Vec<&String> = if tagged.is_empty() {
        image.names.iter().collect()
    } else {
        tagged
    };
    if shown.is_empty() {
        return vec![("<none>".into(), "<none>".into())];
    }
    shown
        .into_iter()
        .map(|n| {
            let (repo, tag) = refs::split_name(n);
            (repo.to_string(), tag.unwrap_or("<none>").to_string())
        })
        .collect()
}

/// The `--json` form of one image.
pub fn summary(image: &Image) -> serde_json::Value {
    serde_json::json!({
        "Id": image.id,
        "ManifestDigest": image.manifest_digest,
        "RepoTags": image.names.iter().filter(|n| !n.contains('@')).collect::<Vec<_>>(),
        "RepoDigests": image.names.iter().filter(|n| n.contains('@')).collect::<Vec<_>>(),
        "Created": image.config.created(),
        "Size": image.size(),
    })
}

/// The image's creation time, in epoch seconds.
pub fn created(image: &Image) -> Option<i64> {
    image
        .config
        .created()
        .as_deref()
        .and_then(time::parse_rfc3339)
}

/// Sizes the way docker prints them: decimal units, three significant digits.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let digits = if unit == 0 || value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{value:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}{}", UNITS[unit])
}

/// Left-aligned columns separated by three spaces (docker's tabwriter look).
pub fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_260_000), "4.26MB");
        assert_eq!(human_size(42_600_000), "42.6MB");
        assert_eq!(human_size(1_000_000), "1MB");
    }
}
