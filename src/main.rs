//! The `edgecache` command: load the config, build the server, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use edgecache::config::Config;
use pingora::server::configuration::Opt;

/// jemalloc: the hit path allocates per request (the system allocator costs about 16 % more
/// instructions per cache hit), and jemalloc gives memory back under compressible load, where
/// mimalloc kept freed compression buffers until resident memory reached 70 times `max_memory`
/// (the soak test, 4 MiB cache: 290 MiB peak with mimalloc, 61 MiB with jemalloc).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A caching reverse proxy and edge CDN node.
#[derive(Parser, Debug)]
#[command(name = "edgecache", version, about)]
#[command(mut_arg("conf", |arg| arg.hide(true)))]
#[command(mut_arg("upgrade", |arg| arg.help("Take over the listening sockets of the running instance (zero-downtime upgrade; then send it SIGQUIT)")))]
#[command(mut_arg("daemon", |arg| arg.help("Run in the background (set server.pid_file to find it)")))]
#[command(mut_arg("test", |arg| arg.hide(true)))]
struct Cli {
    /// Config file (TOML). Without it, the built-in default config runs: the proxy on
    /// 127.0.0.1:8080 in front of a demo origin (the admin commands read /etc/edgecache/edgecache.toml).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,

    /// Ask the running node instead of starting one (through the admin API of the config file).
    #[command(subcommand)]
    command: Option<AdminCommand>,

    /// Validate the config, print the first error with its file, line and key, and exit.
    #[arg(long)]
    check: bool,

    #[command(flatten)]
    pingora: Opt,
}

/// Commands for a running node, through its admin API.
#[derive(clap::Subcommand, Debug)]
enum AdminCommand {
    /// Show the running node: cache, sites and origins, cluster.
    Status {
        /// Print the admin API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Purge stored responses (on every node of a cluster): a URL, or --prefix, --host, --tag.
    Purge {
        /// The URL to purge (`https://example.com/a.css`; without a scheme, http and https).
        url: Option<String>,
        /// Every URL starting with this (`https://example.com/static/`).
        #[arg(long, conflicts_with = "url")]
        prefix: Option<String>,
        /// Every URL of this host.
        #[arg(long, conflicts_with_all = ["url", "prefix"])]
        host: Option<String>,
        /// Every response tagged so (`Surrogate-Key`, `Cache-Tag`).
        #[arg(long, conflicts_with_all = ["url", "prefix", "host"])]
        tag: Option<String>,
        /// Mark stale instead of deleting (the next request revalidates).
        #[arg(long)]
        soft: bool,
        /// Print the admin API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-read the config file on the running node (like SIGHUP).
    Reload {
        /// Print the admin API's JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where the admin commands look for the config without `--config`.
const DEFAULT_CONFIG_PATH: &str = "/etc/edgecache/edgecache.toml";

/// Runs an admin command against the node the config file describes.
fn run_admin_command(config: Option<&std::path::Path>, command: &AdminCommand) -> ExitCode {
    use edgecache::admin_client::{self, Command};
    let path = config.unwrap_or(std::path::Path::new(DEFAULT_CONFIG_PATH));
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("edgecache: {e}");
            return ExitCode::from(2);
        }
    };
    let (request, json) = match command {
        AdminCommand::Status { json } => (Command::Status, *json),
        AdminCommand::Reload { json } => (Command::Reload, *json),
        AdminCommand::Purge {
            url,
            prefix,
            host,
            tag,
            soft,
            json,
        } => {
            let target = [("url", url), ("prefix", prefix), ("host", host), ("tag", tag)]
                .into_iter()
                .find_map(|(kind, value)| value.as_ref().map(|v| (kind, v)));
            let Some((kind, value)) = target else {
                eprintln!("edgecache: purge what? give a URL, or --prefix, --host or --tag");
                return ExitCode::from(2);
            };
            (
                Command::Purge(serde_json::json!({ kind: value, "soft": soft })),
                *json,
            )
        }
    };
    match admin_client::run(&config, &request, json) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("edgecache: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> Result<Config, edgecache::config::ConfigError> {
    match &cli.config {
        Some(path) => Config::load(path),
        None => Config::built_in(),
    }
}

/// Fails when a listen address is taken. pingora would retry binding for 30 s (to wait for an
/// old process during an upgrade); outside an upgrade a taken port is a mistake to report now.
fn check_listen_addresses_free(config: &Config) -> Result<(), String> {
    let addresses = config.server.listen.iter().chain(&config.server.listen_tls);
    let admin = config.admin.as_ref().map(|a| a.listen);
    for addr in addresses.chain(config.demo_listen.iter()).chain(admin.iter()) {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(format!("cannot listen on {addr}: {e}"));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if cli.pingora.conf.is_some() || cli.pingora.test {
        eprintln!(
            "edgecache: -c/--conf and -t/--test are not edgecache options: use --config FILE (and --check)"
        );
        return ExitCode::from(2);
    }
    if let Some(command) = &cli.command {
        return run_admin_command(cli.config.as_deref(), command);
    }
    // A daemon changes its working directory: keep the config reachable for reloads.
    cli.config = cli.config.map(|path| path.canonicalize().unwrap_or(path));
    let config = match load(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("edgecache: invalid config: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!(
            "{}: config is valid ({} sites)",
            config.source.display(),
            config.sites.len()
        );
        return ExitCode::SUCCESS;
    }
    if !cli.pingora.upgrade {
        if let Err(e) = check_listen_addresses_free(&config) {
            eprintln!("edgecache: {e}");
            return ExitCode::FAILURE;
        }
    }
    edgecache::logging::init();
    let daemon = cli.pingora.daemon;
    let mut built = match edgecache::server::build(&config, Some(cli.pingora)) {
        Ok(built) => built,
        Err(e) => {
            eprintln!("edgecache: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(config = %config.source.display(), listen = ?config.server.listen, "edgecache starting");
    if config.demo_listen.is_some() && !daemon {
        edgecache::demo::show_caching(config.server.listen[0]);
    }
    built
        .server
        .add_service(pingora::services::background::background_service(
            "stop",
            built.stopper,
        ));
    built.server.run_forever()
}
