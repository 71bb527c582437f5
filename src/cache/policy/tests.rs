use super::*;
use crate::config::Config;

fn policy() -> CachePolicy {
    CachePolicy::new(&Config::built_in().unwrap().cache)
}

fn get() -> RequestHeader {
    RequestHeader::build("GET", b"/", None).unwrap()
}

fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
    let mut resp = ResponseHeader::build(status, None).unwrap();
    for (name, value) in headers {
        resp.append_header(name.to_string(), *value).unwrap();
    }
    resp
}

fn decide(req: &RequestHeader, resp: &ResponseHeader) -> Option<CacheMeta> {
    match policy().response_cacheability(req, resp, SystemTime::now()) {
        RespCacheable::Cacheable(meta) => Some(meta),
        RespCacheable::Uncacheable(_) => None,
    }
}

fn fresh_secs(meta: &CacheMeta) -> u64 {
    meta.fresh_until()
        .duration_since(SystemTime::now())
        .map(|d| d.as_secs() + 1)
        .unwrap_or(0)
}

#[test]
fn s_maxage_wins_over_max_age() {
    let meta = decide(
        &get(),
        &resp(200, &[("cache-control", "max-age=10, s-maxage=100")]),
    )
    .unwrap();
    assert!((99..=100).contains(&fresh_secs(&meta)));
}

#[test]
fn upstream_age_is_subtracted_and_reported() {
    let meta = decide(
        &get(),
        &resp(200, &[("cache-control", "max-age=100"), ("age", "40")]),
    )
    .unwrap();
    assert!((59..=60).contains(&fresh_secs(&meta)), "{}", fresh_secs(&meta));
    assert!(meta.age().as_secs() >= 40);
}

#[test]
fn expires_is_relative_to_date_and_invalid_means_stale() {
    let date = httpdate::fmt_http_date(SystemTime::now());
    let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(300));
    let meta = decide(&get(), &resp(200, &[("date", &date), ("expires", &expires)])).unwrap();
    assert!((299..=300).contains(&fresh_secs(&meta)));
    let stale = decide(&get(), &resp(200, &[("expires", "0")])).unwrap();
    assert!(!stale.is_fresh(SystemTime::now()));
}

#[test]
fn heuristic_freshness_only_with_last_modified_and_heuristic_status() {
    let now = SystemTime::now();
    let last_modified = httpdate::fmt_http_date(now - Duration::from_secs(1000));
    let date = httpdate::fmt_http_date(now);
    let meta = decide(
        &get(),
        &resp(200, &[("last-modified", &last_modified), ("date", &date)]),
    )
    .unwrap();
    assert!((99..=100).contains(&fresh_secs(&meta)));
    assert!(decide(&get(), &resp(302, &[("last-modified", &last_modified)])).is_none());
    assert!(decide(&get(), &resp(200, &[])).is_none(), "no default TTL");
    let capped = httpdate::fmt_http_date(now - Duration::from_secs(100 * 86_400));
    let meta = decide(&get(), &resp(200, &[("last-modified", &capped)])).unwrap();
    assert!(fresh_secs(&meta) <= 86_400);
}

#[test]
fn shared_cache_exclusions() {
    assert!(decide(&get(), &resp(200, &[("cache-control", "no-store, max-age=60")])).is_none());
    assert!(decide(&get(), &resp(200, &[("cache-control", "private, max-age=60")])).is_none());
    assert!(decide(
        &get(),
        &resp(200, &[("cache-control", "max-age=60"), ("vary", "Accept, *")])
    )
    .is_none());
    assert!(decide(
        &get(),
        &resp(200, &[("cache-control", "max-age=60"), ("set-cookie", "a=b")])
    )
    .is_none());
    assert!(decide(
        &get(),
        &resp(500, &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")])
    )
    .is_none());
    assert!(decide(&get(), &resp(500, &[("cache-control", "max-age=60")])).is_some());
    assert!(decide(&get(), &resp(206, &[("cache-control", "max-age=60")])).is_none());
    let stripped = decide(
        &get(),
        &resp(
            200,
            &[
                ("cache-control", "max-age=60, no-cache=\"set-cookie\""),
                ("set-cookie", "a=b"),
            ],
        ),
    );
    assert!(stripped.is_some_and(|m| !m.headers().contains_key("set-cookie")));
}

#[test]
fn no_cache_is_stored_but_always_stale() {
    let meta = decide(&get(), &resp(200, &[("cache-control", "no-cache, max-age=60")])).unwrap();
    assert!(!meta.is_fresh(SystemTime::now()));
}

#[test]
fn authorization_needs_explicit_permission() {
    let mut req = get();
    req.insert_header("authorization", "Bearer x").unwrap();
    assert!(decide(&req, &resp(200, &[("cache-control", "max-age=60")])).is_none());
    assert!(decide(&req, &resp(200, &[("cache-control", "public, max-age=60")])).is_some());
    assert!(decide(&req, &resp(200, &[("cache-control", "s-maxage=60")])).is_some());
}

#[test]
fn cdn_cache_control_takes_precedence() {
    let headers = [("cache-control", "no-store"), ("cdn-cache-control", "max-age=30")];
    let meta = decide(&get(), &resp(200, &headers)).unwrap();
    assert!((29..=30).contains(&fresh_secs(&meta)));
    let headers = [("cache-control", "max-age=30"), ("cdn-cache-control", "no-store")];
    assert!(decide(&get(), &resp(200, &headers)).is_none());
}

#[test]
fn request_no_store_prevents_storing() {
    let mut req = get();
    req.insert_header("cache-control", "no-store").unwrap();
    assert!(decide(&req, &resp(200, &[("cache-control", "max-age=60")])).is_none());
}

fn request_with(cc: &str) -> RequestHeader {
    let mut req = get();
    req.insert_header("cache-control", cc).unwrap();
    req
}

#[test]
fn request_directives_force_or_relax_freshness() {
    let now = SystemTime::now();
    let fresh = decide(
        &get(),
        &resp(200, &[("cache-control", "max-age=60"), ("age", "20")]),
    )
    .unwrap();
    assert_eq!(request_freshness(&get(), &fresh, now), None);
    assert_eq!(
        request_freshness(&request_with("no-cache"), &fresh, now),
        Some(ForcedFreshness::ForceExpired)
    );
    assert_eq!(
        request_freshness(&request_with("max-age=0"), &fresh, now),
        Some(ForcedFreshness::ForceExpired)
    );
    assert_eq!(
        request_freshness(&request_with("max-age=10"), &fresh, now),
        Some(ForcedFreshness::ForceExpired)
    );
    assert_eq!(request_freshness(&request_with("max-age=30"), &fresh, now), None);
    assert_eq!(
        request_freshness(&request_with("min-fresh=50"), &fresh, now),
        Some(ForcedFreshness::ForceExpired)
    );
    let mut pragma = get();
    pragma.insert_header("pragma", "no-cache").unwrap();
    assert_eq!(
        request_freshness(&pragma, &fresh, now),
        Some(ForcedFreshness::ForceExpired)
    );

    let stale = decide(
        &get(),
        &resp(200, &[("cache-control", "max-age=10"), ("age", "30")]),
    )
    .unwrap();
    assert_eq!(
        request_freshness(&request_with("max-stale"), &stale, now),
        Some(ForcedFreshness::ForceFresh)
    );
    assert_eq!(
        request_freshness(&request_with("max-stale=60"), &stale, now),
        Some(ForcedFreshness::ForceFresh)
    );
    assert_eq!(request_freshness(&request_with("max-stale=5"), &stale, now), None);
    let strict = decide(
        &get(),
        &resp(
            200,
            &[("cache-control", "max-age=10, must-revalidate"), ("age", "30")],
        ),
    )
    .unwrap();
    assert_eq!(request_freshness(&request_with("max-stale"), &strict, now), None);
}
