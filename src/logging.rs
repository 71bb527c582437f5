//! Log setup: one `tracing` subscriber, on stderr, for our events, pingora's `log` output and
//! access logs.
//!
//! pingora logs some client-caused failures at ERROR level: every failed TLS handshake (a port
//! scanner's junk ClientHello), every connection broken while its request header was read.
//! Anyone on the internet could flood the log with them, so [`ClientNoise`] keeps them out and
//! counts them ([`suppressed_client_errors`], exported as a metric); `RUST_LOG=debug` shows
//! client failures of our own making.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Client-caused error lines from pingora kept out of the log, since start.
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// How many client-caused pingora error lines were kept out of the log.
pub fn suppressed_client_errors() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level;
/// `EDGECACHE_LOG_FORMAT=json` switches to one JSON object per line. Colours only on a
/// terminal: journald and log files get plain text.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        // Origin health changes are logged by the health checker with the site's name; pingora's
        // own line for each (`... becomes unhealthy`) would say it twice.
        .unwrap_or_else(|_| EnvFilter::new("info,pingora_cache::meta=error,pingora_load_balancing=error"));
    let json = std::env::var("EDGECACHE_LOG_FORMAT").is_ok_and(|f| f == "json");
    let format = tracing_subscriber::fmt::layer()
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let format: Box<dyn Layer<_> + Send + Sync> = if json {
        Box::new(format.json())
    } else {
        Box::new(format)
    };
    let result = tracing_subscriber::registry()
        .with(ClientNoise)
        .with(filter)
        .with(format)
        .try_init();
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
}

/// Drops (and counts) pingora's ERROR lines about failures a client caused.
pub struct ClientNoise;

impl<S: Subscriber> Layer<S> for ClientNoise {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        if *event.metadata().level() != Level::ERROR {
            return true;
        }
        // pingora logs through `log`: the bridged event carries the real target as a field.
        let mut message = Message::default();
        event.record(&mut message);
        if message.target.starts_with("pingora") && is_client_noise(&message.text) {
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// A pingora error message about a client's failure, not the server's.
pub fn is_client_noise(message: &str) -> bool {
    message.starts_with("Downstream handshake")
        || (message.starts_with("Fail to proxy") && message.contains("Downstream"))
        || message.starts_with("H2 handshake error")
}

/// The `message` and `log.target` fields of an event.
#[derive(Default)]
struct Message {
    text: String,
    target: String,
}

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.text = value.to_string(),
            "log.target" => self.target = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.text = format!("{value:?}"),
            "log.target" => self.target = format!("{value:?}"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_failures_are_noise_and_server_failures_are_not() {
        assert!(is_client_noise(
            "Downstream handshake error from 127.0.0.1:5000: TLSHandshakeFailure"
        ));
        assert!(is_client_noise("Downstream handshake timeout"));
        assert!(is_client_noise(
            "Fail to proxy: Downstream ReadError context: while reading request headers"
        ));
        assert!(!is_client_noise("Accept() failed Too many open files"));
        assert!(!is_client_noise("Fail to proxy: Upstream ConnectRefused"));
    }
}
