//! `strata inspect X [--json]`: an image (by name, id or digest) or else a container, as
//! a JSON array with one object, like `docker inspect`.

use std::process::ExitCode;

use strata_store::{Error, Image, Store};

use super::Globals;
use crate::cli::InspectArgs;

pub fn run(globals: &Globals, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let _ = args.json; // inspect always prints JSON; the flag is accepted like on other lists
    let store = Store::open(&globals.root)?;
    let value = match store.resolve(&args.target) {
        Ok(image) => image_json(&store, &image)?,
        Err(Error::ImageNotFound(_)) => match store.container(&args.target) {
            Ok(container) => serde_json::to_value(&container.state)?,
            Err(Error::ContainerNotFound(_)) => anyhow::bail!("no such image or container: {}", args.target),
            Err(e) => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    println!("{}", serde_json::to_string_pretty(&serde_json::Value::Array(vec![value]))?);
    Ok(ExitCode::SUCCESS)
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
