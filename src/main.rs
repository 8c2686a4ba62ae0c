//! The `warren` binary: parse the command line, load the configuration, hand over to the library.

use clap::Parser;
use warren::cli::{Cli, Command};
use warren::config::Config;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    warren::telemetry::init(config.log_format);
    match cli.command {
        Command::Serve => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("warren").build()?;
            rt.block_on(async {
                let app = warren::App::build(config).await?;
                app.run_until_stopped().await
            })
        }
        cmd => warren::cli::run_admin(cmd, &config),
    }
}
