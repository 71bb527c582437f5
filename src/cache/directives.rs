//! Reading a response's caching directives the strict way: `CDN-Cache-Control` as the RFC 8941
//! Structured Field Dictionary RFC 9213 makes it, `Cache-Control` freshness values that conflict
//! or do not parse (RFC 9111 §4.2.1), and `Age` (§5.1). pingora's `CacheControl` does the rest of
//! the interpretation once a field has been accepted here.

use pingora::cache::cache_control::CacheControl;
use pingora::http::ResponseHeader;
use sfv::{BareItem, ListEntry, Parser};

use crate::field_list;

/// Response header that targets CDNs (RFC 9213) and overrides `Cache-Control` for them.
pub const CDN_CACHE_CONTROL: &str = "cdn-cache-control";

/// [`CDN_CACHE_CONTROL`] as a header name, made once.
pub const CDN_CACHE_CONTROL_NAME: http::HeaderName = http::HeaderName::from_static(CDN_CACHE_CONTROL);

/// Directives whose value is a number of seconds.
const SECONDS_DIRECTIVES: [&str; 4] = ["max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"];

/// Directives that may carry field names (`no-cache="Set-Cookie"`).
const FIELD_NAME_DIRECTIVES: [&str; 2] = ["no-cache", "private"];

/// The directives that apply to this cache: a valid `CDN-Cache-Control`, else `Cache-Control`.
pub fn response_cache_control(resp: &ResponseHeader) -> Option<CacheControl> {
    match targeted_cache_control(resp) {
        Some(targeted) => Some(targeted),
        None => CacheControl::from_resp_headers(resp),
    }
}

/// Whether the directives that apply come from `CDN-Cache-Control`.
pub fn uses_targeted_field(resp: &ResponseHeader) -> bool {
    targeted_cache_control(resp).is_some()
}

/// `CDN-Cache-Control` when it parses as a Dictionary whose directives have the right types;
/// `None` when absent or invalid (the whole field is then ignored, RFC 9213 §2.1).
fn targeted_cache_control(resp: &ResponseHeader) -> Option<CacheControl> {
    let mut joined = Vec::new();
    for line in resp.headers.get_all(&CDN_CACHE_CONTROL_NAME) {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(line.as_bytes());
    }
    if joined.is_empty() {
        return None;
    }
    let dictionary = Parser::parse_dictionary(&joined).ok()?;
    let mut directives = Vec::with_capacity(dictionary.len());
    for (name, entry) in &dictionary {
        let ListEntry::Item(item) = entry else {
            return None;
        };
        match directive_text(name, &item.bare_item)? {
            Some(text) => directives.push(text),
            None => continue,
        }
    }
    let mut headers = http::HeaderMap::new();
    let value = http::HeaderValue::from_str(&directives.join(", ")).ok()?;
    headers.insert(http::header::CACHE_CONTROL, value);
    CacheControl::from_headers_named("cache-control", &headers)
}

/// One dictionary member as `Cache-Control` syntax: `Some(None)` when it is absent (a `false`
/// boolean), `None` when it has the wrong type for its name.
fn directive_text(name: &str, value: &BareItem) -> Option<Option<String>> {
    if SECONDS_DIRECTIVES.contains(&name) {
        let seconds = value.as_int().filter(|s| *s >= 0)?;
        return Some(Some(format!("{name}={seconds}")));
    }
    match value {
        BareItem::Boolean(true) => Some(Some(name.to_string())),
        BareItem::Boolean(false) => Some(None),
        BareItem::String(fields) if FIELD_NAME_DIRECTIVES.contains(&name) => {
            Some(Some(format!("{name}=\"{fields}\"")))
        }
        // Extensions this cache does not know: kept, whatever their type.
        _ if !is_known(name) => Some(None),
        _ => None,
    }
}

fn is_known(name: &str) -> bool {
    const KNOWN: [&str; 8] = [
        "no-store",
        "no-cache",
        "private",
        "public",
        "must-revalidate",
        "proxy-revalidate",
        "must-understand",
        "immutable",
    ];
    KNOWN.contains(&name) || SECONDS_DIRECTIVES.contains(&name)
}

/// Whether `Cache-Control` states its freshness in a way that cannot be trusted: `max-age` or
/// `s-maxage` given twice with different values (on one line or two), or with a value that is
/// not a plain non-negative integer. Such a response is stale (RFC 9111 §4.2.1 lets a cache
/// use the first value or treat it as stale; stale is the safe choice).
pub fn freshness_is_unreliable(resp: &ResponseHeader) -> bool {
    if uses_targeted_field(resp) {
        return false;
    }
    // The first value of `max-age` and of `s-maxage`, in one pass over the field.
    let mut seen: [Option<&str>; 2] = [None, None];
    for item in field_list::items(&resp.headers, http::header::CACHE_CONTROL) {
        let Some((name, value)) = item.split_once('=') else {
            continue;
        };
        let name = name.trim();
        let Some(slot) = ["max-age", "s-maxage"]
            .iter()
            .position(|directive| name.eq_ignore_ascii_case(directive))
        else {
            continue;
        };
        let value = value.trim();
        let digits = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return true;
        }
        match seen[slot] {
            Some(earlier) if earlier.trim_start_matches('0') != digits.trim_start_matches('0') => {
                return true
            }
            _ => seen[slot] = Some(digits),
        }
    }
    false
}

/// Whether the origin plainly refuses to let `resp` be stored: no `CDN-Cache-Control` (which
/// would take precedence) and a `Cache-Control` with a bare `private`, or a bare `no-store`
/// without `must-understand` (RFC 9111 §5.2.2.3). A cheap check for a response whose URL was
/// refused before, that errs towards `false`: anything less plain goes through the full policy.
pub fn refuses_storage(resp: &ResponseHeader) -> bool {
    if resp.headers.contains_key(&CDN_CACHE_CONTROL_NAME) {
        return false;
    }
    let (mut refused, mut must_understand, mut private) = (false, false, false);
    for line in resp.headers.get_all(http::header::CACHE_CONTROL) {
        for directive in unquoted_items(line.as_bytes()) {
            let (name, bare) = match directive.iter().position(|&byte| byte == b'=') {
                Some(at) => (&directive[..at], false),
                None => (directive, true),
            };
            let name = name.trim_ascii();
            if name.eq_ignore_ascii_case(b"must-understand") {
                must_understand = true;
            } else if bare && name.eq_ignore_ascii_case(b"no-store") {
                refused = true;
            } else if bare && name.eq_ignore_ascii_case(b"private") {
                private = true;
            }
        }
    }
    private || (refused && !must_understand)
}

/// The members of a comma- or semicolon-separated list, skipping separators inside quoted
/// strings (with their backslash escapes).
fn unquoted_items(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (mut quoted, mut escaped) = (false, false);
    line.split(move |&byte| {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' | b';' if !quoted => return true,
            _ => {}
        }
        false
    })
}

/// The `Age` the response arrived with, in seconds: the first member, across field lines, that
/// is a non-negative integer (RFC 9111 §5.1); invalid members are skipped.
pub fn age_seconds(resp: &ResponseHeader) -> Option<u64> {
    field_list::items(&resp.headers, http::header::AGE).find_map(|item| {
        let valid = !item.is_empty() && item.bytes().all(|b| b.is_ascii_digit());
        // Values too large for 64 bits count as the largest (RFC 9111 §1.2.2).
        valid.then(|| item.parse().unwrap_or(u64::MAX))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(headers: &[(&'static str, &'static str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (name, value) in headers {
            resp.append_header(*name, *value).unwrap();
        }
        resp
    }

    #[test]
    fn targeted_field_must_be_a_dictionary_of_the_right_types() {
        let valid = resp(&[("cdn-cache-control", "max-age=60, must-revalidate")]);
        let cc = response_cache_control(&valid).unwrap();
        assert_eq!(cc.max_age().unwrap(), Some(60));
        assert!(cc.must_revalidate());
        for invalid in [
            "max-age=60, &&&&&",
            "max-age=\"60\"",
            "max-age=6.5",
            "max-age=-1",
            "no-store=3",
        ] {
            let both = resp(&[("cache-control", "no-store"), ("cdn-cache-control", invalid)]);
            assert!(!uses_targeted_field(&both), "{invalid}");
            assert!(response_cache_control(&both).unwrap().no_store(), "{invalid}");
        }
    }

    #[test]
    fn targeted_field_keeps_field_names_and_drops_false_flags() {
        let field = resp(&[(
            "cdn-cache-control",
            "max-age=5, private=\"set-cookie\", no-store=?0",
        )]);
        let cc = response_cache_control(&field).unwrap();
        assert!(!cc.no_store());
        assert!(!cc.private());
        assert!(cc.private_field_names().is_some());
    }

    #[test]
    fn plain_refusals_are_told_apart_from_what_the_full_policy_must_judge() {
        let refuses = |cc: &'static str| refuses_storage(&resp(&[("cache-control", cc)]));
        for plain in [
            "no-store",
            "No-Store",
            "max-age=60, private",
            "public;no-store",
            "x=\"a\\\"\", no-store",
        ] {
            assert!(refuses(plain), "{plain}");
        }
        for judged in [
            "max-age=60",
            "no-store, must-understand",
            "private=\"set-cookie\"",
            "no-cache=\"a, no-store, b\"",
            "x-no-store",
        ] {
            assert!(!refuses(judged), "{judged}");
        }
        let targeted = resp(&[("cache-control", "no-store"), ("cdn-cache-control", "max-age=60")]);
        assert!(!refuses_storage(&targeted));
        assert!(!refuses_storage(&resp(&[])));
    }

    #[test]
    fn conflicting_and_invalid_max_age() {
        let unreliable = |cc: &'static str| freshness_is_unreliable(&resp(&[("cache-control", cc)]));
        assert!(unreliable("max-age=3600, max-age=0"));
        assert!(unreliable("max-age=1.5"));
        assert!(unreliable("max-age=a100"));
        assert!(unreliable("max-age=100a"));
        assert!(unreliable("s-maxage=, max-age=5"));
        assert!(!unreliable("max-age=3600, max-age=3600"));
        assert!(!unreliable("max-age=\"60\""));
        assert!(!unreliable("public, max-age=60, no-cache=\"a, b\""));
        let two_lines = resp(&[("cache-control", "max-age=60"), ("cache-control", "max-age=0")]);
        assert!(freshness_is_unreliable(&two_lines));
    }

    #[test]
    fn age_is_its_first_valid_member() {
        let age = |value: &'static str| age_seconds(&resp(&[("age", value)]));
        assert_eq!(age("7200, 0"), Some(7200));
        assert_eq!(age("1a, 7200"), Some(7200));
        assert_eq!(age("1a"), None);
        assert_eq!(age("-5"), None);
        assert_eq!(age("99999999999999999999999"), Some(u64::MAX));
    }
}
