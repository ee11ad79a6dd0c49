//! `strata inspect X... [--json | -f TEMPLATE]`: images (by name, id or digest) or else
//! containers, as a JSON array like `docker inspect`, or one line each from a template.

use std::process::ExitCode;

use anyhow::bail;
use std::path::Path;

use strata_store::{Error, Image, Store};

use super::Globals;
use crate::cli::InspectArgs;
use crate::commands::run::volumes::{self, Volume};
use crate::template::Template;

pub fn run(globals: &Globals, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let _ = args.json; // JSON is the default; the flag is accepted like on other lists
    let store = Store::open(&globals.root)?;
    // A bad template fails before anything is printed.
    let template = args.format.as_deref().map(Template::parse).transpose()?;
    let mut values = Vec::new();
    let status = crate::commands::for_each_arg(&args.targets, |target| {
        values.push(describe(&store, &globals.root, target)?);
        Ok(())
    });
    match &template {
        Some(template) => {
            for value in &mut values {
                typed_empties(value);
                println!("{}", template.render(value)?);
            }
        }
        None => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Array(values))?
        ),
    }
    Ok(status)
}

/// An image, else a container.
fn describe(store: &Store, root: &Path, target: &str) -> anyhow::Result<serde_json::Value> {
    match store.resolve(target) {
        Ok(image) => image_json(store, &image),
        Err(Error::ImageNotFound(_)) => match store.container(target) {
            Ok(container) => container_json(&container, &root.join("volumes")),
            Err(Error::ContainerNotFound(_)) => bail!("no such image or container: {target}"),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// A container in docker's shape, for the templates scripts use (`{{.State.Status}}`,
/// `{{.State.Pid}}`, `{{.Name}}`, `{{.Config.Env}}`, `{{(index .Mounts 0).Source}}`), with
/// strata's own record under `Strata`. `named`: where named volumes live.
fn container_json(
    container: &strata_store::Container,
    named: &Path,
) -> anyhow::Result<serde_json::Value> {
    let state = &container.state;
    let raw = serde_json::to_value(state)?;
    let config = &state.config;
    // A record left saying running by a run that could not save the exit (a full disk)
    // or was killed: its process is gone, as `ps` says.
    let gone = state.status == strata_store::container::Status::Running
        && !crate::commands::run::is_running(container);
    let status = if gone {
        serde_json::json!("exited")
    } else {
        raw["status"].clone()
    };
    // docker's zero time for a container not started or not ended
    let time = |t: &Option<String>| t.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into());
    let mut json = serde_json::json!({
        "Id": state.id,
        "Created": state.created,
        "Path": state.command.first(),
        "Args": state.command.get(1..).unwrap_or_default(),
        "State": {
            "Status": status,
            "Running": status == "running",
            "Paused": false,
            "Restarting": false,
            "OOMKilled": state.oom_killed,
            "Dead": false,
            "Pid": if gone { 0 } else { state.pid.unwrap_or(0) },
            "ExitCode": state.exit_code.unwrap_or(0),
            "Error": state.error.clone().unwrap_or_default(),
            "StartedAt": time(&state.started),
            "FinishedAt": time(&state.finished),
        },
        "Image": state.image_id.as_ref().map(|d| d.to_string()),
        "Name": format!("/{}", state.name),
        "Driver": state.driver,
        "Config": {
            "Hostname": config.get("hostname"),
            "User": config.get("user"),
            "Env": config.get("env"),
            "Cmd": state.command,
            "Image": state.image,
            "WorkingDir": config.get("cwd"),
            "Tty": config.get("tty"),
            "OpenStdin": config.get("interactive"),
        },
        "HostConfig": {
            "NetworkMode": config.get("network"),
            "AutoRemove": config.get("rm"),
            "ReadonlyRootfs": config.get("read_only"),
            "Privileged": config.get("privileged").unwrap_or(&false.into()),
            "CapAdd": config.get("cap_add"),
            "CapDrop": config.get("cap_drop"),
            "Memory": config.get("memory").filter(|m| !m.is_null()).unwrap_or(&0.into()),
            "PidsLimit": config.get("pids_limit"),
            "Init": config.get("init"),
        },
        "Mounts": mounts(container, named)?,
        "Strata": raw,
    });
    // where docker has it: `-f '{{.State.Health.Status}}'`
    if let Some(health) = crate::commands::run::health::read(&container.dir) {
        json["State"]["Health"] = serde_json::to_value(health)?;
    }
    Ok(json)
}

/// The container's volumes as docker lists them in `Mounts`.
fn mounts(
    container: &strata_store::Container,
    named: &Path,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let volumes: Vec<Volume> = match container.state.config.get("volumes") {
        Some(list) => serde_json::from_value(list.clone())?,
        None => Vec::new(),
    };
    let mounts = volumes.iter().enumerate().map(|(index, volume)| {
        let source = volumes::source(&container.dir, named, index, volume);
        let mut mount = serde_json::json!({
            "Type": if volume.source.is_some() { "bind" } else { "volume" },
            "Source": source,
            "Destination": volume.target,
            "Mode": if volume.readonly { "ro" } else { "" },
            "RW": !volume.readonly,
            "Propagation": if volume.source.is_some() { "rprivate" } else { "" },
        });
        if let Some(name) = &volume.name {
            mount["Name"] = name.as_str().into();
            mount["Driver"] = "local".into();
        }
        mount
    });
    Ok(mounts.collect())
}

fn image_json(store: &Store, image: &Image) -> anyhow::Result<serde_json::Value> {
    // The config blob as stored: oci-spec's types drop fields docker images carry
    // (Healthcheck, OnBuild, Shell), and inspect must show what the image really says.
    let config: serde_json::Value = serde_json::from_slice(&store.read_blob(&image.id)?)
        .map_err(|e| anyhow::anyhow!("config blob {} is not valid json: {e}", image.id))?;
    let text = |key: &str| config.get(key).cloned().unwrap_or_else(|| "".into());
    let mut json = serde_json::json!({
        "Id": image.id,
        "RepoTags": image.names.iter().filter(|n| !n.contains('@')).collect::<Vec<_>>(),
        "RepoDigests": image.names.iter().filter(|n| n.contains('@')).collect::<Vec<_>>(),
        "Parent": "",
        "Comment": text("comment"),
        "Created": config.get("created"),
        "DockerVersion": text("docker_version"),
        "Author": text("author"),
        "Config": docker_config(config.get("config")),
        "Architecture": config.get("architecture"),
        "Os": config.get("os"),
        "Size": image.size(),
        "RootFS": {
            "Type": config["rootfs"]["type"],
            "Layers": config["rootfs"]["diff_ids"],
        },
        "History": config.get("history"),
        "ManifestDigest": image.manifest_digest,
        "Manifest": serde_json::to_value(&image.manifest)?,
        "Layout": store.oci_dir(),
    });
    if let Some(variant) = config.get("variant") {
        json["Variant"] = variant.clone();
    }
    Ok(json)
}

/// An image's `config` in the shape docker's image inspect gives it (API 1.43's
/// `Config`): every field, its zero value where the image has none.
fn docker_config(config: Option<&serde_json::Value>) -> serde_json::Value {
    let mut out = serde_json::json!({
        "Hostname": "",
        "Domainname": "",
        "User": "",
        "AttachStdin": false,
        "AttachStdout": false,
        "AttachStderr": false,
        "Tty": false,
        "OpenStdin": false,
        "StdinOnce": false,
        "Env": null,
        "Cmd": null,
        "Image": "",
        "Volumes": null,
        "WorkingDir": "",
        "Entrypoint": null,
        "OnBuild": null,
        "Labels": null,
    });
    if let Some(serde_json::Value::Object(fields)) = config {
        for (key, value) in fields {
            out[key] = value.clone();
        }
    }
    out
}

/// docker's templates run on Go structs, where a list or map the JSON shows as null is
/// an empty one of its type: `{{.Config.Cmd}}` prints `[]`, `{{.Config.Labels}}`
/// `map[]`. Templates get those empties here; only `{{json}}` of one then differs from
/// docker (`[]` or `{}` for `null`).
fn typed_empties(value: &mut serde_json::Value) {
    const LISTS: [&str; 5] = ["Env", "Cmd", "Entrypoint", "OnBuild", "Shell"];
    const MAPS: [&str; 3] = ["Labels", "Volumes", "ExposedPorts"];
    let Some(config) = value.get_mut("Config").and_then(|c| c.as_object_mut()) else {
        return;
    };
    for (keys, empty) in [
        (&LISTS[..], serde_json::json!([])),
        (&MAPS[..], serde_json::json!({})),
    ] {
        for key in keys {
            let field = config.entry(*key).or_insert(serde_json::Value::Null);
            if field.is_null() {
                *field = empty.clone();
            }
        }
    }
}
