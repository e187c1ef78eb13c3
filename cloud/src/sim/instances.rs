//! Instances of the simulated cloud: launched with their primary ENI
//! (device 0) under an EC2-shaped id, with their type's published ENI and
//! address limits; terminated with EC2's leftovers (secondary ENIs stay,
//! detached, for the garbage collector).

use sextant_kit::sync::lock;

use super::{SetupError, SimCloud, State, enis::mac_of, instance_type, subnets::release_all};
use crate::{Attachment, Eni, EniState, InstanceLimits, Tags};

/// A running instance.
pub(super) struct SimInstance {
    /// Its type's limits.
    pub(super) instance_type: InstanceLimits,
}

impl SimCloud {
    /// Launches an instance with its primary ENI (device 0) in `subnet_id`.
    pub fn add_instance(&self, instance_type: &str, subnet_id: &str) -> Result<String, SetupError> {
        let limits = instance_type_limits(instance_type)?;
        let mut st = lock(&self.state);
        let instance_id = loop {
            // Skip ids taken by [`SimCloud::add_instance_with_id`].
            let id = st.id("i");
            if !st.instances.contains_key(&id) {
                break id;
            }
        };
        launch(&mut st, &instance_id, limits, subnet_id, &[])?;
        Ok(instance_id)
    }

    /// Launches an instance under a caller-given id (one a real cloud
    /// already runs, such as the instance a node's `spec.providerID` names),
    /// with its primary ENI (device 0) in `subnet_id` carrying
    /// `security_groups`, as EC2 launches it in the node group's groups.
    pub fn add_instance_with_id(
        &self,
        instance_id: &str,
        instance_type: &str,
        subnet_id: &str,
        security_groups: &[String],
    ) -> Result<(), SetupError> {
        if !is_instance_id(instance_id) {
            return Err(SetupError::BadInstanceId(instance_id.into()));
        }
        let limits = instance_type_limits(instance_type)?;
        let mut st = lock(&self.state);
        if st.instances.contains_key(instance_id) {
            return Err(SetupError::DuplicateInstance(instance_id.into()));
        }
        if let Some(g) = security_groups
            .iter()
            .find(|g| !st.security_groups.contains_key(*g))
        {
            return Err(SetupError::UnknownSecurityGroup(g.clone()));
        }
        launch(&mut st, instance_id, limits, subnet_id, security_groups)
    }

    /// Whether an instance runs (launched and not terminated).
    pub fn has_instance(&self, instance_id: &str) -> bool {
        lock(&self.state).instances.contains_key(instance_id)
    }

    /// The instance type an instance runs as.
    pub fn instance_type_of(&self, instance_id: &str) -> Option<String> {
        lock(&self.state)
            .instances
            .get(instance_id)
            .map(|i| i.instance_type.instance_type.clone())
    }

    /// Terminates an instance: its primary ENI is deleted with it, other ENIs
    /// are detached and left behind (as on EC2, where secondary ENIs created
    /// separately do not delete on termination): garbage for the collector.
    pub fn terminate_instance(&self, instance_id: &str) {
        let mut st = lock(&self.state);
        st.instances.remove(instance_id);
        let attached: Vec<(String, u32)> = st
            .enis
            .values()
            .filter_map(|e| {
                let a = e.attachment.as_ref()?;
                (a.instance_id == instance_id).then(|| (e.id.clone(), a.device_index))
            })
            .collect();
        for (id, device_index) in attached {
            if device_index == 0 {
                if let Some(eni) = st.enis.remove(&id) {
                    release_all(&mut st, &eni);
                }
            } else if let Some(eni) = st.enis.get_mut(&id) {
                eni.attachment = None;
                eni.state = EniState::Available;
            }
        }
    }
}

/// Puts an instance and its primary ENI into `st`.
pub(super) fn launch(
    st: &mut State,
    instance_id: &str,
    limits: InstanceLimits,
    subnet_id: &str,
    security_groups: &[String],
) -> Result<(), SetupError> {
    let eni_id = st.id("eni");
    let subnet = st
        .subnets
        .get_mut(subnet_id)
        .ok_or_else(|| SetupError::UnknownSubnet(subnet_id.into()))?;
    let primary_ip = subnet
        .allocate(&eni_id)
        .ok_or_else(|| SetupError::SubnetFull(subnet_id.into()))?;
    let eni = Eni {
        id: eni_id.clone(),
        subnet_id: subnet_id.into(),
        vpc_id: subnet.subnet.vpc_id.clone(),
        zone: subnet.subnet.zone.clone(),
        mac: mac_of(&eni_id),
        primary_ip,
        secondary_ips: vec![],
        security_groups: security_groups.to_vec(),
        tags: Tags::new(),
        state: EniState::InUse,
        attachment: Some(Attachment {
            id: format!("attach-{eni_id}"),
            instance_id: instance_id.to_owned(),
            device_index: 0,
        }),
    };
    st.enis.insert(eni_id, eni);
    st.instances.insert(
        instance_id.to_owned(),
        SimInstance {
            instance_type: limits,
        },
    );
    Ok(())
}

/// EC2's instance id shape: `i-` and then letters, digits or dashes.
pub fn is_instance_id(id: &str) -> bool {
    id.len() > 2
        && id.starts_with("i-")
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The limits of a type in the simulator's table.
pub(super) fn instance_type_limits(name: &str) -> Result<InstanceLimits, SetupError> {
    instance_type(name).ok_or_else(|| SetupError::UnknownInstanceType(name.into()))
}
