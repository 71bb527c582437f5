//! Property tests of every parser that sees network or file input: no input makes one panic, and
//! round trips hold where there are any. Case counts are bounded so `cargo test` stays quick.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, SystemTime};

use edgecache::authority::{host_of_authority, normalize_host, request_authority};
use edgecache::cache::directives::response_cache_control;
use edgecache::cache::key::components;
use edgecache::cache::policy::request_freshness;
use edgecache::cache::storage::response_tags;
use edgecache::cache::vary::{variance, AcceptEncodingVariance};
use edgecache::cache::{cache_key, CachePolicy, CacheTarget};
use edgecache::compression::Accepted;
use edgecache::config::Config;
use pingora::cache::CacheMeta;
use pingora::http::{RequestHeader, ResponseHeader};
use proptest::prelude::*;

/// Bytes a header value may hold (visible ASCII, space, tab and obs-text).
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,80}",
        "[a-z0-9=,;\" -]{0,60}",
        "(max-age|s-maxage|no-cache|no-store|private|public|must-revalidate|stale-while-revalidate|stale-if-error|immutable)(=[0-9a-z\"-]{0,12})?(, ?(max-age|s-maxage|no-cache|private|stale-if-error)(=[0-9-]{0,12})?){0,4}",
    ]
}

fn request_with(headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/p", None).unwrap();
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes());
        if let (Ok(name), Ok(value)) = (name, http::HeaderValue::from_str(value)) {
            req.append_header(name, value).unwrap();
        }
    }
    req
}

fn response_with(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
    let mut resp = ResponseHeader::build(status, None).unwrap();
    for (name, value) in headers {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            resp.append_header(name.to_string(), value).unwrap();
        }
    }
    resp
}

fn policy() -> CachePolicy {
    CachePolicy::new(&Config::built_in().unwrap().cache)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn cache_control_cdn_cache_control_dates_and_age_never_panic(
        status in 100u16..1000,
        cache_control in header_value(),
        cdn_cache_control in header_value(),
        expires in header_value(),
        date in header_value(),
        age in header_value(),
        vary in header_value(),
        request_cache_control in header_value(),
    ) {
        let resp = response_with(status, &[
            ("cache-control", &cache_control),
            ("cdn-cache-control", &cdn_cache_control),
            ("expires", &expires),
            ("date", &date),
            ("age", &age),
            ("last-modified", &date),
            ("vary", &vary),
        ]);
        let req = request_with(&[("cache-control", &request_cache_control), ("pragma", "no-cache")]);
        let _ = response_cache_control(&resp);
        let _ = policy().response_cacheability(&req, &resp, SystemTime::now());
        let now = SystemTime::now();
        let meta = CacheMeta::new(now + Duration::from_secs(60), now, 10, 10, resp);
        let _ = request_freshness(&req, &meta, now);
        let _ = variance(&meta, &req, AcceptEncodingVariance::Ignored, Vec::new());
        let _ = variance(&meta, &req, AcceptEncodingVariance::Normalized("gzip"), Vec::new());
    }

    #[test]
    fn accept_encoding_never_panics_and_its_normal_form_round_trips(value in header_value()) {
        let accepted = Accepted::of_request(&request_with(&[("accept-encoding", &value)]));
        let normal = accepted.header_value();
        let again = Accepted::of_request(&request_with(&[("accept-encoding", normal)]));
        prop_assert_eq!(accepted, again);
    }

    #[test]
    fn accept_encoding_lists_are_read_item_by_item(
        gzip_q in 0u16..=1000,
        br_q in 0u16..=1000,
        noise in "[a-z]{1,8}(;q=0\\.[0-9]{1,3})?",
    ) {
        let value = format!("{noise}, gzip;q={}, br;q={}", f64::from(gzip_q) / 1000.0, f64::from(br_q) / 1000.0);
        let accepted = Accepted::of_request(&request_with(&[("accept-encoding", &value)]));
        prop_assert_eq!(accepted.gzip, gzip_q > 0);
        prop_assert_eq!(accepted.brotli, br_q > 0);
    }

    #[test]
    fn vary_on_any_header_names_never_panics(vary in "[ -~]{0,60}", value in header_value()) {
        let resp = response_with(200, &[("vary", &vary)]);
        let now = SystemTime::now();
        let meta = CacheMeta::new(now, now, 0, 0, resp);
        let first = vary.split(',').next().unwrap_or("x").trim().to_string();
        let req = request_with(&[(first.as_str(), value.as_str())]);
        let _ = variance(&meta, &req, AcceptEncodingVariance::Ignored, Vec::new());
    }

    #[test]
    fn range_requests_never_panic(range in "(bytes=)?[0-9,\\- ]{0,30}|[ -~]{0,30}", length in 0usize..100_000) {
        let req = request_with(&[("range", &range)]);
        let mut resp = response_with(200, &[("content-length", &length.to_string())]);
        let _ = pingora::proxy::range_header_filter(&req, &mut resp, Some(200));
    }

    #[test]
    fn cache_keys_never_panic_and_read_back(host in "[ -~]{0,40}", path in "/[ -~]{0,60}", tls in any::<bool>()) {
        let scheme = if tls { "https" } else { "http" };
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        if let Ok(uri) = path.parse::<http::Uri>() {
            req.set_uri(uri);
        }
        if let Ok(value) = http::HeaderValue::from_str(&host) {
            req.insert_header("host", value).unwrap();
        }
        let Some(target) = CacheTarget::of_request(&req, scheme) else { return Ok(()) };
        let key = cache_key(&target);
        let (s, authority, p) = components(key.primary_key()).unwrap();
        prop_assert_eq!(s, scheme.as_bytes());
        prop_assert_eq!(authority, target.authority.as_bytes());
        prop_assert_eq!(p, target.path_and_query.as_bytes());
        prop_assert_eq!(host_of_authority(authority), target.host.as_bytes());
    }

    #[test]
    fn host_normalisation_is_idempotent_and_case_blind(host in "[a-zA-Z0-9.\\-]{1,30}(:[0-9]{1,5})?") {
        let once = normalize_host(&host);
        prop_assert_eq!(normalize_host(&once), once.clone());
        prop_assert_eq!(normalize_host(&host.to_ascii_uppercase()), once);
        let req = request_with(&[("host", &host)]);
        if let Some(authority) = request_authority(&req, "http") {
            prop_assert_eq!(request_authority(&request_with(&[("host", &authority)]), "http"), Some(authority));
        }
    }

    #[test]
    fn surrogate_keys_and_cache_tags_never_panic(surrogate in header_value(), cache_tag in header_value()) {
        let resp = response_with(200, &[("surrogate-key", &surrogate), ("cache-tag", &cache_tag)]);
        for tag in response_tags(&resp) {
            prop_assert!(!tag.is_empty());
            prop_assert!(!tag.contains(' '));
        }
    }

    #[test]
    fn query_keys_are_idempotent_and_never_panic(
        path in "/[a-z/]{0,12}(\\?[a-z_=&*%0-9]{0,40})?",
        patterns in prop::collection::vec("[a-z_*]{1,6}", 0..3),
    ) {
        use edgecache::cache::key::normalize_query;
        use edgecache::config::{NamePattern, QueryKey};
        let names: Vec<NamePattern> = patterns.iter().map(|p| NamePattern::new(p)).collect();
        let modes = [
            QueryKey::Keep,
            QueryKey::Sort,
            QueryKey::Ignore,
            QueryKey::Only(names.clone()),
            QueryKey::Without(names),
        ];
        prop_assert_eq!(normalize_query(&path, &QueryKey::Keep), path.as_str());
        for mode in modes {
            let once = normalize_query(&path, &mode).into_owned();
            prop_assert!(once.starts_with(path.split('?').next().unwrap()), "{}", once);
            prop_assert_eq!(normalize_query(&once, &mode), once.as_str(), "{:?}", mode);
        }
    }

    #[test]
    fn route_rules_parse_or_name_their_key(
        key in prop::sample::select(vec![
            "path", "path_prefix", "path_regex", "methods", "query", "key_headers", "strip_prefix",
            "default_ttl", "rate_limit", "redirect", "response_headers",
        ]),
        value in prop_oneof![
            "\"[ -~]{0,16}\"",
            "\\[\"[ -~]{0,8}\"\\]",
            "\\{ ?(to|requests|set|keep|drop) = (\"[ -~]{0,8}\"|[0-9]{1,3}|\\[\"[a-z_*]{0,5}\"\\]) ?\\}",
        ],
    ) {
        let text = format!(
            "[[site]]\nhosts = [\"a.test\"]\norigins = [\"127.0.0.1:1\"]\n[[site.route]]\n{key} = {value}\n"
        );
        if let Err(e) = Config::parse(&text, std::path::Path::new("fuzz.toml")) {
            let message = e.to_string();
            prop_assert!(message.starts_with("fuzz.toml:"), "{}", message);
        }
    }

    #[test]
    fn purge_bodies_never_panic(body in prop_oneof![
        "[ -~]{0,80}",
        "\\{\"(url|prefix|host|tag|soft)\": ?(\"[ -~]{0,30}\"|true|false|1|null)\\}",
    ]) {
        let _ = edgecache::purge::parse_purge_request(body.as_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_config_text_is_an_error_or_a_config(text in "[ -~\\n]{0,200}") {
        let _ = Config::parse(&text, std::path::Path::new("fuzz.toml"));
    }

    #[test]
    fn any_value_of_a_known_key_is_an_error_naming_it_or_accepted(
        key in prop::sample::select(vec![
            "read_timeout", "connect_timeout", "retries", "lb", "hosts", "cache", "hsts",
            "strip_request_headers", "eject_for", "total_timeout", "origins",
        ]),
        value in prop_oneof!["\"[ -~]{0,20}\"", "-?[0-9]{1,22}", "\\[\"[ -~]{0,10}\"\\]", "(true|false)"],
    ) {
        let text = format!("[[site]]\nhosts = [\"a.test\"]\norigins = [\"127.0.0.1:1\"]\n{key} = {value}\n");
        let text = if key == "hosts" || key == "origins" {
            text.replacen(&format!("{key} = "), "# ", 1)
        } else {
            text
        };
        if let Err(e) = Config::parse(&text, std::path::Path::new("fuzz.toml")) {
            let message = e.to_string();
            prop_assert!(message.starts_with("fuzz.toml:"), "{}", message);
        }
    }
}
