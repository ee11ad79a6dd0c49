//! `strata history IMAGE`: the config's history, newest first, with each layer's size
//! (IMAGE CREATED CREATED BY SIZE COMMENT, like `docker history`; `-q`, `--no-trunc`,
//! `--human=false`, `--json`).

use std::process::ExitCode;

use strata_store::{Store, time};

use super::Globals;
use super::images::{human_size, print_table};
use crate::cli::HistoryArgs;

pub fn run(globals: &Globals, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    let image = store.resolve(&args.image)?;
    let history = image.config.history().clone().unwrap_or_default();
    let mut layer_sizes = image.manifest.layers().iter().map(|l| l.size());
    let mut rows = Vec::new();
    for entry in &history {
        let size = if entry.empty_layer() == Some(true) {
            0
        } else {
            layer_sizes.next().unwrap_or(0)
        };
        rows.push((entry, size));
    }
    let top = super::images::shown_id(&image, args.no_trunc);
    // newest first; only the top row is an image here (docker shows <missing> below it)
    let ids = (0..rows.len()).map(|i| {
        if i == 0 {
            top.clone()
        } else {
            "<missing>".into()
        }
    });
    if args.quiet {
        for id in ids {
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        // whole ids, as in the other JSON lists
        let full = (0..rows.len()).map(|i| (i == 0).then(|| image.id.to_string()));
        let list: Vec<serde_json::Value> = rows
            .iter()
            .rev()
            .zip(full)
            .map(|((entry, size), id)| {
                serde_json::json!({
                    "Id": id.unwrap_or_else(|| "<missing>".into()), "Created": entry.created(), "CreatedBy": entry.created_by(),
                    "Comment": entry.comment(), "EmptyLayer": entry.empty_layer().unwrap_or(false),
                    "Size": size,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = time::now();
    let mut table = vec![[
        "IMAGE".to_string(),
        if args.human { "CREATED" } else { "CREATED AT" }.into(),
        "CREATED BY".into(),
        "SIZE".into(),
        "COMMENT".into(),
    ]];
    for ((entry, size), id) in rows.iter().rev().zip(ids) {
        let created = entry.created().clone().unwrap_or_default();
        let created = if args.human {
            time::parse_rfc3339(&created)
                .map(|t| time::ago(t, now))
                .unwrap_or_default()
        } else {
            created
        };
        let mut created_by = entry
            .created_by()
            .clone()
            .unwrap_or_default()
            .replace('\n', " ");
        if created_by.chars().count() > 45 && !args.no_trunc {
            created_by = created_by.chars().take(44).collect::<String>() + "…";
        }
        table.push([
            id,
            created,
            created_by,
            if args.human {
                human_size(*size)
            } else {
                size.to_string()
            },
            entry.comment().clone().unwrap_or_default(),
        ]);
    }
    print_table(&table);
    Ok(ExitCode::SUCCESS)
}
