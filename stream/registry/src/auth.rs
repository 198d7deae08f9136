//! Credentials for a schema registry, found the way Confluent's clients find them, so one
//! configuration works with Confluent, Karapace, Apicurio or the built-in registry: userinfo in
//! the URL first (`http://user:pass@host:8081`), else `SLUICE_REGISTRY_USER_INFO`
//! (`user:password`, like `basic.auth.user.info`), else `SLUICE_REGISTRY_BEARER_TOKEN`
//! (`bearer.auth.token`). Secrets never reach a log line, an error or `{:?}`.

use std::fmt;

use crate::encoding::{base64, percent_decode};
use crate::error::{RegistryError, Result};

/// `user:password` for HTTP Basic authentication, as Confluent's `basic.auth.user.info`.
pub const USER_INFO_ENV: &str = "SLUICE_REGISTRY_USER_INFO";
/// A token for `Authorization: Bearer`, as Confluent's `bearer.auth.token`.
pub const BEARER_TOKEN_ENV: &str = "SLUICE_REGISTRY_BEARER_TOKEN";

/// How requests to the registry authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    None,
    Basic { user: String, password: String },
    Bearer(String),
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryAuth::None => f.write_str("None"),
            RegistryAuth::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("password", &format_args!("<redacted>"))
                .finish(),
            RegistryAuth::Bearer(_) => f
                .debug_tuple("Bearer")
                .field(&format_args!("<redacted>"))
                .finish(),
        }
    }
}

impl RegistryAuth {
    /// The URL without its userinfo (and without a trailing `/`), and the credentials: the
    /// URL's userinfo first (`http://user:pass@host:8081`, percent-decoded), else
    /// `SLUICE_REGISTRY_USER_INFO` (`user:password`), else `SLUICE_REGISTRY_BEARER_TOKEN`, else
    /// none. `http://` and `https://` URLs are accepted; the error says why for anything else.
    pub fn from_url_and_env(url: &str) -> Result<(String, RegistryAuth)> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        from_parts(url, env(USER_INFO_ENV), env(BEARER_TOKEN_ENV))
    }

    /// The `Authorization` header value, if any.
    pub(crate) fn header(&self) -> Option<String> {
        match self {
            RegistryAuth::None => None,
            RegistryAuth::Basic { user, password } => Some(format!(
                "Basic {}",
                base64(format!("{user}:{password}").as_bytes())
            )),
            RegistryAuth::Bearer(token) => Some(format!("Bearer {token}")),
        }
    }
}

/// [`RegistryAuth::from_url_and_env`] with the environment's values given (tests set no
/// process-wide variables).
pub(crate) fn from_parts(
    url: &str,
    user_info: Option<String>,
    bearer: Option<String>,
) -> Result<(String, RegistryAuth)> {
    let (base, credentials) = split_url(url)?;
    if let Some((user, password)) = credentials {
        return Ok((base, RegistryAuth::Basic { user, password }));
    }
    if let Some(info) = user_info {
        let Some((user, password)) = info.split_once(':') else {
            return Err(RegistryError::Config {
                url: base,
                message: format!("{USER_INFO_ENV} must be `user:password` (it has no `:`)"),
            });
        };
        return Ok((
            base,
            RegistryAuth::Basic {
                user: user.to_string(),
                password: password.to_string(),
            },
        ));
    }
    if let Some(token) = bearer {
        return Ok((base, RegistryAuth::Bearer(token.trim().to_string())));
    }
    Ok((base, RegistryAuth::None))
}

/// `http[s]://[user[:password]@]host[:port][/path]` split into the URL without userinfo or a
/// trailing `/` (its scheme in lower case), and the decoded user and password.
pub(crate) fn split_url(url: &str) -> Result<(String, Option<(String, String)>)> {
    let trimmed = url.trim();
    let refuse = |message: &str| RegistryError::Config {
        url: redacted(trimmed),
        message: message.to_string(),
    };
    let Some((scheme, rest)) = trimmed.split_once("://") else {
        return Err(refuse(
            "not a URL; expected http://HOST:PORT or https://HOST:PORT (e.g. http://127.0.0.1:8081)",
        ));
    };
    // ureq picks TLS by the scheme: spelled in lower case, whatever the user typed.
    let scheme = if scheme.eq_ignore_ascii_case("http") {
        "http"
    } else if scheme.eq_ignore_ascii_case("https") {
        "https"
    } else {
        return Err(refuse(
            "unsupported scheme; expected http://HOST:PORT or https://HOST:PORT",
        ));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let (user_info, host) = match authority.rsplit_once('@') {
        Some((info, host)) => (Some(info), host),
        None => (None, authority),
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(refuse("no host; expected http(s)://HOST:PORT"));
    }
    if path.contains(['?', '#']) {
        return Err(refuse(
            "a registry URL has no query or fragment; expected http(s)://HOST:PORT[/PATH]",
        ));
    }
    let base = format!("{scheme}://{host}{}", path.trim_end_matches('/'));
    let credentials = user_info.map(|info| {
        let (user, password) = info.split_once(':').unwrap_or((info, ""));
        (percent_decode(user), percent_decode(password))
    });
    Ok((base, credentials))
}

/// `url` with any userinfo replaced by `***`, for error messages.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL: it may still hold a secret (`user:pass@host`), so show only up to an `@`.
        return match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_string(),
        };
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{}", &rest[end..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> RegistryAuth {
        RegistryAuth::Basic {
            user: user.into(),
            password: password.into(),
        }
    }

    #[test]
    fn userinfo_in_the_url_wins_and_is_removed_from_it() {
        let (url, auth) = from_parts(
            "http://alice:s%40cret@registry:8081/",
            Some("bob:other".into()),
            Some("token".into()),
        )
        .unwrap();
        assert_eq!(url, "http://registry:8081");
        assert_eq!(auth, basic("alice", "s@cret"));
        let (url, auth) = from_parts("http://only-user@r:1/apis/ccompat/v7", None, None).unwrap();
        assert_eq!(url, "http://r:1/apis/ccompat/v7");
        assert_eq!(auth, basic("only-user", ""));
    }

    #[test]
    fn the_environment_is_the_fallback_user_info_before_the_token() {
        let (url, auth) = from_parts(
            "http://registry:8081",
            Some("bob:pa:ss".into()),
            Some("t".into()),
        )
        .unwrap();
        assert_eq!(url, "http://registry:8081");
        assert_eq!(auth, basic("bob", "pa:ss"));
        let (_, auth) = from_parts("http://registry:8081", None, Some(" t0k ".into())).unwrap();
        assert_eq!(auth, RegistryAuth::Bearer("t0k".into()));
        let (_, auth) = from_parts("HTTP://registry:8081", None, None).unwrap();
        assert_eq!(auth, RegistryAuth::None);
        let error = from_parts("http://r:1", Some("no-colon".into()), None).unwrap_err();
        assert!(error.to_string().contains(USER_INFO_ENV), "{error}");
    }

    #[test]
    fn http_and_https_urls_are_accepted_and_errors_say_why() {
        let (url, auth) = from_parts("https://u:secret@r:8081/", None, None).unwrap();
        assert_eq!(url, "https://r:8081");
        assert_eq!(auth, basic("u", "secret"));
        let (url, _) = from_parts(
            " HTTPS://registry.example:443/apis/ccompat/v7/ ",
            None,
            None,
        )
        .unwrap();
        assert_eq!(url, "https://registry.example:443/apis/ccompat/v7");
        let (url, _) = from_parts("Http://r:1", None, None).unwrap();
        assert_eq!(url, "http://r:1");
        let refused = from_parts("ftp://u:secret@r:21", None, None).unwrap_err();
        let text = refused.to_string();
        assert!(text.contains("https://HOST:PORT"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        for garbage in [
            "",
            "registry:8081",
            "ftp://r:1",
            "http://",
            "https://",
            "https:/r:1",
            "http://u:p@/x",
            "http://r:1/?a=b",
        ] {
            let error = from_parts(garbage, None, None).unwrap_err();
            assert!(
                matches!(error, RegistryError::Config { .. }),
                "{garbage}: {error}"
            );
        }
        assert!(
            from_parts("user:secret@r:8081", None, None)
                .unwrap_err()
                .to_string()
                .contains("***@r:8081")
        );
    }

    #[test]
    fn secrets_are_never_debug_printed() {
        let printed = format!(
            "{:?} {:?} {:?}",
            basic("alice", "hunter2"),
            RegistryAuth::Bearer("tok3n".into()),
            RegistryAuth::None
        );
        assert!(
            !printed.contains("hunter2") && !printed.contains("tok3n"),
            "{printed}"
        );
        assert!(
            printed.contains("alice") && printed.contains("<redacted>"),
            "{printed}"
        );
    }

    #[test]
    fn authorization_headers() {
        assert_eq!(
            basic("user", "pass").header().as_deref(),
            Some("Basic dXNlcjpwYXNz")
        );
        assert_eq!(
            RegistryAuth::Bearer("t".into()).header().as_deref(),
            Some("Bearer t")
        );
        assert_eq!(RegistryAuth::None.header(), None);
    }

    #[test]
    fn redaction_hides_userinfo_only() {
        assert_eq!(redacted("http://u:p@h:1/x"), "http://***@h:1/x");
        assert_eq!(redacted("http://h:1/a@b"), "http://h:1/a@b");
        assert_eq!(redacted("u:p@h"), "***@h");
    }
}
