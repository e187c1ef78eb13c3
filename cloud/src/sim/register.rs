//! [`AutoRegister`]: a [`SimCloud`] that launches, on first sight, the
//! instances a real cloud would already run.
//!
//! Nodes on a real API server (kwok's fake nodes, say) name EC2-shaped
//! instances in `spec.providerID` that the simulator never launched. The
//! first call that names such an instance (a scoped describe or an attach)
//! launches it once under that id: its type and zone come from an
//! [`InstanceDirectory`] (the operator's NodeNetworks, filled from the
//! node's labels and providerID), else from the defaults, and its primary
//! interface goes into the zone's subnet and the VPC's security group. Ids
//! not of the `i-...` shape are never registered, and nothing else is: ENI,
//! subnet and address calls see the simulator unchanged.

use std::{
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use tracing::info;

use super::{INSTANCE_TYPES, SetupError, SimCloud, SimVpc, instance_type, is_instance_id};
use crate::{
    Action, AssignIps, CreateEni, Eni, EniCloud, Error, InstanceLimits, InstanceNetwork, Page,
    PageRequest, Result, SecurityGroup, Subnet,
};

/// What is known about an instance the simulator has not launched yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceHint {
    /// Its instance type (`node.kubernetes.io/instance-type`).
    pub instance_type: Option<String>,
    /// Its zone (`topology.kubernetes.io/zone`, or the providerID's).
    pub zone: Option<String>,
}

/// Where [`AutoRegister`] looks up instances it has not seen.
pub trait InstanceDirectory: Send + Sync {
    /// What is known about `instance_id`, if anything.
    fn lookup(&self, instance_id: &str) -> Option<InstanceHint>;
}

impl<F> InstanceDirectory for F
where
    F: Fn(&str) -> Option<InstanceHint> + Send + Sync,
{
    fn lookup(&self, instance_id: &str) -> Option<InstanceHint> {
        self(instance_id)
    }
}

/// A [`SimCloud`] that launches unknown `i-...` instances when first named.
pub struct AutoRegister {
    sim: Arc<SimCloud>,
    vpc: SimVpc,
    default_instance_type: String,
    directory: Arc<dyn InstanceDirectory>,
    registered: AtomicU64,
}

impl AutoRegister {
    /// Registers into `sim`'s `vpc`; instances the directory knows nothing
    /// about are `default_instance_type` in the VPC's first zone.
    pub fn new(
        sim: Arc<SimCloud>,
        vpc: SimVpc,
        default_instance_type: &str,
        directory: Arc<dyn InstanceDirectory>,
    ) -> Result<Self, SetupError> {
        if instance_type(default_instance_type).is_none() {
            return Err(SetupError::UnknownInstanceType(
                default_instance_type.into(),
            ));
        }
        if vpc.first_zone().is_none() {
            return Err(SetupError::NoZones);
        }
        Ok(AutoRegister {
            sim,
            vpc,
            default_instance_type: default_instance_type.into(),
            directory,
            registered: AtomicU64::new(0),
        })
    }

    /// The simulator underneath.
    pub fn sim(&self) -> &Arc<SimCloud> {
        &self.sim
    }

    /// The simulated VPC.
    pub fn vpc(&self) -> &SimVpc {
        &self.vpc
    }

    /// Instances launched on first sight so far.
    pub fn registered(&self) -> u64 {
        self.registered.load(Ordering::Relaxed)
    }

    /// Launches `instance_id` unless it runs already or is not an instance
    /// id (the simulator then answers as EC2 would: not found).
    fn ensure(&self, action: Action, instance_id: &str) -> Result<()> {
        if !is_instance_id(instance_id) || self.sim.has_instance(instance_id) {
            return Ok(());
        }
        let hint = self.directory.lookup(instance_id).unwrap_or_default();
        let ty = hint
            .instance_type
            .unwrap_or_else(|| self.default_instance_type.clone());
        if instance_type(&ty).is_none() {
            let known: Vec<&str> = INSTANCE_TYPES.iter().map(|(n, ..)| *n).collect();
            return Err(Error::InvalidRequest {
                action,
                message: format!(
                    "instance {instance_id} is a {ty}, which the simulator does not know (it knows {})",
                    known.join(", ")
                ),
            });
        }
        let zone = match hint.zone {
            Some(z) => z,
            None => self.vpc.first_zone().unwrap_or_default().to_owned(),
        };
        let Some(subnet) = self.vpc.subnet_in(&zone) else {
            return Err(Error::InvalidRequest {
                action,
                message: format!(
                    "instance {instance_id} is in zone {zone}, which has no simulated subnet (zones: {})",
                    self.vpc.zone_list()
                ),
            });
        };
        let groups = [self.vpc.security_group.clone()];
        match self
            .sim
            .add_instance_with_id(instance_id, &ty, subnet, &groups)
        {
            Ok(()) => {
                self.registered.fetch_add(1, Ordering::Relaxed);
                info!(instance = instance_id, instance_type = %ty, %zone, subnet, "sim: launched instance on first sight");
                Ok(())
            }
            // A concurrent call launched it first.
            Err(SetupError::DuplicateInstance(_)) => Ok(()),
            Err(SetupError::SubnetFull(s)) => Err(Error::InsufficientAddresses {
                action,
                message: format!(
                    "subnet {s} has no address for the primary interface of {instance_id}"
                ),
            }),
            Err(e) => Err(Error::InvalidRequest {
                action,
                message: format!("launching simulated instance {instance_id}: {e}"),
            }),
        }
    }
}

#[async_trait]
impl EniCloud for AutoRegister {
    fn provider(&self) -> &'static str {
        self.sim.provider()
    }

    async fn instance_network(&self, instance_id: &str) -> Result<InstanceNetwork> {
        self.ensure(Action::DescribeInstanceNetwork, instance_id)?;
        self.sim.instance_network(instance_id).await
    }

    async fn list_enis(&self, vpc_id: &str, page: PageRequest) -> Result<Page<Eni>> {
        self.sim.list_enis(vpc_id, page).await
    }

    async fn subnets(&self, vpc_id: &str) -> Result<Vec<Subnet>> {
        self.sim.subnets(vpc_id).await
    }

    async fn security_groups(&self, vpc_id: &str) -> Result<Vec<SecurityGroup>> {
        self.sim.security_groups(vpc_id).await
    }

    async fn instance_limits(&self, instance_type: &str) -> Result<InstanceLimits> {
        self.sim.instance_limits(instance_type).await
    }

    async fn create_eni(&self, request: &CreateEni) -> Result<Eni> {
        self.sim.create_eni(request).await
    }

    async fn create_eni_with_token(&self, request: &CreateEni, client_token: &str) -> Result<Eni> {
        self.sim.create_eni_with_token(request, client_token).await
    }

    async fn assign_ips_with_token(
        &self,
        eni_id: &str,
        request: &AssignIps,
        client_token: &str,
    ) -> Result<Vec<Ipv4Addr>> {
        self.sim
            .assign_ips_with_token(eni_id, request, client_token)
            .await
    }

    fn honours_client_token(&self, action: crate::Action) -> bool {
        self.sim.honours_client_token(action)
    }

    async fn attach_eni(&self, eni_id: &str, instance_id: &str, device_index: u32) -> Result<()> {
        self.ensure(Action::AttachEni, instance_id)?;
        self.sim.attach_eni(eni_id, instance_id, device_index).await
    }

    async fn assign_ips(&self, eni_id: &str, request: &AssignIps) -> Result<Vec<Ipv4Addr>> {
        self.sim.assign_ips(eni_id, request).await
    }

    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()> {
        self.sim.unassign_ips(eni_id, ips).await
    }

    async fn detach_eni(&self, eni: &Eni) -> Result<()> {
        self.sim.detach_eni(eni).await
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<()> {
        self.sim.delete_eni(eni_id).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::sim::{SimConfig, SimProvider, SimVpcConfig};

    fn sim_vpc() -> (Arc<SimCloud>, SimVpc) {
        let sim = Arc::new(SimCloud::new(SimConfig::instant(SimProvider::Aws, 1)));
        let vpc = SimVpc::create(
            &sim,
            &SimVpcConfig {
                vpc_id: "vpc-sim".into(),
                cidr: "10.0.0.0/16".parse().unwrap(),
                zones: vec!["us-east-1a".into(), "us-east-1b".into()],
            },
        )
        .unwrap();
        (sim, vpc)
    }

    /// A directory of (instance, type, zone).
    fn directory(entries: &[(&str, &str, &str)]) -> Arc<dyn InstanceDirectory> {
        let map: BTreeMap<String, InstanceHint> = entries
            .iter()
            .map(|(id, ty, zone)| {
                (
                    id.to_string(),
                    InstanceHint {
                        instance_type: Some(ty.to_string()),
                        zone: Some(zone.to_string()),
                    },
                )
            })
            .collect();
        Arc::new(move |id: &str| map.get(id).cloned())
    }

    fn auto(entries: &[(&str, &str, &str)]) -> AutoRegister {
        let (sim, vpc) = sim_vpc();
        AutoRegister::new(sim, vpc, "m5.large", directory(entries)).unwrap()
    }

    #[tokio::test]
    async fn the_plain_simulator_does_not_know_a_nodes_instance() {
        let (sim, _) = sim_vpc();
        assert!(matches!(
            sim.instance_network("i-0kwok1").await,
            Err(Error::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn a_nodes_instance_is_launched_on_first_describe_with_its_type_and_zone() {
        let cloud = auto(&[("i-0kwok1", "m5.4xlarge", "us-east-1b")]);
        let net = cloud.instance_network("i-0kwok1").await.unwrap();
        assert_eq!(net.instance_id, "i-0kwok1");
        assert_eq!(net.enis.len(), 1);
        let primary = &net.enis[0];
        assert_eq!(primary.zone, "us-east-1b");
        assert_eq!(
            Some(primary.subnet_id.as_str()),
            cloud.vpc().subnet_in("us-east-1b")
        );
        assert_eq!(primary.vpc_id, "vpc-sim");
        assert_eq!(
            primary.security_groups,
            vec![cloud.vpc().security_group.clone()]
        );
        assert_eq!(
            cloud.sim().instance_type_of("i-0kwok1").as_deref(),
            Some("m5.4xlarge")
        );
        // Once: the second describe finds it.
        cloud.instance_network("i-0kwok1").await.unwrap();
        assert_eq!(cloud.registered(), 1);
        assert_eq!(cloud.sim().all_enis().len(), 1);
    }

    #[tokio::test]
    async fn an_instance_nobody_describes_gets_the_default_type_in_the_first_zone() {
        let cloud = auto(&[]);
        let net = cloud.instance_network("i-0unseen").await.unwrap();
        assert_eq!(net.enis[0].zone, "us-east-1a");
        assert_eq!(
            cloud.sim().instance_type_of("i-0unseen").as_deref(),
            Some("m5.large")
        );
    }

    #[tokio::test]
    async fn an_attach_to_an_unseen_instance_launches_it_too() {
        let cloud = auto(&[("i-0kwok2", "m5.large", "us-east-1a")]);
        let subnet = cloud.vpc().subnet_in("us-east-1a").unwrap().to_owned();
        let eni = cloud
            .create_eni(&CreateEni {
                subnet_id: subnet,
                security_groups: vec![],
                tags: Default::default(),
                secondary_ips: 1,
                description: "parking".into(),
            })
            .await
            .unwrap();
        cloud.attach_eni(&eni.id, "i-0kwok2", 1).await.unwrap();
        let net = cloud.instance_network("i-0kwok2").await.unwrap();
        assert_eq!(net.enis.len(), 2);
        assert_eq!(cloud.registered(), 1);
    }

    #[tokio::test]
    async fn unknown_instance_types_and_zones_are_clear_errors() {
        let cloud = auto(&[
            ("i-0big", "x9.metal", "us-east-1a"),
            ("i-0far", "m5.large", "eu-west-1a"),
        ]);
        let err = cloud.instance_network("i-0big").await.unwrap_err();
        assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
        assert!(err.to_string().contains("x9.metal"), "{err}");
        assert!(err.to_string().contains("m5.large"), "{err}");
        let err = cloud.instance_network("i-0far").await.unwrap_err();
        assert!(
            err.to_string().contains("zone eu-west-1a") && err.to_string().contains("us-east-1b"),
            "{err}"
        );
        assert!(!cloud.sim().has_instance("i-0big") && !cloud.sim().has_instance("i-0far"));
        assert!(matches!(
            AutoRegister::new(sim_vpc().0, sim_vpc().1, "x9.metal", directory(&[])),
            Err(SetupError::UnknownInstanceType(_))
        ));
    }

    #[tokio::test]
    async fn ids_not_of_ec2s_shape_are_never_launched() {
        let cloud = auto(&[]);
        for id in ["", "i-", "vm-123", "i-../x"] {
            assert!(matches!(
                cloud.instance_network(id).await,
                Err(Error::NotFound { .. })
            ));
        }
        assert_eq!(cloud.registered(), 0);
    }
}
