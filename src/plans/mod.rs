//! Plans: what each tier may use. This first cut carries the feature sets of the product's pricing;
//! limits, quotas and metering build on it.

use crate::control::Tier;

/// Features of a tier (cumulative: each tier has everything below it).
pub fn features(tier: Tier) -> Vec<&'static str> {
    let mut f = vec!["search", "context"];
    if tier >= Tier::Starter {
        f.extend(["recommendations", "mcp"]);
    }
    if tier >= Tier::Pro {
        f.extend(["custom_domain", "audit_log", "pitr_restore"]);
    }
    if tier >= Tier::Enterprise {
        f.push("sso");
    }
    f
}

/// The cheapest tier that has `feature`.
pub fn required_tier(feature: &str) -> Option<Tier> {
    [Tier::Free, Tier::Starter, Tier::Pro, Tier::Enterprise].into_iter().find(|t| features(*t).contains(&feature))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_cumulative() {
        assert!(!features(Tier::Free).contains(&"mcp"));
        assert!(features(Tier::Starter).contains(&"recommendations"));
        assert!(features(Tier::Enterprise).contains(&"pitr_restore"));
        assert_eq!(required_tier("pitr_restore"), Some(Tier::Pro));
        assert_eq!(required_tier("nope"), None);
    }
}
