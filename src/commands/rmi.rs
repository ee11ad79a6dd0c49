//! `strata rmi [-f] IMAGE...`: removes a name, or by id every name of an image (with -f
//! when it has several, like docker). Blobs are freed by `strata gc`.

use std::process::ExitCode;

use strata_store::{Store, refs};

use super::Globals;
use crate::cli::RmiArgs;

pub fn run(globals: &Globals, args: RmiArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    // A `run --rm` container whose runner was killed no longer holds its image.
    crate::commands::run::sweep_abandoned(&store);
    Ok(crate::commands::for_each_arg(&args.images, |reference| {
        let image = match store.resolve(reference) {
            Ok(image) => image,
            // A name whose manifest or config is damaged or gone: the store removes the
            // name without reading the image.
            Err(
                strata_store::Error::BlobNotFound(_)
                | strata_store::Error::DigestMismatch { .. }
                | strata_store::Error::Json { .. },
            ) => {
                let removal = store.remove_image_report(reference, args.force)?;
                for name in removal.untagged {
                    println!("Untagged: {name}");
                }
                return Ok(());
            }
            // an unnamed damaged image, by the manifest digest gc gave
            Err(strata_store::Error::ImageNotFound(_))
                if reference.parse::<strata_store::Digest>().is_ok() =>
            {
                let removal = store.remove_image_report(reference, args.force)?;
                if let Some(digest) = removal.deleted {
                    println!("Deleted: {digest}");
                }
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        };
        let by_name = refs::normalize_ref(reference).is_ok_and(|name| {
            image
                .names
                .iter()
                .any(|n| *n == name || refs::familiar(n) == refs::familiar(&name))
        });
        if !by_name && image.names.len() > 1 && !args.force {
            anyhow::bail!(
                "image {} is named {}; remove the names one by one, or use -f",
                image.id.short(),
                image.names.join(", ")
            );
        }
        let removal = store.remove_image_report(reference, args.force)?;
        for name in removal.untagged {
            println!("Untagged: {name}");
        }
        if let Some(id) = removal.deleted {
            println!("Deleted: {id}");
        }
        Ok(())
    }))
}
