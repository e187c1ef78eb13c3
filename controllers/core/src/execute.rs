//! Carries out a plan's steps against the cloud.

use jiff::Timestamp;
use sextant_cloud::{AssignIps, CreateEni, EniCloud, EniTags, Error as CloudError};
use sextant_crds::{NodeNetworkStatus, ReleaseState};
use tracing::{info, warn};

use super::{gc::Attaching, plan::Step};

/// Who the ENIs are for.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// Cluster name, tagged on every ENI.
    pub cluster: &'a str,
    /// Node name.
    pub node: &'a str,
    /// Instance id.
    pub instance_id: &'a str,
    /// Where a created ENI is registered until its attach ends, so the
    /// collector leaves it alone however long the attach waits.
    pub attaching: &'a Attaching,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Executed {
    /// Kinds of the steps that succeeded.
    pub done: Vec<&'static str>,
    /// The first error, if any step failed.
    pub error: Option<CloudError>,
}

impl Executed {
    /// Whether the cloud changed.
    pub fn mutated(&self) -> bool {
        !self.done.is_empty()
    }
}

/// Runs `steps` in order; stops at the first error. Addresses unassigned
/// successfully are marked `released` in `status`.
pub async fn execute(
    cloud: &dyn EniCloud,
    target: Target<'_>,
    steps: Vec<Step>,
    status: &mut NodeNetworkStatus,
    now: Timestamp,
) -> Executed {
    let mut out = Executed::default();
    for step in steps {
        let kind = step.kind();
        let result = match step {
            Step::CreateEni {
                subnet_id,
                security_groups,
                device_index,
                ips,
            } => {
                create_and_attach(
                    cloud,
                    target,
                    CreateEni {
                        subnet_id,
                        security_groups,
                        tags: EniTags {
                            cluster: target.cluster.to_owned(),
                            node: target.node.to_owned(),
                            created_at: now,
                        }
                        .to_tags(),
                        secondary_ips: ips,
                        description: format!("sextant pod ENI for {}", target.node),
                    },
                    device_index,
                )
                .await
            }
            Step::AssignIps { eni_id, count } => cloud
                .assign_ips(&eni_id, &AssignIps::Count(count))
                .await
                .map(|_| ()),
            Step::UnassignIps { eni_id, ips } => {
                let r = cloud.unassign_ips(&eni_id, &ips).await;
                if r.is_ok() {
                    for ip in &ips {
                        status
                            .release
                            .insert(ip.to_string(), ReleaseState::Released);
                    }
                }
                r
            }
        };
        match result {
            Ok(()) => out.done.push(kind),
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    out
}

/// Creates an ENI and attaches it; if the attach fails the ENI is deleted
/// again (best effort: a leftover carries our tags and the collector removes
/// it after the grace period; a NotFound means it is gone already). From
/// its creation to the end of this the ENI is in [`Target::attaching`].
async fn create_and_attach(
    cloud: &dyn EniCloud,
    target: Target<'_>,
    request: CreateEni,
    device_index: u32,
) -> Result<(), CloudError> {
    let eni = cloud.create_eni(&request).await?;
    let _attaching = target.attaching.begin(&eni.id);
    match cloud
        .attach_eni(&eni.id, target.instance_id, device_index)
        .await
    {
        Ok(()) => {
            info!(node = target.node, eni = %eni.id, device_index, ips = request.secondary_ips, "ENI attached");
            Ok(())
        }
        Err(e) => {
            match cloud.delete_eni(&eni.id).await {
                Ok(()) | Err(CloudError::NotFound { .. }) => {}
                Err(del) => {
                    warn!(node = target.node, eni = %eni.id, error = %del, "rollback of unattached ENI failed; garbage collection will remove it")
                }
            }
            Err(e)
        }
    }
}
