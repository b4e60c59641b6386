//! One error type for the engine. The UI receives `{kind, message}`: `kind` is a stable
//! machine-readable string (see [`Error::kind`]), `message` is for people.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller gave something we refuse (empty name, bad parameter...). The message says what.
    #[error("{0}")]
    InvalidInput(String),

    #[error("{what} {id} does not exist")]
    NotFound { what: &'static str, id: i64 },

    /// The request conflicts with the current state (e.g. retrying a job that is still running).
    #[error("{0}")]
    Conflict(String),

    #[error("the database file {path} is damaged or is not an Atelier database ({detail})")]
    CorruptDatabase { path: PathBuf, detail: String },

    #[error(
        "the database {path} was written by a newer Atelier (schema version {found}); this build understands up to version {supported}. Update Atelier; the file was left untouched"
    )]
    DatabaseTooNew {
        path: PathBuf,
        found: usize,
        supported: usize,
    },

    #[error(
        "the disk is full: {0}. Free some space and try again; nothing was saved by this action"
    )]
    DiskFull(String),

    #[error("the data folder {path} cannot be written: {detail}")]
    ReadOnly { path: PathBuf, detail: String },

    #[error(
        "Atelier is already running with the data folder {path}{}. Use that window, or close it first",
        pid.map(|p| format!(" (process {p})")).unwrap_or_default()
    )]
    AlreadyRunning { path: PathBuf, pid: Option<u32> },

    #[error("database error: {0}")]
    Database(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A remote model server failed; `failure` says how (the UI offers different fixes).
    #[error("{message}")]
    Remote {
        failure: RemoteFailure,
        message: String,
    },

    #[error("cancelled")]
    Cancelled,

    /// A bug or an unexpected state inside the engine (a panicked job, a poisoned channel).
    #[error("internal error: {0}")]
    Internal(String),
}

/// How a remote server failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteFailure {
    /// Connection refused, DNS failure, TLS failure.
    Unreachable,
    /// 401/403: the API key.
    Auth,
    /// 429: rate limit or quota.
    RateLimited,
    /// Another 4xx: the server did not accept the request as sent.
    Rejected,
    /// 5xx, or an error reported inside the stream.
    Server,
    Timeout,
    /// The stream broke off before the reply was complete.
    Interrupted,
    /// The reply was not OpenAI-style.
    Protocol,
}

impl RemoteFailure {
    pub fn kind(self) -> &'static str {
        match self {
            RemoteFailure::Unreachable => "remote_unreachable",
            RemoteFailure::Auth => "remote_auth",
            RemoteFailure::RateLimited => "remote_rate_limited",
            RemoteFailure::Rejected => "remote_rejected",
            RemoteFailure::Server => "remote_server",
            RemoteFailure::Timeout => "remote_timeout",
            RemoteFailure::Interrupted => "remote_interrupted",
            RemoteFailure::Protocol => "remote_protocol",
        }
    }
}

impl Error {
    /// Stable identifier the UI keys behaviour off.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "invalid_input",
            Error::NotFound { .. } => "not_found",
            Error::Conflict(_) => "conflict",
            Error::CorruptDatabase { .. } => "corrupt_database",
            Error::DatabaseTooNew { .. } => "database_too_new",
            Error::DiskFull(_) => "disk_full",
            Error::ReadOnly { .. } => "read_only",
            Error::AlreadyRunning { .. } => "already_running",
            Error::Database(_) => "database",
            Error::Io { .. } => "io",
            Error::Remote { failure, .. } => failure.kind(),
            Error::Cancelled => "cancelled",
            Error::Internal(_) => "internal",
        }
    }

    /// A remote server's failure, with how it failed.
    pub fn remote(failure: RemoteFailure, message: impl Into<String>) -> Self {
        Error::Remote {
            failure,
            message: message.into(),
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        // A full disk is its own kind whatever operation hit it.
        if source.kind() == std::io::ErrorKind::StorageFull {
            return Error::DiskFull(format!("{}: {source}", context.into()));
        }
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        if let rusqlite::Error::SqliteFailure(code, _) = &e {
            match code.code {
                ErrorCode::DiskFull => return Error::DiskFull(e.to_string()),
                ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                    return Error::CorruptDatabase {
                        path: PathBuf::new(),
                        detail: e.to_string(),
                    };
                }
                ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied => {
                    return Error::ReadOnly {
                        path: PathBuf::new(),
                        detail: e.to_string(),
                    };
                }
                _ => {}
            }
        }
        Error::Database(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("JSON: {e}"))
    }
}
