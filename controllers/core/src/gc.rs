//! ENI garbage collection: Sextant-tagged ENIs of this cluster left
//! unattached longer than a grace period are deleted, a few per round.
//! Untagged ENIs, and those of other clusters, are never touched.

use std::time::Duration;

use jiff::Timestamp;
use sextant_cloud::{Eni, EniState, EniTags, ROLE_PARKING, TAG_ROLE};

/// Settings of the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    /// How long an ENI may stay unattached (AWS VPC CNI: 5 minutes).
    pub grace: Duration,
    /// Most deletions per round, so a large leak drains without a burst.
    pub per_round: usize,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            grace: Duration::from_secs(300),
            per_round: 20,
        }
    }
}

/// The ENIs to delete this round, oldest first.
pub fn plan_gc(enis: &[Eni], cluster: &str, now: Timestamp, policy: GcPolicy) -> Vec<String> {
    let grace = jiff::SignedDuration::try_from(policy.grace).unwrap_or(jiff::SignedDuration::MAX);
    let mut candidates: Vec<(Timestamp, &str)> = enis
        .iter()
        .filter(|e| e.state == EniState::Available && e.attachment.is_none())
        // Parking ENIs hold reserved fixed IPs while no node has them.
        .filter(|e| e.tags.get(TAG_ROLE).map(String::as_str) != Some(ROLE_PARKING))
        .filter_map(|e| {
            let tags = EniTags::parse(&e.tags)?;
            (tags.cluster == cluster && now.duration_since(tags.created_at) >= grace)
                .then_some((tags.created_at, e.id.as_str()))
        })
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .take(policy.per_round)
        .map(|(_, id)| id.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_cloud::{Attachment, Tags};
    use std::net::Ipv4Addr;

    fn eni(id: &str, tags: Tags, attached: bool) -> Eni {
        Eni {
            id: id.into(),
            subnet_id: "s".into(),
            vpc_id: "v".into(),
            zone: "z".into(),
            mac: String::new(),
            primary_ip: Ipv4Addr::new(10, 0, 0, 1),
            secondary_ips: vec![],
            security_groups: vec![],
            tags,
            state: if attached {
                EniState::InUse
            } else {
                EniState::Available
            },
            attachment: attached.then(|| Attachment {
                id: String::new(),
                instance_id: "i".into(),
                device_index: 1,
            }),
        }
    }

    fn ours(cluster: &str, at: &str) -> Tags {
        EniTags {
            cluster: cluster.into(),
            node: "n".into(),
            created_at: at.parse().unwrap(),
        }
        .to_tags()
    }

    #[test]
    fn deletes_only_our_unattached_enis_past_the_grace_period() {
        let now: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let enis = vec![
            eni("old-ours", ours("prod", "2026-11-25T11:50:00Z"), false),
            eni("young-ours", ours("prod", "2026-11-25T11:58:00Z"), false),
            eni("attached-ours", ours("prod", "2026-11-25T10:00:00Z"), true),
            eni(
                "other-cluster",
                ours("staging", "2026-11-25T10:00:00Z"),
                false,
            ),
            eni("untagged", Tags::new(), false),
            eni(
                "parking",
                {
                    let mut t = ours("prod", "2026-11-25T10:00:00Z");
                    t.insert(TAG_ROLE.into(), ROLE_PARKING.into());
                    t
                },
                false,
            ),
            eni(
                "hand-made",
                Tags::from([("sextant.io/cluster".into(), "prod".into())]),
                false,
            ),
        ];
        assert_eq!(
            plan_gc(&enis, "prod", now, GcPolicy::default()),
            vec!["old-ours".to_string()]
        );
    }

    #[test]
    fn a_large_leak_drains_oldest_first_a_batch_per_round() {
        let now: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let enis: Vec<_> = (0..50)
            .map(|i| {
                eni(
                    &format!("e{i:02}"),
                    ours("prod", &format!("2026-11-25T10:{:02}:00Z", 59 - i)),
                    false,
                )
            })
            .collect();
        let round = plan_gc(
            &enis,
            "prod",
            now,
            GcPolicy {
                per_round: 5,
                ..GcPolicy::default()
            },
        );
        assert_eq!(round, ["e49", "e48", "e47", "e46", "e45"]);
    }
}
