//! Upload URLs: resolving a `Location` against the request URL and comparing origins.
//!
//! tus servers answer creation with an absolute, relative (`/files/abc`) or protocol-relative
//! (`//host/files/abc`) `Location`; RFC 3986 §5.2 says how to resolve each. Only `http` and
//! `https` are accepted, and an `https` endpoint may never hand us an `http` upload URL.

/// Why a URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    /// Not an absolute `http://` or `https://` URL with a host.
    NotHttp(String),
    /// The server tried to move an upload from `https` to `http`.
    Downgrade(String),
    /// A character a URL cannot hold as it is (a space, a control character, a quote...):
    /// HTTP libraries refuse it at the first request, so it is refused here, where it can be
    /// named. `at` is the 0-based character position.
    BadChar {
        /// The URL.
        url: String,
        /// Where.
        at: usize,
        /// The character.
        c: char,
    },
    /// A port that is not a number from 1 to 65535.
    BadPort {
        /// The URL.
        url: String,
        /// The port as written.
        port: String,
    },
}

impl std::fmt::Display for UrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotHttp(u) => write!(f, "{u:?} is not an http:// or https:// URL with a host"),
            Self::Downgrade(u) => write!(
                f,
                "refusing to follow an https endpoint to plain http {u:?}"
            ),
            Self::BadChar { url, at, c } => write!(
                f,
                "{url:?} has {c:?} at position {at}, which a URL cannot hold: remove it, or percent-encode it (a space is %20)"
            ),
            Self::BadPort { url, port } => write!(
                f,
                "{url:?} has port {port:?}: a port is a number from 1 to 65535"
            ),
        }
    }
}

/// The parts of an absolute URL that resolution needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parts<'a> {
    scheme: &'a str,
    authority: &'a str,
    path: &'a str,
    query: Option<&'a str>,
}

fn split(url: &str) -> Result<Parts<'_>, UrlError> {
    let bad = || UrlError::NotHttp(url.to_string());
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(bad());
    }
    let rest = rest.split('#').next().unwrap_or_default();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() || authority.contains(['@', ' ']) {
        return Err(bad());
    }
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    Ok(Parts {
        scheme,
        authority,
        path,
        query,
    })
}

/// Checks that `url` is an absolute http(s) URL with a host, only characters a URL may hold
/// (RFC 3986: no spaces, controls, quotes or `<>\^`{|}`) and a port from 1 to 65535: the
/// checks for an endpoint a person typed, so that a mistake is a configuration error, never
/// a request retried forever.
pub fn validate(url: &str) -> Result<(), UrlError> {
    if let Some((at, c)) = url
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_graphic() || "\"<>\\^`{|}".contains(*c))
    {
        return Err(UrlError::BadChar {
            url: url.to_string(),
            at,
            c,
        });
    }
    let parts = split(url)?;
    let host_end = parts.authority.rfind(']').map_or(0, |i| i + 1);
    if let Some((_, port)) = parts.authority[host_end..].rsplit_once(':') {
        let ok = port.bytes().all(|b| b.is_ascii_digit())
            && matches!(port.parse::<u32>(), Ok(1..=65535));
        if !ok {
            return Err(UrlError::BadPort {
                url: url.to_string(),
                port: port.to_string(),
            });
        }
    }
    Ok(())
}

/// The origin of an absolute URL: lowercased scheme and host, with the default port made explicit.
pub fn origin(url: &str) -> Result<String, UrlError> {
    let p = split(url)?;
    let scheme = p.scheme.to_ascii_lowercase();
    let authority = p.authority.to_ascii_lowercase();
    let has_port = authority.rsplit_once(':').is_some_and(|(_, port)| {
        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
    });
    if has_port {
        Ok(format!("{scheme}://{authority}"))
    } else {
        let port = if scheme == "https" { 443 } else { 80 };
        Ok(format!("{scheme}://{authority}:{port}"))
    }
}

/// True when both URLs have the same origin (scheme, host and port).
pub fn same_origin(a: &str, b: &str) -> bool {
    matches!((origin(a), origin(b)), (Ok(x), Ok(y)) if x == y)
}

/// Resolves `location` (absolute, protocol-relative or relative) against `base` (the request
/// URL); the result passes [`validate`].
pub fn resolve(base: &str, location: &str) -> Result<String, UrlError> {
    let location = location.trim();
    let b = split(base)?;
    let resolved = if location.contains("://") {
        split(location)?;
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{}://{rest}", b.scheme)
    } else if location.starts_with('/') {
        let (path, query) = location
            .split_once('?')
            .map_or((location, None), |(p, q)| (p, Some(q)));
        join(b.scheme, b.authority, &remove_dots(path), query)
    } else if location.is_empty() {
        return Err(UrlError::NotHttp(location.to_string()));
    } else if let Some(q) = location.strip_prefix('?') {
        join(b.scheme, b.authority, b.path, Some(q))
    } else {
        let dir = b.path.rsplit_once('/').map_or("", |(d, _)| d);
        let (rel, query) = location
            .split_once('?')
            .map_or((location, None), |(p, q)| (p, Some(q)));
        join(
            b.scheme,
            b.authority,
            &remove_dots(&format!("{dir}/{rel}")),
            query,
        )
    };
    let r = split(&resolved)?;
    if b.scheme.eq_ignore_ascii_case("https") && r.scheme.eq_ignore_ascii_case("http") {
        return Err(UrlError::Downgrade(resolved));
    }
    // A URL no request can be sent to (a raw space or non-ASCII byte, a bad port) is refused
    // here, by name, instead of being stored and failing every request to it.
    validate(&resolved)?;
    let _ = b.query; // the base query never carries over to a new path (RFC 3986 §5.2.2)
    Ok(resolved)
}

fn join(scheme: &str, authority: &str, path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{scheme}://{authority}{path}?{q}"),
        None => format!("{scheme}://{authority}{path}"),
    }
}

/// RFC 3986 §5.2.4 remove_dot_segments for an absolute path.
fn remove_dots(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// The URL without its query string, for log lines (query strings often carry tokens).
pub fn redact(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://127.0.0.1:1080/files/";

    #[test]
    fn resolves_every_location_form() {
        let cases = [
            ("http://other:9/u/1", "http://other:9/u/1"),
            ("/files/abc", "http://127.0.0.1:1080/files/abc"),
            ("//cdn.example/up/1", "http://cdn.example/up/1"),
            ("abc", "http://127.0.0.1:1080/files/abc"),
            ("../x/abc?t=1", "http://127.0.0.1:1080/x/abc?t=1"),
            ("/a/./b/../c", "http://127.0.0.1:1080/a/c"),
            ("  /files/sp  ", "http://127.0.0.1:1080/files/sp"),
        ];
        for (loc, want) in cases {
            assert_eq!(resolve(BASE, loc).unwrap(), want, "location {loc}");
        }
    }

    #[test]
    fn protocol_relative_keeps_https() {
        assert_eq!(
            resolve(
                "https://api.example/tus",
                "//upload.example/tus/1?tusv2=true"
            )
            .unwrap(),
            "https://upload.example/tus/1?tusv2=true"
        );
    }

    #[test]
    fn refuses_downgrade_and_non_http() {
        assert!(matches!(
            resolve("https://a.example/files/", "http://a.example/files/1"),
            Err(UrlError::Downgrade(_))
        ));
        assert!(matches!(
            resolve(BASE, "ftp://x/1"),
            Err(UrlError::NotHttp(_))
        ));
        assert!(matches!(resolve(BASE, ""), Err(UrlError::NotHttp(_))));
        assert!(matches!(resolve("files/", "/x"), Err(UrlError::NotHttp(_))));
        assert!(validate("http://user@host/x").is_err());
    }

    /// Found by the tus_response fuzz target: a `Location` with a character no URL holds (here
    /// a non-ASCII one, as a server's raw bytes arrive) resolved to a URL that was stored and
    /// then refused by the HTTP library at every request, retried forever.
    #[test]
    fn a_location_no_request_can_go_to_is_refused() {
        let base = "http://tus.example.com/files/";
        for (loc, c) in [
            ("https://tus.example.\u{e9}om/files/", '\u{e9}'),
            ("/files/a b", ' '),
            ("x\u{7f}", '\u{7f}'),
            ("//h/\"q\"", '"'),
        ] {
            assert!(
                matches!(resolve(base, loc), Err(UrlError::BadChar { c: got, .. }) if got == c),
                "{loc:?}: {:?}",
                resolve(base, loc)
            );
        }
        assert!(matches!(
            resolve(base, "http://h:70000/files/1"),
            Err(UrlError::BadPort { .. })
        ));
    }

    #[test]
    fn a_typed_endpoint_is_checked_whole() {
        for good in [
            "https://tus.example.com/files/",
            "http://127.0.0.1:1080/files/",
            "http://[::1]:8080/files/?a=b%20c",
            "https://h:65535/",
            "http://[fe80::1]/",
        ] {
            assert_eq!(validate(good), Ok(()), "{good}");
        }
        let e = validate("https://tus.example.com/files/ ").unwrap_err();
        assert_eq!(
            e,
            UrlError::BadChar {
                url: "https://tus.example.com/files/ ".into(),
                at: 30,
                c: ' '
            }
        );
        assert!(e.to_string().contains("%20"), "{e}");
        assert!(matches!(
            validate("http://h/a\tb"),
            Err(UrlError::BadChar { c: '\t', .. })
        ));
        assert!(matches!(
            validate("http://h/{x}"),
            Err(UrlError::BadChar { c: '{', .. })
        ));
        assert!(matches!(
            validate("http://h/caf\u{e9}"),
            Err(UrlError::BadChar { c: '\u{e9}', .. })
        ));
        for (url, port) in [
            ("http://h:99999/", "99999"),
            ("http://h:0/", "0"),
            ("http://h:/", ""),
            ("http://h:8o/", "8o"),
            ("http://[::1]:70000/", "70000"),
        ] {
            assert_eq!(
                validate(url),
                Err(UrlError::BadPort {
                    url: url.into(),
                    port: port.into()
                }),
                "{url}"
            );
        }
    }

    #[test]
    fn origins_compare_with_default_ports() {
        assert!(same_origin(
            "https://A.example/x",
            "https://a.example:443/y"
        ));
        assert!(same_origin("http://h/x", "http://h:80/"));
        assert!(!same_origin("http://h/x", "https://h/x"));
        assert!(!same_origin("http://h:1/x", "http://h:2/x"));
        assert!(same_origin("http://[::1]:8/x", "http://[::1]:8/y"));
        assert_eq!(origin("http://[::1]/x").unwrap(), "http://[::1]:80");
    }

    #[test]
    fn redact_drops_query() {
        assert_eq!(
            redact("https://u.example/tus/1?token=s3cret"),
            "https://u.example/tus/1"
        );
    }
}
