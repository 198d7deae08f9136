//! Where a PostgreSQL sink connects, and how, without its password ever reaching a log line,
//! an error or a `Debug` dump.
//!
//! The password comes from the URL, else the sink's `password_file` (for secrets mounted as
//! files), else `PGPASSWORD`, like libpq. TLS is refused rather than silently skipped: Sluice
//! links no TLS stack yet, and `sslmode=require` quietly degrading to plain text would be worse
//! than an error at start.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sluice_core::spec::{POSTGRES_URL_ENV, SinkSpec, redact_url};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Config, NoTls};

use super::error::{PgError, describe};

/// The connection [`PgTarget::connect`] opens and the transactions the writers take, named
/// here so that callers need no tokio-postgres dependency of their own.
pub use tokio_postgres::{Client, Transaction};

/// libpq's convention when `connect_timeout` is absent is to wait forever; a sink must not.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `connect_timeout` bounds each TCP connect; this bounds the startup and authentication
/// exchange after it, which a wedged server can otherwise stretch indefinitely.
const HANDSHAKE_GRACE: Duration = Duration::from_secs(5);
const APPLICATION_NAME: &str = "sluice";

/// A PostgreSQL server and database to connect to, with its credentials.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
    redacted: String,
}

impl PgTarget {
    /// Parses `url` (`postgres://user[:password]@host:port/database?…`, or libpq's
    /// `key=value` form). The password is the URL's, else the first line of `password_file`,
    /// else `PGPASSWORD`. `connect_timeout` defaults to 10 s and `application_name` to `sluice`.
    pub fn from_url(url: &str, password_file: Option<&Path>) -> Result<PgTarget, PgError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(PgError::InvalidUrl {
                target: "(empty)".to_string(),
                message: format!(
                    "no PostgreSQL URL: set the sink's `url` or {POSTGRES_URL_ENV}, e.g. postgres://user@127.0.0.1:5432/db"
                ),
            });
        }
        let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
        // A key/value string is shown only once parsed, rebuilt from its parts: masking its
        // password in place would need libpq's quoting rules.
        let shown_before_parse = if is_url {
            redact_url_params(&redact_url(url))
        } else {
            "(key/value connection string)".to_string()
        };
        if let Some(mode) = tls_sslmode(url) {
            return Err(tls_refused(shown_before_parse, &mode));
        }
        let mut config = Config::from_str(url).map_err(|error| {
            let message = describe(&error);
            if message.contains("sslmode") {
                tls_refused(shown_before_parse.clone(), "an unsupported value")
            } else {
                PgError::InvalidUrl {
                    target: shown_before_parse.clone(),
                    message: format!(
                        "{message} (expected postgres://user[:password]@host:port/database)"
                    ),
                }
            }
        })?;
        let redacted = if is_url {
            shown_before_parse
        } else {
            describe_config(&config)
        };
        if config.get_ssl_mode() == SslMode::Require {
            return Err(tls_refused(redacted, "require"));
        }
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            return Err(PgError::InvalidUrl {
                target: redacted,
                message: "no host: name one, e.g. postgres://user@127.0.0.1:5432/db".to_string(),
            });
        }
        if config.get_password().is_none() {
            if let Some(path) = password_file {
                config.password(read_password_file(path)?);
            } else if let Ok(password) = std::env::var("PGPASSWORD")
                && !password.is_empty()
            {
                config.password(password);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name(APPLICATION_NAME);
        }
        Ok(PgTarget { config, redacted })
    }

    /// The target of a `[[sinks]]` entry: `SLUICE_POSTGRES_URL` when set and non-empty, else
    /// the sink's `url`; a relative `password_file` is relative to the job file's directory.
    pub fn for_sink(spec: &SinkSpec, job_dir: &Path) -> Result<PgTarget, PgError> {
        let url = match std::env::var(POSTGRES_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => url,
            _ => spec.url.clone(),
        };
        let password_file = spec.password_file.as_ref().map(|path| {
            if path.is_absolute() {
                path.clone()
            } else {
                job_dir.join(path)
            }
        });
        PgTarget::from_url(&url, password_file.as_deref())
    }

    /// The URL without its password: what logs and errors show.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The parsed connection settings (its `Debug` hides the password too).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Opens a connection (without TLS) and drives it on a spawned task, so this must run
    /// inside a Tokio runtime.
    pub async fn connect(&self) -> Result<Client, PgError> {
        let per_host = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let hosts = self
            .config
            .get_hosts()
            .len()
            .max(self.config.get_hostaddrs().len())
            .max(1);
        let budget = per_host * u32::try_from(hosts).unwrap_or(u32::MAX) + HANDSHAKE_GRACE;
        let attempt = tokio::time::timeout(budget, self.config.connect(NoTls)).await;
        let (client, connection) = match attempt {
            Ok(Ok(pair)) => pair,
            Ok(Err(source)) => {
                return Err(PgError::Connect {
                    target: self.redacted.clone(),
                    source,
                });
            }
            Err(_elapsed) => {
                return Err(PgError::ConnectTimeout {
                    target: self.redacted.clone(),
                    seconds: budget.as_secs(),
                });
            }
        };
        let shown = self.redacted.clone();
        tokio::spawn(async move {
            // The client's next call reports the failure with its context; this only records
            // why the connection went away.
            if let Err(error) = connection.await {
                tracing::debug!(postgres = %shown, error = %describe(&error), "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }
}

/// Hand-written so the password cannot appear: only the redacted URL and whether there is one.
impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTarget")
            .field("target", &self.redacted)
            .field("has_password", &self.config.get_password().is_some())
            .finish()
    }
}

impl fmt::Display for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

fn tls_refused(target: String, mode: &str) -> PgError {
    PgError::InvalidUrl {
        target,
        message: format!(
            "sslmode={mode} asks for TLS, which Sluice's PostgreSQL client does not support yet; use sslmode=disable (or prefer, which connects without TLS) on a trusted network, or reach the server through a local TLS tunnel"
        ),
    }
}

/// The `sslmode` a connection string asks for when that mode needs TLS, in either form.
fn tls_sslmode(url: &str) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    let mut rest = lower.as_str();
    while let Some(at) = rest.find("sslmode") {
        let after = rest[at + "sslmode".len()..].trim_start();
        rest = &rest[at + "sslmode".len()..];
        let Some(value) = after.strip_prefix('=') else {
            continue;
        };
        let value: String = value
            .trim_start()
            .trim_start_matches('\'')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if matches!(value.as_str(), "require" | "verify-ca" | "verify-full") {
            return Some(value);
        }
    }
    None
}

/// `redact_url` masks the userinfo password; libpq also takes `?password=` in the query.
fn redact_url_params(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

/// A key/value connection string shown by its parts, never its password.
fn describe_config(config: &Config) -> String {
    let mut hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if hosts.is_empty() {
        hosts = config
            .get_hostaddrs()
            .iter()
            .map(|addr| addr.to_string())
            .collect();
    }
    let ports: Vec<String> = config
        .get_ports()
        .iter()
        .map(|port| port.to_string())
        .collect();
    let mut shown = format!("host={}", hosts.join(","));
    if !ports.is_empty() {
        shown.push_str(&format!(" port={}", ports.join(",")));
    }
    if let Some(dbname) = config.get_dbname() {
        shown.push_str(&format!(" dbname={dbname}"));
    }
    if let Some(user) = config.get_user() {
        shown.push_str(&format!(" user={user}"));
    }
    shown
}

fn read_password_file(path: &Path) -> Result<String, PgError> {
    let text = std::fs::read_to_string(path).map_err(|source| PgError::PasswordFile {
        path: path.to_path_buf(),
        source,
    })?;
    let password = text.lines().next().unwrap_or("").trim();
    if password.is_empty() {
        return Err(PgError::PasswordFile {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "its first line is empty"),
        });
    }
    Ok(password.to_string())
}

#[cfg(test)]
mod tests {
    use super::{PgTarget, redact_url_params, tls_sslmode};

    #[test]
    fn tls_modes_are_found_in_both_forms() {
        assert_eq!(
            tls_sslmode("postgres://u@h/db?sslmode=verify-full").as_deref(),
            Some("verify-full")
        );
        assert_eq!(
            tls_sslmode("host=h sslmode = 'require'").as_deref(),
            Some("require")
        );
        assert_eq!(tls_sslmode("postgres://u@h/db?sslmode=disable"), None);
        assert_eq!(tls_sslmode("postgres://u@h/db"), None);
    }

    #[test]
    fn query_passwords_are_masked() {
        assert_eq!(
            redact_url_params("postgres://u@h/db?password=hunter2&sslmode=disable"),
            "postgres://u@h/db?password=***&sslmode=disable"
        );
    }

    #[test]
    fn tls_is_refused_with_a_reason() {
        let error = PgTarget::from_url("postgres://u:pw@127.0.0.1/db?sslmode=require", None)
            .expect_err("TLS must be refused");
        let text = error.to_string();
        assert!(text.contains("TLS"), "{text}");
        assert!(!text.contains("pw@"), "{text}");
    }

    #[test]
    fn the_urls_password_wins_over_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\nsecond line\n").expect("writing the password file");
        let target = PgTarget::from_url("postgres://u:from-url@127.0.0.1/db", Some(&file))
            .expect("a valid URL");
        assert_eq!(target.config().get_password(), Some(&b"from-url"[..]));
        let target =
            PgTarget::from_url("postgres://u@127.0.0.1/db", Some(&file)).expect("a valid URL");
        assert_eq!(target.config().get_password(), Some(&b"from-file"[..]));
        assert_eq!(target.config().get_application_name(), Some("sluice"));
        assert!(target.config().get_connect_timeout().is_some());
    }

    #[test]
    fn key_value_strings_are_shown_without_their_password() {
        let target = PgTarget::from_url("host=127.0.0.1 user=u password=topsecret dbname=d", None)
            .expect("a valid key/value string");
        assert!(!target.redacted().contains("topsecret"));
        assert!(!format!("{target:?}").contains("topsecret"));
        assert!(
            target.redacted().contains("dbname=d"),
            "{}",
            target.redacted()
        );
    }
}
