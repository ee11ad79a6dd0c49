//! `strata login REGISTRY -u USER (-p PASS | --password-stdin)`: checks the credentials
//! against the registry, then stores them where lookups read them: through the credential
//! helper the credentials file names for the registry (`credHelpers`, `credsStore`), else
//! in that file (`$REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`; atomically, mode 0600).

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, bail};
use strata_store::registry::{Client, Credentials, Reference, auth};

use super::Globals;
use super::transfer::client_options;
use crate::cli::LoginArgs;

/// `host[:port]` from what the user typed (a scheme or path is tolerated).
pub fn registry_host(text: &str) -> String {
    let text = text
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    text.split('/').next().unwrap_or(text).to_string()
}

pub fn run(_globals: &Globals, args: LoginArgs) -> anyhow::Result<ExitCode> {
    let registry = registry_host(&args.registry);
    let password = match (args.password, args.password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin are exclusive"),
        (Some(p), false) => p,
        (None, true) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("failed to read the password from stdin")?;
            text.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => bail!("give the password with --password-stdin (or -p)"),
    };
    let credentials = Credentials {
        username: args.username,
        password,
    };
    let api_host = Reference::parse(&format!("{registry}/x"))
        .map(|r| r.api_host().to_string())
        .unwrap_or(registry.clone());
    let mut options = client_options(args.insecure);
    options.credentials = Some(credentials.clone());
    Client::new(&api_host, options)?
        .ping()
        .with_context(|| format!("login to {registry} failed"))?;
    let stored = auth::Config::from_env().store(&registry, &credentials)?;
    eprintln!("Login Succeeded (credentials in {stored})");
    Ok(ExitCode::SUCCESS)
}
