//! The dashboard: one HTML page, its script and its style sheet, compiled into the binary and
//! served by the admin listener without a token. They hold no data: the script asks the
//! operator for the admin token (kept in the tab's `sessionStorage`) and reads the JSON
//! endpoints with it, so what the page shows is exactly what the token may see.

use http::{Method, Response, StatusCode};

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");

/// Only the page's own files run or load; nothing may frame it; forms post nowhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The dashboard file at `path`, when `method` is GET and there is one.
pub(super) fn asset(method: &Method, path: &str) -> Option<Response<Vec<u8>>> {
    if method != Method::GET {
        return None;
    }
    let (body, content_type) = match path {
        "/" | "/index.html" => (PAGE, "text/html; charset=utf-8"),
        "/dashboard.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/dashboard.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let response = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .header("content-security-policy", CONTENT_SECURITY_POLICY)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .body(body.as_bytes().to_vec())
        .unwrap_or_default();
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_loads_only_its_own_files() {
        for needle in ["src=\"/dashboard.js\"", "href=\"/dashboard.css\""] {
            assert!(PAGE.contains(needle), "{needle}");
        }
        for external in [
            "src=\"http",
            "href=\"http",
            "src=\"//",
            "href=\"//",
            "url(",
            "@import",
        ] {
            assert!(!PAGE.contains(external), "page loads {external}");
            assert!(!STYLE.contains(external), "style sheet loads {external}");
        }
        assert_eq!(PAGE.matches("<script").count(), 1, "one script: its own");
        assert!(
            !SCRIPT.contains("innerHTML"),
            "data must go into the page as text"
        );
    }

    #[test]
    fn only_get_serves_files() {
        assert!(asset(&Method::GET, "/").is_some());
        assert!(asset(&Method::POST, "/").is_none());
        assert!(asset(&Method::GET, "/status").is_none());
    }
}
