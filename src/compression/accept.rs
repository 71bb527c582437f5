//! `Accept-Encoding` negotiation (RFC 9110 §12.5.3).
//!
//! The proxy only produces gzip and brotli, so a request reduces to which of the two it accepts.
//! Among acceptable codings the proxy prefers br, then gzip, then identity, whatever the
//! client's q-values rank (they only decide acceptability: `q=0` means "never"). A client that
//! refuses identity and accepts neither coding still gets identity: a readable response is
//! friendlier than a 406.

use pingora::http::RequestHeader;

/// The codings a request accepts, of those the proxy can serve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accepted {
    /// gzip (or its alias x-gzip) is acceptable.
    pub gzip: bool,
    /// br is acceptable.
    pub brotli: bool,
}

impl Accepted {
    /// What `req` accepts; no `Accept-Encoding` at all means identity only.
    pub fn of_request(req: &RequestHeader) -> Accepted {
        let mut accepted = Accepted::default();
        let mut gzip_q = None;
        let mut brotli_q = None;
        let mut any_q = None;
        for field in req.headers.get_all(http::header::ACCEPT_ENCODING) {
            let Ok(field) = field.to_str() else { continue };
            for item in field.split(',') {
                let Some((coding, q)) = parse_item(item) else {
                    continue;
                };
                if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                    gzip_q = Some(q);
                } else if coding.eq_ignore_ascii_case("br") {
                    brotli_q = Some(q);
                } else if coding == "*" {
                    any_q = Some(q);
                }
            }
        }
        accepted.gzip = gzip_q.or(any_q).is_some_and(|q| q > 0);
        accepted.brotli = brotli_q.or(any_q).is_some_and(|q| q > 0);
        accepted
    }

    /// The normalised `Accept-Encoding` value sent to origins and used for `Vary` when the
    /// proxy does not compress itself: at most four spellings per URL.
    pub fn header_value(self) -> &'static str {
        match (self.brotli, self.gzip) {
            (true, true) => "br, gzip",
            (true, false) => "br",
            (false, true) => "gzip",
            (false, false) => "",
        }
    }
}

/// One list element: the coding and its q-value in thousandths; `None` when malformed.
fn parse_item(item: &str) -> Option<(&str, u16)> {
    let mut parts = item.split(';');
    let coding = parts.next()?.trim();
    if coding.is_empty() {
        return None;
    }
    let mut q = 1000;
    for param in parts {
        let (name, value) = param.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("q") {
            q = parse_qvalue(value.trim())?;
        }
    }
    Some((coding, q))
}

/// A qvalue (`0`, `0.5`, `1.000`) in thousandths.
fn parse_qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths: u16 = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(value: Option<&str>) -> Accepted {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        if let Some(value) = value {
            req.insert_header("accept-encoding", value).unwrap();
        }
        Accepted::of_request(&req)
    }

    fn both() -> Accepted {
        Accepted {
            gzip: true,
            brotli: true,
        }
    }

    #[test]
    fn listed_codings_are_accepted() {
        assert_eq!(accepted(Some("gzip, deflate, br")), both());
        assert_eq!(
            accepted(Some("GZIP")),
            Accepted {
                gzip: true,
                brotli: false
            }
        );
        assert!(accepted(Some("x-gzip")).gzip);
        assert_eq!(accepted(None), Accepted::default());
        assert_eq!(accepted(Some("")), Accepted::default());
    }

    #[test]
    fn q_zero_means_never() {
        assert!(!accepted(Some("br;q=1, gzip;q=0")).gzip);
        assert!(accepted(Some("br;q=1, gzip;q=0")).brotli);
        assert!(accepted(Some("gzip;q=0.001")).gzip);
        assert!(!accepted(Some("gzip; q=0.000")).gzip);
    }

    #[test]
    fn star_covers_unlisted_codings_only() {
        assert_eq!(accepted(Some("*")), both());
        assert_eq!(
            accepted(Some("*, gzip;q=0")),
            Accepted {
                gzip: false,
                brotli: true
            }
        );
        assert_eq!(accepted(Some("*;q=0, identity")), Accepted::default());
    }

    #[test]
    fn malformed_q_values_make_the_element_unacceptable() {
        assert!(!accepted(Some("gzip;q=2")).gzip);
        assert!(!accepted(Some("gzip;q=0.5x")).gzip);
        assert!(!accepted(Some("gzip;q")).gzip);
        assert_eq!(accepted(Some("gzip;q=0.5, br;q=1.0")), both());
    }

    #[test]
    fn normalised_value_has_four_spellings() {
        assert_eq!(accepted(Some("gzip;q=0.5, br")).header_value(), "br, gzip");
        assert_eq!(accepted(Some("deflate")).header_value(), "");
    }
}
