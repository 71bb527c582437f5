//! The kinds of events this node announces to webhooks. A leaf module: the config checks
//! subscriptions against it, and every part of the node that emits an event names one.

use serde::Serialize;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Stored responses were purged (admin API or `PURGE`).
    Purge,
    /// An origin became healthy or unhealthy.
    OriginHealth,
    /// A new config was applied.
    ConfigReload,
    /// A config was refused; the old one keeps running.
    ConfigRejected,
    /// The cache evicted entries to stay within `max_memory`.
    CacheEviction,
    /// The node started serving.
    NodeStarted,
    /// The node is stopping.
    NodeStopping,
    /// A cluster peer became reachable or unreachable.
    PeerHealth,
}

impl EventKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [EventKind; 8] = [
        EventKind::Purge,
        EventKind::OriginHealth,
        EventKind::ConfigReload,
        EventKind::ConfigRejected,
        EventKind::CacheEviction,
        EventKind::NodeStarted,
        EventKind::NodeStopping,
        EventKind::PeerHealth,
    ];

    /// The name webhooks subscribe to and events carry as `type`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Purge => "purge",
            EventKind::OriginHealth => "origin_health",
            EventKind::ConfigReload => "config_reload",
            EventKind::ConfigRejected => "config_rejected",
            EventKind::CacheEviction => "cache_eviction",
            EventKind::NodeStarted => "node_started",
            EventKind::NodeStopping => "node_stopping",
            EventKind::PeerHealth => "peer_health",
        }
    }

    /// The kind called `name`, if any.
    pub fn named(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Whether a webhook subscribed to `subscription` (a kind's name or `*`) gets this kind.
    pub fn matches(self, subscription: &str) -> bool {
        subscription == "*" || subscription == self.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_serialise_as_names() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::named(kind.name()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
        assert!(EventKind::Purge.matches("*"));
        assert!(!EventKind::Purge.matches("node_started"));
    }
}
