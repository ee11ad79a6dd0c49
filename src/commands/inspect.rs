//! `strata inspect X... [--json | -f TEMPLATE]`: images (by name, id or digest) or else
//! containers, as a JSON array like `docker inspect`, or one line each from a template.

use std::process::ExitCode;

use anyhow::bail;
use strata_store::{Error, Image, Store};

use super::Globals;
use crate::cli::InspectArgs;

pub fn run(globals: &Globals, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let _ = args.json; // JSON is the default; the flag is accepted like on other lists
    let store = Store::open(&globals.root)?;
    if let Some(template) = &args.format {
        parse_template(template)?; // a bad template fails before anything is printed
    }
    let mut values = Vec::new();
    let status = crate::commands::for_each_arg(&args.targets, |target| {
        values.push(describe(&store, target)?);
        Ok(())
    });
    match &args.format {
        Some(template) => {
            for value in &values {
                println!("{}", render(template, value)?);
            }
        }
        None => println!("{}", serde_json::to_string_pretty(&serde_json::Value::Array(values))?),
    }
    Ok(status)
}

/// An image, else a container.
fn describe(store: &Store, target: &str) -> anyhow::Result<serde_json::Value> {
    match store.resolve(target) {
        Ok(image) => image_json(store, &image),
        Err(Error::ImageNotFound(_)) => match store.container(target) {
            Ok(container) => {
                let mut state = serde_json::to_value(&container.state)?;
                // where docker has it: `-f '{{.State.Health.Status}}'`
                if let Some(health) = crate::commands::run::health::read(&container.dir) {
                    state["State"] = serde_json::json!({ "Health": health });
                }
                Ok(state)
            }
            Err(Error::ContainerNotFound(_)) => bail!("no such image or container: {target}"),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// One piece of a template: text as is, or a field (`{{.A.B}}`, `{{json .A.B}}`).
enum Piece<'a> {
    Text(&'a str),
    Field { path: Vec<&'a str>, json: bool },
}

fn parse_template(template: &str) -> anyhow::Result<Vec<Piece<'_>>> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        pieces.push(Piece::Text(&rest[..open]));
        let Some(close) = rest[open..].find("}}") else {
            bail!("template {template:?}: {{{{ without }}}}");
        };
        let action = rest[open + 2..open + close].trim();
        let (json, field) = match action.strip_prefix("json ") {
            Some(field) => (true, field.trim()),
            None => (false, action),
        };
        let Some(path) = field.strip_prefix('.') else {
            bail!("template {template:?}: {{{{{action}}}}} is not supported; use {{{{.Path.To.Field}}}} or {{{{json .Path}}}}");
        };
        pieces.push(Piece::Field { path: path.split('.').filter(|p| !p.is_empty()).collect(), json });
        rest = &rest[open + close + 2..];
    }
    pieces.push(Piece::Text(rest));
    Ok(pieces)
}

/// `template` filled from `value`: strings as they are, other values as JSON, a missing
/// field as `<no value>` (Go's).
fn render(template: &str, value: &serde_json::Value) -> anyhow::Result<String> {
    let mut out = String::new();
    for piece in parse_template(template)? {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Field { path, json } => {
                let found = path.iter().try_fold(value, |v, key| v.get(key));
                match (found, json) {
                    (None, _) => out.push_str("<no value>"),
                    (Some(serde_json::Value::String(text)), false) => out.push_str(text),
                    (Some(v), _) => out.push_str(&serde_json::to_string(v)?),
                }
            }
        }
    }
    Ok(out)
}

fn image_json(store: &Store, image: &Image) -> anyhow::Result<serde_json::Value> {
    // The config blob as stored: oci-spec's types drop fields docker images carry
    // (Healthcheck, OnBuild, Shell), and inspect must show what the image really says.
    let config: serde_json::Value = serde_json::from_slice(&store.read_blob(&image.id)?)
        .map_err(|e| anyhow::anyhow!("config blob {} is not valid json: {e}", image.id))?;
    Ok(serde_json::json!({
        "Id": image.id,
        "RepoTags": image.names.iter().filter(|n| !n.contains('@')).collect::<Vec<_>>(),
        "RepoDigests": image.names.iter().filter(|n| n.contains('@')).collect::<Vec<_>>(),
        "ManifestDigest": image.manifest_digest,
        "Created": config.get("created"),
        "Architecture": config.get("architecture"),
        "Os": config.get("os"),
        "Config": config.get("config"),
        "RootFS": config.get("rootfs"),
        "History": config.get("history"),
        "Size": image.size(),
        "Manifest": serde_json::to_value(&image.manifest)?,
        "Layout": store.oci_dir(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_take_fields_and_json() {
        let value = serde_json::json!({"Id": "sha256:x", "Config": {"Env": ["A=1"], "User": ""}});
        assert_eq!(render("{{.Id}} {{json .Config.Env}} {{ .Config.User }}.", &value).unwrap(), "sha256:x [\"A=1\"] .");
        assert_eq!(render("{{.Nope}}", &value).unwrap(), "<no value>");
        assert!(parse_template("{{range .Config.Env}}").is_err());
        assert!(parse_template("{{.Id").is_err());
    }
}
