//! Small builders for tests of the pool and of what is built on it
//! (feature `testing` for other crates' tests).

use std::net::Ipv4Addr;

use crate::pool::{AllocKey, AllocRequest, DEFAULT_COOLDOWN_MS, Pool};

/// A request of container `id` for `eth0` of pod `default/pod-<id>`.
pub fn mk_req(id: &str) -> AllocRequest {
    AllocRequest {
        key: AllocKey {
            container_id: id.to_string(),
            ifname: "eth0".to_string(),
        },
        netns: format!("/var/run/netns/{id}"),
        pod_namespace: "default".to_string(),
        pod_name: format!("pod-{id}"),
    }
}

/// A pool of `10.0.0.1..=10.0.0.n` with the default cooldown.
pub fn mk_pool(n: u8) -> Pool {
    let mut p = Pool::new(DEFAULT_COOLDOWN_MS);
    p.set_pool((1..=n).map(|i| Ipv4Addr::new(10, 0, 0, i)));
    p
}
