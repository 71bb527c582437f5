//! Checking one origin entry and one health check: shared by sites and by the route rules that
//! bring their own origin pool.

use super::file::{HealthCheckSection, OriginSpec};
use super::model::*;
use super::resolve::resolve_origin;

/// One `origins` entry, its address resolved.
pub(super) fn freeze_origin(origin: &OriginSpec) -> Result<OriginSettings, String> {
    let (addr, weight, backup) = match origin {
        OriginSpec::Addr(addr) => (addr.as_str(), 1, false),
        OriginSpec::Table(table) => (table.addr.as_str(), table.weight, table.backup),
    };
    if weight == 0 {
        return Err(format!("origin {addr:?}: weight must be at least 1"));
    }
    Ok(OriginSettings {
        addr: resolve_origin(addr)?,
        weight,
        backup,
    })
}

/// One `health_check` table; errors name the field.
pub(super) fn freeze_health_check(
    check: &HealthCheckSection,
) -> Result<HealthCheckSettings, (&'static str, String)> {
    if check.interval.0.is_zero() {
        return Err(("interval", "must be greater than zero".into()));
    }
    if !check.path.starts_with('/') {
        return Err(("path", format!("{:?} must start with /", check.path)));
    }
    if !(100..600).contains(&check.expected_status) {
        return Err((
            "expected_status",
            format!("{} is not an HTTP status", check.expected_status),
        ));
    }
    Ok(HealthCheckSettings {
        kind: check.kind,
        path: check.path.clone(),
        host: check.host.clone(),
        interval: check.interval.0,
        timeout: check.timeout.0,
        expected_status: check.expected_status,
        healthy_after: check.healthy_after.max(1),
        unhealthy_after: check.unhealthy_after.max(1),
    })
}
