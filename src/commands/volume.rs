//! `strata volume ls [--json] | create NAME... | rm NAME...`: the named volumes of
//! `run -v NAME:/dir`, kept in `<root>/volumes/NAME` across containers, as docker's are.

use std::process::ExitCode;

use anyhow::{Context, bail};
use strata_store::Store;

use crate::cli::{VolumeArgs, VolumeCommand};
use crate::commands::Globals;
use crate::commands::images::print_table;
use crate::commands::run::{RunConfig, volumes::check_name};

pub fn run(globals: &Globals, args: VolumeArgs) -> anyhow::Result<ExitCode> {
    let dir = globals.root.join("volumes");
    match args.command {
        VolumeCommand::Ls { json } => {
            let mut names: Vec<String> = match std::fs::read_dir(&dir) {
                Ok(entries) => entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|name| check_name(name).is_ok() && !name.contains(".new-"))
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    return Err(e).with_context(|| format!("failed to list {}", dir.display()));
                }
            };
            names.sort();
            if json {
                let list: Vec<serde_json::Value> = names
                    .iter()
                    .map(|name| serde_json::json!({"Name": name, "Mountpoint": dir.join(name)}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let mut rows = vec![["VOLUME NAME".to_string()]];
                rows.extend(names.into_iter().map(|name| [name]));
                print_table(&rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Create { names } => Ok(crate::commands::for_each_arg(&names, |name| {
            check_name(name)?;
            let path = dir.join(name);
            std::fs::create_dir_all(&path)
                .with_context(|| format!("failed to create {}", path.display()))?;
            println!("{name}");
            Ok(())
        })),
        VolumeCommand::Rm { names } => {
            let store = Store::open(&globals.root)?;
            let containers = store.containers()?;
            Ok(crate::commands::for_each_arg(&names, |name| {
                check_name(name)?;
                let path = dir.join(name);
                if !path.is_dir() {
                    bail!("no such volume: {name}");
                }
                // docker refuses to remove a volume a container (running or not) uses
                let users: Vec<&str> = containers
                    .iter()
                    .filter(|c| {
                        RunConfig::of(c).is_ok_and(|config| {
                            config
                                .volumes
                                .iter()
                                .any(|v| v.name.as_deref() == Some(name))
                        })
                    })
                    .map(|c| c.state.name.as_str())
                    .collect();
                if !users.is_empty() {
                    bail!("volume {name} is in use by container {}", users.join(", "));
                }
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("failed to remove {}", path.display()))?;
                println!("{name}");
                Ok(())
            }))
        }
    }
}
