//! Config errors, located by file, line and key: the [`Locator`] maps a key path found wrong
//! after parsing back to its line.

use std::path::{Path, PathBuf};

/// A config that could not be loaded, located as precisely as the parser allows.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{file}: cannot read config: {source}")]
    Read {
        /// The path given.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but a key is missing, unknown or has a bad value.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        /// The path given.
        file: PathBuf,
        /// 1-based line of the offending key or value (the first line if unknown).
        line: usize,
        /// Dotted path of the key, e.g. `site[0].origins[1]`.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// Maps key paths back to lines for errors found after parsing.
pub(super) struct Locator<'a> {
    pub(super) text: &'a str,
    pub(super) source: &'a Path,
}

impl Locator<'_> {
    /// `path` as written in the config, made relative to the config file's directory.
    pub(super) fn relative(&self, path: &Path) -> PathBuf {
        match self.source.parent() {
            Some(dir) if path.is_relative() && self.source.is_file() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    pub(super) fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.source.to_path_buf(),
            line: self.line_of_key(key),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// Line of the value at a dotted key path such as `site[1].hosts[0]`, or of its nearest
    /// ancestor that has a position; line 1 when nothing matches.
    pub(super) fn line_of_key(&self, key: &str) -> usize {
        let Ok(doc) = self.text.parse::<toml_edit::ImDocument<String>>() else {
            return 1;
        };
        let mut item: &toml_edit::Item = doc.as_item();
        let mut best = None;
        for segment in key.split('.').filter(|s| !s.is_empty()) {
            let (name, index) = split_index(segment);
            let Some(next) = item.get(name) else { break };
            item = next;
            best = item.span().or(best);
            if let Some(i) = index {
                let Some(next) = item.get(i) else { break };
                item = next;
                best = item.span().or(best);
            }
        }
        best.map(|span| line_of_offset(self.text, span.start))
            .unwrap_or(1)
    }
}

pub(super) fn split_index(segment: &str) -> (&str, Option<usize>) {
    match segment.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
        None => (segment, None),
    }
}

pub(super) fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}
