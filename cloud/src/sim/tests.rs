use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use sextant_kit::sync::lock;

use super::*;
use crate::{AssignIps, CreateEni, EniCloud, EniState, EniTags, Error, PageRequest, Tags};

fn quiet(provider: SimProvider) -> SimConfig {
    SimConfig {
        server_throttling: false,
        ..SimConfig::new(provider, 42)
    }
}

fn world(config: SimConfig) -> (SimCloud, String, String, String) {
    let sim = SimCloud::new(config);
    let subnet = sim
        .add_subnet("vpc-1", "us-east-1a", "10.0.0.0/24", Tags::new())
        .unwrap();
    let sg = sim.add_security_group("vpc-1", "pods", Tags::new());
    let instance = sim.add_instance("m5.large", &subnet).unwrap();
    (sim, subnet, sg, instance)
}

fn create(subnet: &str, sg: &str, n: u32) -> CreateEni {
    CreateEni {
        subnet_id: subnet.into(),
        security_groups: vec![sg.into()],
        tags: EniTags {
            cluster: "c".into(),
            node: "n".into(),
            created_at: jiff::Timestamp::UNIX_EPOCH,
        }
        .to_tags(),
        secondary_ips: n,
        description: "test".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn eni_lifecycle_keeps_subnet_accounting_exact() {
    let (sim, subnet, sg, instance) = world(quiet(SimProvider::Aws));
    let free = |sim: &SimCloud| {
        let st = lock(&sim.state);
        st.subnets[&subnet].subnet.available_ips
    };
    // /24: 256 - 5 reserved - 1 primary of the instance.
    assert_eq!(free(&sim), 250);
    let eni = sim.create_eni(&create(&subnet, &sg, 4)).await.unwrap();
    assert_eq!(eni.secondary_ips.len(), 4);
    assert_eq!(free(&sim), 245);
    sim.attach_eni(&eni.id, &instance, 1).await.unwrap();
    let got = sim.assign_ips(&eni.id, &AssignIps::Count(5)).await.unwrap();
    assert_eq!(got.len(), 5);
    let net = sim.instance_network(&instance).await.unwrap();
    assert_eq!(net.enis.len(), 2);
    assert_eq!(net.enis[1].secondary_ips.len(), 9);
    sim.unassign_ips(&eni.id, &got[..2]).await.unwrap();
    assert_eq!(free(&sim), 242);
    let eni = sim.instance_network(&instance).await.unwrap().enis[1].clone();
    assert!(matches!(
        sim.delete_eni(&eni.id).await,
        Err(Error::InvalidRequest { .. })
    ));
    sim.detach_eni(&eni).await.unwrap();
    sim.delete_eni(&eni.id).await.unwrap();
    assert_eq!(free(&sim), 250);
    assert!(matches!(
        sim.delete_eni(&eni.id).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn instance_limits_are_enforced() {
    let (sim, subnet, sg, instance) = world(quiet(SimProvider::Aws));
    // m5.large: 3 ENIs x 10 addresses (9 secondaries).
    let a = sim.create_eni(&create(&subnet, &sg, 9)).await.unwrap();
    sim.attach_eni(&a.id, &instance, 1).await.unwrap();
    assert!(matches!(
        sim.assign_ips(&a.id, &AssignIps::Count(1)).await,
        Err(Error::LimitExceeded { .. })
    ));
    let b = sim.create_eni(&create(&subnet, &sg, 0)).await.unwrap();
    assert!(matches!(
        sim.attach_eni(&b.id, &instance, 1).await,
        Err(Error::InvalidRequest { .. })
    ));
    sim.attach_eni(&b.id, &instance, 2).await.unwrap();
    let c = sim.create_eni(&create(&subnet, &sg, 0)).await.unwrap();
    assert!(matches!(
        sim.attach_eni(&c.id, &instance, 3).await,
        Err(Error::LimitExceeded { .. })
    ));
    assert_eq!(
        sim.instance_limits("m5.large").await.unwrap().ipv4_per_eni,
        10
    );
    assert!(matches!(
        sim.instance_limits("m9.huge").await,
        Err(Error::InvalidRequest { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn specific_address_moves_between_enis_only_with_reassignment() {
    let (sim, subnet, sg, _) = world(quiet(SimProvider::Aws));
    let a = sim.create_eni(&create(&subnet, &sg, 2)).await.unwrap();
    let b = sim.create_eni(&create(&subnet, &sg, 0)).await.unwrap();
    let ip = a.secondary_ips[0];
    let strict = AssignIps::Specific {
        ips: vec![ip],
        allow_reassignment: false,
    };
    assert!(matches!(
        sim.assign_ips(&b.id, &strict).await,
        Err(Error::InvalidRequest { .. })
    ));
    let moving = AssignIps::Specific {
        ips: vec![ip],
        allow_reassignment: true,
    };
    assert_eq!(sim.assign_ips(&b.id, &moving).await.unwrap(), vec![ip]);
    let enis = sim.all_enis();
    let holders: Vec<_> = enis
        .iter()
        .filter(|e| e.secondary_ips.contains(&ip))
        .collect();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].id, b.id);
    // An address outside the subnet is refused.
    let outside = AssignIps::Specific {
        ips: vec![Ipv4Addr::new(192, 168, 0, 9)],
        allow_reassignment: true,
    };
    assert!(matches!(
        sim.assign_ips(&b.id, &outside).await,
        Err(Error::InvalidRequest { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_full_subnet_answers_insufficient_addresses() {
    let sim = SimCloud::new(quiet(SimProvider::Aws));
    let subnet = sim
        .add_subnet("vpc-1", "z", "10.0.0.0/28", Tags::new())
        .unwrap();
    // /28: 16 - 5 = 11 usable.
    let e = sim
        .create_eni(&CreateEni {
            subnet_id: subnet.clone(),
            security_groups: vec![],
            tags: Tags::new(),
            secondary_ips: 9,
            description: String::new(),
        })
        .await
        .unwrap();
    assert!(matches!(
        sim.assign_ips(&e.id, &AssignIps::Count(2)).await,
        Err(Error::InsufficientAddresses { .. })
    ));
    sim.assign_ips(&e.id, &AssignIps::Count(1)).await.unwrap();
    let all: BTreeSet<_> = sim.all_enis()[0].secondary_ips.iter().copied().collect();
    assert_eq!(all.len(), 10, "no address handed out twice");
}

#[tokio::test(start_paused = true)]
async fn vpc_listing_pages_through_every_eni_once() {
    let (sim, subnet, sg, _) = world(quiet(SimProvider::Aws));
    for _ in 0..23 {
        sim.create_eni(&create(&subnet, &sg, 0)).await.unwrap();
    }
    let mut seen = BTreeSet::new();
    let mut page = PageRequest {
        token: None,
        size: 5,
    };
    let mut pages = 0;
    loop {
        let p = sim.list_enis("vpc-1", page.clone()).await.unwrap();
        pages += 1;
        for e in p.items {
            assert!(seen.insert(e.id));
        }
        match p.next {
            Some(t) => page.token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen.len(), 24);
    assert_eq!(pages, 5);
    assert!(
        sim.list_enis("vpc-2", PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(start_paused = true)]
async fn ec2_buckets_throttle_a_burst_beyond_capacity_and_refill() {
    let (sim, subnet, sg, _) = world(SimConfig::new(SimProvider::Aws, 1));
    let sim = std::sync::Arc::new(sim);
    // 120 creates at once: the bucket holds 100.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..120 {
        let (sim, req) = (sim.clone(), create(&subnet, &sg, 0));
        set.spawn(async move { sim.create_eni(&req).await.map(|_| ()) });
    }
    let results = set.join_all().await;
    let throttled = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Throttled { .. })))
        .count();
    assert_eq!(throttled, 20, "published bucket size is 100");
    // Assign draws from its own bucket, untouched by the creates.
    let eni = sim
        .all_enis()
        .into_iter()
        .find(|e| e.attachment.is_none())
        .unwrap();
    sim.assign_ips(&eni.id, &AssignIps::Count(1)).await.unwrap();
    // Refill at 5/s: a second burst ~1.5 s after the first gets 5-10 tokens.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (sim, req) = (sim.clone(), create(&subnet, &sg, 0));
        set.spawn(async move { sim.create_eni(&req).await.is_ok() });
    }
    let ok = set.join_all().await.into_iter().filter(|ok| *ok).count();
    assert!((5..=10).contains(&ok), "refilled {ok}");
    assert_eq!(
        sim.stats().by_action[&Action::CreateEni].throttled as usize,
        20 + (20 - ok)
    );
}

#[tokio::test(start_paused = true)]
async fn alibaba_windows_block_until_the_next_minute() {
    let sim = SimCloud::new(SimConfig {
        describe_latency: Duration::ZERO,
        latency_jitter: Duration::ZERO,
        ..SimConfig::new(SimProvider::Alibaba, 1)
    });
    let results: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..801 {
            v.push(sim.subnets("vpc-1").await.is_ok());
        }
        v
    };
    assert!(results[..800].iter().all(|ok| *ok));
    assert!(!results[800]);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(sim.subnets("vpc-1").await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn injected_faults_follow_their_ratios_and_replay_with_the_seed() {
    async fn run(seed: u64) -> SimStats {
        let sim = SimCloud::new(SimConfig {
            server_throttling: false,
            faults: Faults {
                throttle_ratio: 0.3,
                error_ratio: 0.1,
                ..Faults::default()
            },
            ..SimConfig::new(SimProvider::Aws, seed)
        });
        for _ in 0..2000 {
            let _ = sim.subnets("vpc-1").await;
        }
        sim.stats()
    }
    let a = run(9).await;
    let s = a.by_action[&Action::DescribeSubnets];
    assert_eq!(s.calls, 2000);
    assert!((500..700).contains(&s.throttled), "{s:?}");
    assert!((100..180).contains(&s.failed), "{s:?}");
    assert_eq!(run(9).await, a, "same seed, same run");
    assert_ne!(run(10).await, a);
}

#[tokio::test(start_paused = true)]
async fn terminated_instances_leave_their_extra_enis_behind() {
    let (sim, subnet, sg, instance) = world(quiet(SimProvider::Aws));
    let e = sim.create_eni(&create(&subnet, &sg, 1)).await.unwrap();
    sim.attach_eni(&e.id, &instance, 1).await.unwrap();
    sim.terminate_instance(&instance);
    let left = sim.all_enis();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].state, EniState::Available);
    assert!(matches!(
        sim.instance_network(&instance).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn instances_launch_under_a_given_id_once() {
    let (sim, subnet, sg, generated) = world(SimConfig::instant(SimProvider::Aws, 1));
    sim.add_instance_with_id("i-0abc", "m5.xlarge", &subnet, std::slice::from_ref(&sg))
        .unwrap();
    assert!(sim.has_instance("i-0abc"));
    assert_eq!(sim.instance_type_of("i-0abc").as_deref(), Some("m5.xlarge"));
    let net = sim.instance_network("i-0abc").await.unwrap();
    assert_eq!(net.enis[0].security_groups, vec![sg.clone()]);
    assert_eq!(net.enis[0].attachment.as_ref().unwrap().device_index, 0);
    let again = sim.add_instance_with_id("i-0abc", "m5.large", &subnet, &[]);
    assert_eq!(again, Err(SetupError::DuplicateInstance("i-0abc".into())));
    assert_eq!(
        sim.add_instance_with_id("vm-1", "m5.large", &subnet, &[]),
        Err(SetupError::BadInstanceId("vm-1".into()))
    );
    assert_eq!(
        sim.add_instance_with_id("i-1", "m9.huge", &subnet, &[]),
        Err(SetupError::UnknownInstanceType("m9.huge".into()))
    );
    assert_eq!(
        sim.add_instance_with_id("i-1", "m5.large", &subnet, &["sg-nope".into()]),
        Err(SetupError::UnknownSecurityGroup("sg-nope".into()))
    );
    assert!(!sim.has_instance("i-1"));
    // Generated ids skip the ones taken.
    let taken = format!("i-{:08x}", 100);
    sim.add_instance_with_id(&taken, "m5.large", &subnet, &[])
        .unwrap();
    assert_ne!(generated, taken);
    for _ in 0..200 {
        let id = sim.add_instance("m5.large", &subnet).unwrap();
        assert_ne!(id, taken);
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_token_sent_again_with_the_same_request_returns_the_first_eni_like_ec2() {
    let (sim, subnet, sg, instance) = world(quiet(SimProvider::Aws));
    let request = create(&subnet, &sg, 2);
    let first = sim.create_eni_with_token(&request, "tok-1").await.unwrap();
    sim.attach_eni(&first.id, &instance, 1).await.unwrap();
    let again = sim.create_eni_with_token(&request, "tok-1").await.unwrap();
    assert_eq!(again.id, first.id, "no second ENI");
    assert!(again.attachment.is_some(), "described as it is now");
    assert_eq!(sim.all_enis().len(), 2, "the primary and the one created");
    // The same token with another request is refused, as EC2's
    // IdempotentParameterMismatch.
    let other = create(&subnet, &sg, 3);
    let err = sim
        .create_eni_with_token(&other, "tok-1")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
    // Another token is another ENI.
    let second = sim.create_eni_with_token(&request, "tok-2").await.unwrap();
    assert_ne!(second.id, first.id);
    // EC2 has no token on AssignPrivateIpAddresses: the AWS model ignores it.
    assert!(!sim.honours_client_token(Action::AssignIps));
    sim.assign_ips_with_token(&first.id, &AssignIps::Count(1), "tok-3")
        .await
        .unwrap();
    sim.assign_ips_with_token(&first.id, &AssignIps::Count(1), "tok-3")
        .await
        .unwrap();
    let net = sim.instance_network(&instance).await.unwrap();
    assert_eq!(net.enis[1].secondary_ips.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn the_alibaba_model_honours_a_client_token_on_count_assigns_like_ecs() {
    let (sim, subnet, sg, instance) = world(quiet(SimProvider::Alibaba));
    let eni = sim.create_eni(&create(&subnet, &sg, 1)).await.unwrap();
    sim.attach_eni(&eni.id, &instance, 1).await.unwrap();
    let a = sim
        .assign_ips_with_token(&eni.id, &AssignIps::Count(2), "tok")
        .await
        .unwrap();
    let b = sim
        .assign_ips_with_token(&eni.id, &AssignIps::Count(2), "tok")
        .await
        .unwrap();
    assert_eq!(a, b);
    let net = sim.instance_network(&instance).await.unwrap();
    assert_eq!(net.enis[1].secondary_ips.len(), 3);
}

/// A process holding a simulated cloud restarts: the same VPC laid out
/// again plus the snapshot gives back every instance, ENI and address, and
/// the next addresses handed out are new ones.
#[tokio::test(start_paused = true)]
async fn a_restored_snapshot_is_the_same_cloud_and_hands_out_no_address_twice() {
    let (sim, subnet, sg, instance) = world(quiet(SimProvider::Aws));
    let eni = sim.create_eni(&create(&subnet, &sg, 3)).await.unwrap();
    sim.attach_eni(&eni.id, &instance, 1).await.unwrap();
    let parked = sim.create_eni(&create(&subnet, &sg, 1)).await.unwrap();
    let snap = sim.snapshot();
    let json = serde_json::to_string(&snap).unwrap();

    // The VPC laid out again as before (same ids), then the snapshot.
    let again = SimCloud::new(quiet(SimProvider::Aws));
    assert_eq!(
        again
            .add_subnet("vpc-1", "us-east-1a", "10.0.0.0/24", Tags::new())
            .unwrap(),
        subnet
    );
    assert_eq!(again.add_security_group("vpc-1", "pods", Tags::new()), sg);
    again
        .restore(&serde_json::from_str(&json).unwrap())
        .unwrap();
    assert_eq!(again.snapshot(), snap, "the same instances and ENIs");
    let before: BTreeSet<Ipv4Addr> = again
        .all_enis()
        .iter()
        .flat_map(|e| std::iter::once(e.primary_ip).chain(e.secondary_ips.clone()))
        .collect();
    let fresh = again.create_eni(&create(&subnet, &sg, 4)).await.unwrap();
    assert!(
        std::iter::once(fresh.primary_ip)
            .chain(fresh.secondary_ips.clone())
            .all(|ip| !before.contains(&ip)),
        "restored addresses are taken"
    );
    assert!(!before.is_empty() && again.all_enis().iter().any(|e| e.id == parked.id));
    // A snapshot that does not fit is refused whole.
    let err = again.restore(&snap).unwrap_err();
    assert!(
        err.to_string().contains("refused") || err.to_string().contains("exists"),
        "{err}"
    );
}
