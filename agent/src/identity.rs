//! Who a caller is: the kernel's credentials, mapped to a tenant and an admin
//! flag by the configured rules. Nothing a client says about itself counts.

use std::time::Duration;

use crate::config::{Config, TenantRule};
use crate::core::Caller;

/// Tenant rules and admin lists from the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<TenantRule>,
    admin_uids: Vec<u32>,
    admin_gids: Vec<u32>,
    orphan_grace: Duration,
}

impl Policy {
    /// The policy of a validated configuration.
    pub fn new(config: &Config) -> Policy {
        Policy {
            rules: config.tenant_rules.clone(),
            admin_uids: config.admin_uids.clone(),
            admin_gids: config.admin_gids.clone(),
            orphan_grace: config.orphan_grace,
        }
    }

    /// How long `tenant`'s unattached segments of exited owners wait before
    /// they are orphans: its rule's grace, else the default.
    pub fn orphan_grace(&self, tenant: &str) -> Duration {
        self.rules
            .iter()
            .find(|rule| rule.name == tenant)
            .and_then(|rule| rule.orphan_grace_seconds)
            .map_or(self.orphan_grace, Duration::from_secs)
    }

    /// The caller with these kernel credentials: the first rule listing its
    /// uid or gid names its tenant, else `uid-<uid>`; root and the configured
    /// uids and gids are admins.
    pub fn caller(&self, pid: u32, uid: u32, gid: u32) -> Caller {
        let tenant = self
            .rules
            .iter()
            .find(|rule| rule.uids.contains(&uid) || rule.gids.contains(&gid))
            .map_or_else(|| format!("uid-{uid}"), |rule| rule.name.clone());
        Caller {
            pid,
            uid,
            gid,
            tenant,
            admin: uid == 0 || self.admin_uids.contains(&uid) || self.admin_gids.contains(&gid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_by_uid_or_gid_in_order_and_default_to_uid() {
        let sut = Policy {
            rules: vec![
                TenantRule {
                    name: "payments".into(),
                    uids: vec![1000],
                    gids: vec![],
                    orphan_grace_seconds: Some(5),
                },
                TenantRule {
                    name: "batch".into(),
                    uids: vec![1000],
                    gids: vec![500],
                    orphan_grace_seconds: None,
                },
            ],
            admin_uids: vec![42],
            admin_gids: vec![10],
            orphan_grace: Duration::from_secs(600),
        };
        assert_eq!(sut.orphan_grace("payments"), Duration::from_secs(5));
        assert_eq!(sut.orphan_grace("batch"), Duration::from_secs(600));
        assert_eq!(sut.caller(1, 1000, 1000).tenant, "payments");
        assert_eq!(sut.caller(1, 1001, 500).tenant, "batch");
        assert_eq!(sut.caller(1, 1001, 1001).tenant, "uid-1001");
        assert!(sut.caller(1, 0, 0).admin);
        assert!(sut.caller(1, 42, 1).admin);
        assert!(sut.caller(1, 7, 10).admin);
        assert!(!sut.caller(1, 1001, 1001).admin);
    }
}
