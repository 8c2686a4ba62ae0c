//! Structured logs with `tracing`: human-readable text, or JSON when `WARREN_LOG_FORMAT=json`.
//! `RUST_LOG` filters as usual (default `info`). Colours only when stderr is a terminal, so
//! redirected logs carry no ANSI codes. The MCP SDK is held at `warn` whatever `RUST_LOG` says: at
//! debug it logs tool arguments, which are document content.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,tantivy=warn"));
    let filter = match "rmcp=warn".parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).try_init(),
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)).try_init(),
    };
}
