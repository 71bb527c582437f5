//! Virtual hosts: which site serves a request, by `Host` (HTTP/1.1) or `:authority` (HTTP/2);
//! the host itself is read by [`crate::authority`].

use std::collections::HashMap;

/// Maps hosts to site indexes.
#[derive(Debug, Clone, Default)]
pub struct Router {
    by_host: HashMap<String, usize>,
    default: Option<usize>,
}

impl Router {
    /// A router over `(hosts, is_default)` of each site, in order.
    pub fn new<'a>(sites: impl IntoIterator<Item = (&'a [String], bool)>) -> Router {
        let mut router = Router::default();
        for (index, (hosts, is_default)) in sites.into_iter().enumerate() {
            for host in hosts {
                router.by_host.insert(host.clone(), index);
            }
            if is_default {
                router.default = Some(index);
            }
        }
        router
    }

    /// The default site, if one is configured.
    pub fn default_site(&self) -> Option<usize> {
        self.default
    }

    /// The site for a normalised host, falling back to the default site.
    pub fn route(&self, host: &str) -> Option<usize> {
        self.by_host.get(host).copied().or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_host_then_default() {
        let a = ["a.test".to_string()];
        let b = ["b.test".to_string()];
        let router = Router::new([(&a[..], false), (&b[..], true)]);
        assert_eq!(router.route("a.test"), Some(0));
        assert_eq!(router.route("zzz"), Some(1));
        assert_eq!(Router::new([(&a[..], false)]).route("zzz"), None);
    }
}
