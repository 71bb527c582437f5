//! Failures: whose fault they are, what status the client gets, and the origin's total time
//! budget.

use pingora::{Error, ErrorSource, ErrorType, Result};

use super::ctx::RequestCtx;

/// An error caused by the client side of the request, never by an origin.
pub fn is_client_fault(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
}

/// The status sent to the client for a proxying error (0: the client is gone, send nothing).
pub fn error_status(e: &Error) -> u16 {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(code) => *code,
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => 504,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// Short reason for a failed forward, for `Cache-Status` `detail`.
pub fn error_detail(e: &Error) -> &'static str {
    use ErrorType::*;
    match e.etype() {
        etype if *etype == NO_HEALTHY_ORIGIN => "no-healthy-origin",
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => "origin-timeout",
        ConnectRefused | ConnectNoRoute | ConnectError | SocketError => "origin-unreachable",
        HTTPStatus(_) => "origin-error",
        _ if e.esource() == &ErrorSource::Upstream => "origin-error",
        _ => "proxy-error",
    }
}

/// Every origin of the site is failing its health checks or ejected: nothing was tried.
pub const NO_HEALTHY_ORIGIN: ErrorType = ErrorType::Custom("no healthy origin");

/// The body of the error response for `e`: a short reason where one helps the operator reading
/// it, else none.
pub fn error_body(e: &Error) -> &'static str {
    if *e.etype() == NO_HEALTHY_ORIGIN {
        "no healthy origin: every origin of this site fails its health checks or is ejected\n"
    } else {
        ""
    }
}

/// An upstream timeout error once the origin response has taken longer than `total_timeout`.
pub fn check_total_timeout(ctx: &RequestCtx) -> Result<()> {
    let limit = ctx.site().and_then(|s| s.settings.total_timeout);
    let elapsed = ctx.upstream.started.map(|t| t.elapsed());
    match (limit, elapsed) {
        (Some(limit), Some(elapsed)) if elapsed > limit => {
            Err(Error::explain(ErrorType::ReadTimedout, "origin response exceeded total_timeout").into_up())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_504_and_other_origin_errors_502() {
        let timeout = Error::explain(ErrorType::ReadTimedout, "slow").into_up();
        assert_eq!(error_status(&timeout), 504);
        let refused = Error::explain(ErrorType::ConnectRefused, "down").into_up();
        assert_eq!(error_status(&refused), 502);
    }
}
