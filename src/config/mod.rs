//! Configuration: parse the TOML file, validate it, and freeze it into the runtime [`Config`].
//!
//! Loading runs in stages, one module each: the file's shape (`file`, serde), the checks
//! that freeze it into the model (`validate` into `model`), and the reads outside the file
//! the checks call (`resolve`: DNS, certificates, the access-log file). Every error is a
//! [`ConfigError`] naming the file, the line and the key (`error`), so `edgecache --check`
//! and a failed reload point straight at the problem.

mod error;
mod file;
mod model;
mod origins;
mod resolve;
mod routes;
pub mod units;
mod validate;

use std::path::Path;

pub use error::ConfigError;
use error::{line_of_offset, Locator};
use file::FileConfig;
pub use file::{AccessLogFormat, HealthCheckKind, LbPolicy};
pub use model::*;
use validate::freeze;

/// The config used when no `--config` is given: the proxy on 127.0.0.1:8080 in front of the
/// built-in sample origin, so caching can be tried with nothing else running.
pub const BUILT_IN_CONFIG: &str = include_str!("../../config/default.toml");

/// Name shown for the built-in config in messages.
pub const BUILT_IN_NAME: &str = "<built-in default config>";

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// The built-in default config.
    pub fn built_in() -> Result<Config, ConfigError> {
        Config::parse(BUILT_IN_CONFIG, Path::new(BUILT_IN_NAME))
    }

    /// Parses and validates config text; `source` only labels errors.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        let locator = Locator { text, source };
        let deserializer = toml::Deserializer::new(text);
        let file: FileConfig = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            let inner = err.into_inner();
            let line = inner
                .span()
                .map(|span| line_of_offset(text, span.start))
                .unwrap_or_else(|| locator.line_of_key(&key));
            ConfigError::Invalid {
                file: source.to_path_buf(),
                line,
                key: if key == "." { "(file)".into() } else { key },
                message: inner.message().to_string(),
            }
        })?;
        freeze(file, &locator)
    }
}

#[cfg(test)]
mod tests;
