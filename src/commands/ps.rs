//! `strata ps [-a] [--json]`: the store's containers, docker-style. A container whose
//! state says running but whose process is gone (its `strata run` was killed) shows as
//! exited.

use std::process::ExitCode;

use strata_store::{Container, Status, Store, time};

use crate::cli::PsArgs;
use crate::commands::Globals;
use crate::commands::run::is_running;

fn status_text(container: &Container) -> String {
    match container.state.status {
        Status::Created => "Created".to_string(),
        Status::Running if is_running(container) => "Up".to_string(),
        Status::Running => "Exited (unknown)".to_string(),
        Status::Exited => format!("Exited ({})", container.state.exit_code.unwrap_or(-1)),
    }
}

fn status_word(container: &Container) -> &'static str {
    match container.state.status {
        Status::Created => "created",
        Status::Running if is_running(container) => "running",
        _ => "exited",
    }
}

pub fn run(globals: &Globals, args: PsArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    let mut containers: Vec<Container> = store
        .containers()?
        .into_iter()
        .filter(|c| args.all || is_running(c))
        .collect();
    containers.sort_by(|a, b| b.state.created.cmp(&a.state.created).then(a.id.cmp(&b.id)));
    if args.json {
        let list: Vec<serde_json::Value> = containers
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id,
                    "name": c.state.name,
                    "image": c.state.image,
                    "command": c.state.command,
                    "status": status_word(c),
                    "exit_code": c.state.exit_code,
                    "created": c.state.created,
                    "pid": if is_running(c) { c.state.pid } else { None },
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = time::now();
    println!(
        "{:<14}{:<24}{:<24}{:<24}{:<20}NAMES",
        "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS"
    );
    for c in &containers {
        let mut command = format!("\"{}\"", c.state.command.join(" "));
        if command.chars().count() > 22 {
            command = format!("{}…\"", command.chars().take(20).collect::<String>());
        }
        let created = time::parse_rfc3339(&c.state.created)
            .map(|t| time::ago(t, now))
            .unwrap_or_default();
        println!(
            "{:<14}{:<24}{:<24}{:<24}{:<20}{}",
            &c.id[..12],
            c.state.image.as_deref().unwrap_or("-"),
            command,
            created,
            status_text(c),
            c.state.name
        );
    }
    Ok(ExitCode::SUCCESS)
}
