//! Tags on the ENIs Sextant creates: which cluster and node they are for and
//! when they were made. Garbage collection touches only ENIs carrying the
//! cluster tag, and judges their age by the creation tag.

use jiff::Timestamp;

use crate::Tags;

/// Cluster the ENI belongs to.
pub const TAG_CLUSTER: &str = "sextant.io/cluster";
/// Node the ENI was created for.
pub const TAG_NODE: &str = "sextant.io/node";
/// Creation time, RFC 3339.
pub const TAG_CREATED_AT: &str = "sextant.io/created-at";

/// What an ENI is for, when not a node's pod ENI.
pub const TAG_ROLE: &str = "sextant.io/role";
/// [`TAG_ROLE`] of an unattached ENI parking reserved fixed IPs of one subnet.
pub const ROLE_PARKING: &str = "fixed-ip-parking";

/// The tag set of a Sextant-created ENI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniTags {
    /// Cluster name.
    pub cluster: String,
    /// Node name.
    pub node: String,
    /// Creation time.
    pub created_at: Timestamp,
}

impl EniTags {
    /// The tags to put on a new ENI.
    pub fn to_tags(&self) -> Tags {
        Tags::from([
            (TAG_CLUSTER.to_owned(), self.cluster.clone()),
            (TAG_NODE.to_owned(), self.node.clone()),
            (TAG_CREATED_AT.to_owned(), self.created_at.to_string()),
        ])
    }

    /// Reads the tags back; `None` when the ENI was not created by Sextant
    /// (no cluster tag) or its tags are damaged.
    pub fn parse(tags: &Tags) -> Option<Self> {
        Some(EniTags {
            cluster: tags.get(TAG_CLUSTER)?.clone(),
            node: tags.get(TAG_NODE).cloned().unwrap_or_default(),
            created_at: tags.get(TAG_CREATED_AT)?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let t = EniTags {
            cluster: "prod".into(),
            node: "ip-10-0-0-1".into(),
            created_at: "2026-11-25T06:00:00Z".parse().unwrap(),
        };
        assert_eq!(EniTags::parse(&t.to_tags()), Some(t));
    }

    #[test]
    fn foreign_or_damaged_tags_are_not_ours() {
        assert_eq!(EniTags::parse(&Tags::new()), None);
        let mut tags = Tags::from([(TAG_CLUSTER.to_owned(), "prod".to_owned())]);
        tags.insert(TAG_CREATED_AT.into(), "yesterday".into());
        assert_eq!(EniTags::parse(&tags), None);
    }
}
