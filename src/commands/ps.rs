//! `strata ps [-a] [--json]`: the store's containers, docker-style. A container whose
//! state says running but whose process is gone (its `strata run` was killed) shows as
//! exited.

use std::process::ExitCode;

use strata_store::{Container, Status, Store, time};

use crate::cli::PsArgs;
use crate::commands::Globals;
use crate::commands::format::RowFormat;
use crate::commands::images::print_table;
use crate::commands::run::is_running;

/// docker's STATUS column: "Up 5 minutes", "Exited (0) 2 hours ago".
fn status_text(container: &Container, now: i64) -> String {
    let since = |when: &Option<String>| {
        when.as_deref()
            .and_then(time::parse_rfc3339)
            .map(|t| time::duration(now - t))
    };
    let state = &container.state;
    match state.status {
        Status::Created => "Created".to_string(),
        Status::Running if is_running(container) => {
            let up = match since(&state.started) {
                Some(up) => format!("Up {up}"),
                None => "Up".to_string(),
            };
            // (Probed by its runner: with the runner killed, nobody knows.)
            let probed = state.runner.is_some_and(crate::commands::run::alive);
            match crate::commands::run::health::read(&container.dir) {
                Some(_) if !probed => format!("{up} (health: unknown)"),
                Some(health) if health.status == "starting" => format!("{up} (health: starting)"),
                Some(health) => format!("{up} ({})", health.status),
                None => up,
            }
        }
        Status::Running => "Exited (unknown)".to_string(),
        Status::Exited => {
            let code = state.exit_code.unwrap_or(-1);
            match since(&state.finished) {
                Some(ago) => format!("Exited ({code}) {ago} ago"),
                None => format!("Exited ({code})"),
            }
        }
    }
}

fn status_word(container: &Container) -> &'static str {
    match container.state.status {
        Status::Created => "created",
        Status::Running if is_running(container) => "running",
        _ => "exited",
    }
}

/// The IMAGE a container shows: the name it was run from while that name still means its
/// image, else (the tag moved on, or went) the image's short id, as docker's `ps` does.
fn image_shown(store: &Store, c: &Container) -> String {
    let Some(id) = c.state.image_id else {
        return c.state.image.clone().unwrap_or_else(|| "-".into());
    };
    match &c.state.image {
        Some(name) if store.resolve(name).is_ok_and(|image| image.id == id) => name.clone(),
        _ => id.short(),
    }
}

/// A container as docker's `ps --format` shows it (its Go template's fields).
fn row(store: &Store, c: &Container, now: i64) -> serde_json::Value {
    let created = time::parse_rfc3339(&c.state.created);
    let labels = c
        .state
        .config
        .get("labels")
        .and_then(serde_json::Value::as_object)
        .map(|labels| {
            let mut pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            pairs.sort();
            pairs.join(",")
        })
        .unwrap_or_default();
    serde_json::json!({
        "ID": &c.id[..12],
        "Image": image_shown(store, c),
        "Command": format!("\"{}\"", c.state.command.join(" ")),
        "CreatedAt": created.map(docker_time).unwrap_or_default(),
        "RunningFor": created.map(|t| time::ago(t, now)).unwrap_or_default(),
        "Ports": "",
        "State": status_word(c),
        "Status": status_text(c, now),
        "Size": "",
        "Names": c.state.name,
        "Labels": labels,
        "Mounts": "",
        "Networks": c.state.config.get("network").and_then(serde_json::Value::as_str).unwrap_or("none"),
    })
}

/// docker's CreatedAt: `2026-11-30 09:00:00 +0000 UTC`.
pub(crate) fn docker_time(secs: i64) -> String {
    let text = time::format_rfc3339(secs);
    format!("{} {} +0000 UTC", &text[..10], &text[11..19])
}

pub fn run(globals: &Globals, args: PsArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    crate::commands::run::sweep_abandoned(&store);
    let mut containers: Vec<Container> = store
        .containers()?
        .into_iter()
        .filter(|c| args.all || is_running(c))
        .collect();
    containers.sort_by(|a, b| b.state.created.cmp(&a.state.created).then(a.id.cmp(&b.id)));
    let now = time::now();
    if let Some(format) = RowFormat::from_arg(args.format.as_deref())? {
        let header = serde_json::json!({
            "ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND",
            "CreatedAt": "CREATED AT", "RunningFor": "CREATED", "Ports": "PORTS",
            "State": "STATE", "Status": "STATUS", "Size": "SIZE", "Names": "NAMES",
            "Labels": "LABELS", "Mounts": "MOUNTS", "Networks": "NETWORKS",
        });
        let rows: Vec<serde_json::Value> = containers.iter().map(|c| row(&store, c, now)).collect();
        format.print(&header, &rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.quiet {
        for c in &containers {
            println!("{}", &c.id[..12]);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        let list: Vec<serde_json::Value> = containers
            .iter()
            .map(|c| {
                // podman's `ps --format json` keys, CamelCase as `images --json` has them.
                serde_json::json!({
                    "Id": c.id,
                    "Names": [c.state.name],
                    "Image": c.state.image,
                    "ImageID": c.state.image_id,
                    "Command": c.state.command,
                    "Created": c.state.created,
                    "State": status_word(c),
                    "Status": status_text(c, now),
                    "ExitCode": c.state.exit_code,
                    "Pid": if is_running(c) { c.state.pid } else { None },
                    "StartedAt": c.state.started,
                    "ExitedAt": c.state.finished,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![
        [
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "NAMES",
        ]
        .map(String::from),
    ];
    for c in &containers {
        let mut command = format!("\"{}\"", c.state.command.join(" "));
        if command.chars().count() > 22 {
            command = format!("{}…\"", command.chars().take(20).collect::<String>());
        }
        let created = time::parse_rfc3339(&c.state.created)
            .map(|t| time::ago(t, now))
            .unwrap_or_default();
        rows.push([
            c.id[..12].to_string(),
            image_shown(&store, c),
            command,
            created,
            status_text(c, now),
            c.state.name.clone(),
        ]);
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}
