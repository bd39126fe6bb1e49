//! Errors of the simulator: bad scenarios, bad command lines, I/O while
//! writing results. Nothing inside a run fails: simulated faults are
//! recorded as results, not errors.

use thiserror::Error;

/// A simulator error.
#[derive(Debug, Error)]
pub enum SimError {
    /// The scenario file does not parse.
    #[error("scenario {file}: {msg}")]
    Scenario {
        /// Which file.
        file: String,
        /// What is wrong.
        msg: String,
    },
    /// The scenario parses but makes no sense.
    #[error("invalid scenario: {0}")]
    Invalid(String),
    /// Setting up a link core failed.
    #[error("link setup: {0}")]
    Link(String),
    /// Reading or writing files.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Encoding results.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Bad command line.
    #[error("usage: {0}")]
    Usage(String),
}

impl SimError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> SimError {
        SimError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
