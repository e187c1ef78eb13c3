//! Watermarks: a node's spec overrides the operator's defaults.

use sextant_crds::IpamSpec;

/// Operator-wide defaults (flags) for knobs a NodeNetwork leaves unset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpamDefaults {
    /// Free IPs to keep ready.
    pub pre_allocate: u32,
    /// IPs to hold at least.
    pub min_allocate: u32,
    /// Upper bound on IPs held; 0 means the instance's limit.
    pub max_allocate: u32,
    /// Free IPs tolerated above `pre_allocate`.
    pub max_above_watermark: u32,
}

impl Default for IpamDefaults {
    fn default() -> Self {
        IpamDefaults {
            pre_allocate: sextant_crds::DEFAULT_PRE_ALLOCATE,
            min_allocate: 0,
            max_allocate: 0,
            max_above_watermark: 0,
        }
    }
}

/// Effective watermarks of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    /// Free IPs to keep ready (low watermark).
    pub pre_allocate: u32,
    /// IPs to hold at least.
    pub min_allocate: u32,
    /// Cap on IPs held; `None` is the instance's limit.
    pub max_allocate: Option<u32>,
    /// Free IPs tolerated above `pre_allocate` before releasing.
    pub max_above_watermark: u32,
}

impl Watermarks {
    /// The node's own values where set, the operator's elsewhere.
    pub fn resolve(spec: &IpamSpec, defaults: &IpamDefaults) -> Self {
        Watermarks {
            pre_allocate: spec.pre_allocate.unwrap_or(defaults.pre_allocate),
            min_allocate: spec.min_allocate.unwrap_or(defaults.min_allocate),
            max_allocate: spec
                .max_allocate
                .or(Some(defaults.max_allocate))
                .filter(|m| *m > 0),
            max_above_watermark: spec
                .max_above_watermark
                .unwrap_or(defaults.max_above_watermark),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_values_override_operator_defaults() {
        let d = IpamDefaults {
            pre_allocate: 8,
            min_allocate: 2,
            max_allocate: 100,
            max_above_watermark: 4,
        };
        let w = Watermarks::resolve(&IpamSpec::default(), &d);
        assert_eq!(
            w,
            Watermarks {
                pre_allocate: 8,
                min_allocate: 2,
                max_allocate: Some(100),
                max_above_watermark: 4
            }
        );
        let spec = IpamSpec {
            pre_allocate: Some(16),
            max_allocate: Some(0),
            ..IpamSpec::default()
        };
        let w = Watermarks::resolve(&spec, &d);
        assert_eq!(w.pre_allocate, 16);
        assert_eq!(
            w.max_allocate, None,
            "0 on the node lifts the operator's cap"
        );
    }
}
