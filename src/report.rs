//! How errors reach the user: `error: <message>: <cause>: <cause>` on stderr.
//!
//! Some library errors already spell their cause in their own message (thiserror's
//! `{source}` in the format string) and also expose it as `source()`. Printing the chain
//! naively would say the cause twice, so a cause whose text the message already ends
//! with is skipped.

/// The one-line form of an error and its cause chain.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Prints `error: ...` to stderr.
pub fn print_error(err: &anyhow::Error) {
    eprintln!("error: {}", error_line(err));
}

/// The libraries' log records as strata prints its own: `warning: <message>`.
pub struct Plain;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Plain
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            _ => "debug",
        };
        write!(writer, "{level}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading config.json: {source}")]
    struct Repeats {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let err = anyhow::Error::new(Repeats {
            source: std::io::Error::other("disk full"),
        })
        .context("importing busybox:latest");
        assert_eq!(
            error_line(&err),
            "importing busybox:latest: reading config.json: disk full"
        );
    }

    #[test]
    fn distinct_causes_are_all_shown() {
        let err = anyhow::anyhow!("disk full")
            .context("writing blob")
            .context("importing x");
        assert_eq!(error_line(&err), "importing x: writing blob: disk full");
    }
}
