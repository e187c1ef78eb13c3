//! The `Cloud` wrapper in front of a provider: rate limits, retries with
//! jitter, deadlines and metrics. Time is tokio's paused clock, so every
//! figure asserted is simulated time, never wall-clock time.

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use sextant_cloud::{
    Action, AssignIps, Backoff, BackoffKind, Cloud, CloudConfig, CloudMetrics, CreateEni, Eni,
    EniCloud, Error, InstanceLimits, InstanceNetwork, Page, PageRequest, RateLimit, RateLimits,
    Result, SecurityGroup, Subnet,
};
use tokio::time::Instant;

/// A provider that records when each call arrived and answers by script.
struct Recorder {
    start: Instant,
    arrivals: Mutex<Vec<(String, Duration)>>,
    /// Each caller (instance id) is throttled this many times before success.
    throttle_first: u32,
    hang: bool,
    not_found: bool,
}

impl Recorder {
    fn new(throttle_first: u32) -> Self {
        Recorder {
            start: Instant::now(),
            arrivals: Mutex::new(Vec::new()),
            throttle_first,
            hang: false,
            not_found: false,
        }
    }
    fn arrivals(&self) -> Vec<(String, Duration)> {
        self.arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl EniCloud for Recorder {
    fn provider(&self) -> &'static str {
        "recorder"
    }
    async fn instance_network(&self, instance_id: &str) -> Result<InstanceNetwork> {
        let seen = {
            let mut a = self
                .arrivals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            a.push((instance_id.to_owned(), self.start.elapsed()));
            a.iter().filter(|(i, _)| i == instance_id).count() as u32
        };
        if self.hang {
            std::future::pending::<()>().await;
        }
        if self.not_found {
            return Err(Error::NotFound {
                action: Action::DescribeInstanceNetwork,
                message: "gone".into(),
            });
        }
        if seen <= self.throttle_first {
            return Err(Error::Throttled {
                action: Action::DescribeInstanceNetwork,
                retry_after: None,
            });
        }
        Ok(InstanceNetwork {
            instance_id: instance_id.to_owned(),
            enis: vec![],
        })
    }
    async fn list_enis(&self, _: &str, _: PageRequest) -> Result<Page<Eni>> {
        unreachable!()
    }
    async fn subnets(&self, _: &str) -> Result<Vec<Subnet>> {
        unreachable!()
    }
    async fn security_groups(&self, _: &str) -> Result<Vec<SecurityGroup>> {
        unreachable!()
    }
    async fn instance_limits(&self, _: &str) -> Result<InstanceLimits> {
        unreachable!()
    }
    async fn create_eni(&self, _: &CreateEni) -> Result<Eni> {
        unreachable!()
    }
    async fn attach_eni(&self, _: &str, _: &str, _: u32) -> Result<()> {
        unreachable!()
    }
    async fn assign_ips(&self, _: &str, _: &AssignIps) -> Result<Vec<Ipv4Addr>> {
        unreachable!()
    }
    async fn unassign_ips(&self, _: &str, _: &[Ipv4Addr]) -> Result<()> {
        unreachable!()
    }
    async fn detach_eni(&self, _: &Eni) -> Result<()> {
        unreachable!()
    }
    async fn delete_eni(&self, _: &str) -> Result<()> {
        unreachable!()
    }
}

fn config(describe: RateLimit, backoff: Backoff) -> CloudConfig {
    CloudConfig {
        call_deadline: Duration::from_secs(5),
        total_deadline: Duration::from_secs(3600),
        backoff,
        limits: RateLimits {
            describe,
            ..RateLimits::aws()
        },
        seed: Some(3),
    }
}

async fn run_callers(cloud: Arc<Cloud>, n: usize) -> Vec<Result<InstanceNetwork>> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let cloud = cloud.clone();
        set.spawn(async move { cloud.instance_network(&format!("i-{i}")).await });
    }
    set.join_all().await
}

#[tokio::test(start_paused = true)]
async fn limiter_holds_a_thousand_concurrent_callers_under_the_rate() {
    let provider = Arc::new(Recorder::new(0));
    let limit = RateLimit {
        per_second: 20.0,
        burst: 10,
    };
    let cloud = Arc::new(Cloud::new(
        provider.clone(),
        config(limit, Backoff::default()),
        CloudMetrics::default(),
    ));
    let results = run_callers(cloud, 1000).await;
    assert!(results.iter().all(Result::is_ok));
    let mut times: Vec<Duration> = provider.arrivals().into_iter().map(|(_, t)| t).collect();
    times.sort();
    assert_eq!(times.len(), 1000);
    // In any one-second window no more than rate + burst calls reach the provider.
    let mut worst = 0;
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| **u < *t + Duration::from_secs(1))
            .count();
        worst = worst.max(in_window);
    }
    assert!(
        worst <= 30,
        "{worst} calls in one second, limit 20/s + burst 10"
    );
    // And the limiter does not over-throttle: 990 calls past the burst at 20/s.
    let last = times.last().unwrap().as_secs_f64();
    assert!(
        (49.0..51.0).contains(&last),
        "last call at {last:.2} s, expected ~49.5 s"
    );
}

/// Second-attempt times of 200 callers all throttled once at the same moment.
async fn second_attempts(kind: BackoffKind) -> Vec<f64> {
    let provider = Arc::new(Recorder::new(1));
    let backoff = Backoff {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(60),
        max_attempts: 5,
        kind,
    };
    let unlimited = RateLimit {
        per_second: 1e6,
        burst: 100_000,
    };
    let cloud = Arc::new(Cloud::new(
        provider.clone(),
        config(unlimited, backoff),
        CloudMetrics::default(),
    ));
    let results = run_callers(cloud.clone(), 200).await;
    assert!(results.iter().all(Result::is_ok));
    let totals = cloud
        .metrics()
        .totals("recorder", Action::DescribeInstanceNetwork);
    assert_eq!(totals.attempts, 400);
    assert_eq!(totals.throttled, 200);
    assert_eq!(totals.retries, 200);
    let arrivals = provider.arrivals();
    let mut seconds = Vec::new();
    for i in 0..200 {
        let id = format!("i-{i}");
        let mine: Vec<_> = arrivals.iter().filter(|(x, _)| *x == id).collect();
        assert_eq!(mine.len(), 2);
        seconds.push(mine[1].1.as_secs_f64());
    }
    seconds
}

#[tokio::test(start_paused = true)]
async fn jittered_retries_spread_out_instead_of_arriving_together() {
    let jittered = second_attempts(BackoffKind::FullJitter).await;
    let plain = second_attempts(BackoffKind::Plain).await;

    // Plain backoff: every client retries at the same instant.
    let first = plain[0];
    assert!(plain.iter().all(|t| (*t - first).abs() < 1e-9));

    // Full jitter over the first retry's window [0, 1 s]: the retries fill it
    // evenly. Check the distribution, not any single delay.
    let mut tenths = [0u32; 10];
    for t in &jittered {
        assert!((0.0..=1.0 + 1e-9).contains(t), "{t}");
        tenths[((t * 10.0) as usize).min(9)] += 1;
    }
    for (i, n) in tenths.iter().enumerate() {
        assert!((8..=35).contains(n), "tenth {i} got {n} of 200: {tenths:?}");
    }
    // Peak arrivals in any 10 ms slot: all 200 without jitter, a handful with.
    let peak = |ts: &[f64]| {
        let mut slots = std::collections::HashMap::new();
        for t in ts {
            *slots.entry((t * 100.0) as i64).or_insert(0) += 1;
        }
        slots.into_values().max().unwrap_or(0)
    };
    assert_eq!(peak(&plain), 200);
    assert!(peak(&jittered) <= 12, "peak {}", peak(&jittered));
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried() {
    let provider = Arc::new(Recorder {
        not_found: true,
        ..Recorder::new(0)
    });
    let cloud = Cloud::new(
        provider.clone(),
        config(RateLimits::aws().describe, Backoff::default()),
        CloudMetrics::default(),
    );
    let err = cloud.instance_network("i-1").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }));
    assert_eq!(provider.arrivals().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_provider_meets_the_deadline_and_retries_stop_at_max_attempts() {
    let provider = Arc::new(Recorder {
        hang: true,
        ..Recorder::new(0)
    });
    let backoff = Backoff {
        max_attempts: 3,
        ..Backoff::default()
    };
    let cloud = Cloud::new(
        provider.clone(),
        config(RateLimits::aws().describe, backoff),
        CloudMetrics::default(),
    );
    let started = Instant::now();
    let err = cloud.instance_network("i-1").await.unwrap_err();
    assert!(matches!(err, Error::DeadlineExceeded { .. }), "{err}");
    assert_eq!(provider.arrivals().len(), 3);
    // Three 5 s deadlines plus two backoffs of at most 0.2 s and 0.4 s.
    assert!(started.elapsed() <= Duration::from_millis(15_600));
    assert!(started.elapsed() >= Duration::from_secs(15));
}

#[tokio::test(start_paused = true)]
async fn throttling_that_outlasts_the_total_deadline_is_surfaced() {
    let provider = Arc::new(Recorder::new(u32::MAX));
    let mut cfg = config(RateLimits::aws().describe, Backoff::default());
    cfg.total_deadline = Duration::from_secs(2);
    let cloud = Cloud::new(provider.clone(), cfg, CloudMetrics::default());
    let err = cloud.instance_network("i-1").await.unwrap_err();
    assert!(matches!(err, Error::Throttled { .. }));
    assert!(provider.arrivals().len() < 8);
}

#[tokio::test(start_paused = true)]
async fn metrics_are_exposed_in_prometheus_text() {
    let provider = Arc::new(Recorder::new(1));
    let metrics = CloudMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(registry.sub_registry_with_prefix("sextant_cloud"));
    let cloud = Cloud::new(
        provider,
        config(RateLimits::aws().describe, Backoff::default()),
        metrics,
    );
    cloud.instance_network("i-1").await.unwrap();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for needle in [
        r#"sextant_cloud_api_calls_total{provider="recorder",action="describe_instance_network",result="ok"} 1"#,
        r#"sextant_cloud_api_calls_total{provider="recorder",action="describe_instance_network",result="throttled"} 1"#,
        r#"sextant_cloud_api_retries_total{provider="recorder",action="describe_instance_network"} 1"#,
        r#"sextant_cloud_api_throttles_total{provider="recorder",action="describe_instance_network"} 1"#,
        "sextant_cloud_api_call_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

// ---- retries of non-idempotent mutations (issue 14, defect 6) ----

mod lost_answers {
    use super::*;
    use sextant_cloud::{
        Tags,
        sim::{Faults, SimCloud, SimConfig, SimProvider},
    };

    /// A simulated VPC whose mutations take effect but lose their answer
    /// with probability `lost`; returns the subnet and security group.
    fn sim(provider: SimProvider, lost: f64) -> (Arc<SimCloud>, String, String) {
        let sim = Arc::new(SimCloud::new(SimConfig::instant(provider, 11)));
        let subnet = sim
            .add_subnet("vpc-1", "us-east-1a", "10.0.0.0/24", Tags::new())
            .expect("subnet");
        let sg = sim.add_security_group("vpc-1", "pods", Tags::new());
        sim.set_faults(Faults {
            lost_answer_ratio: lost,
            ..Faults::default()
        });
        (sim, subnet, sg)
    }

    fn wrapper(sim: &Arc<SimCloud>) -> Cloud {
        Cloud::new(
            sim.clone(),
            CloudConfig {
                seed: Some(5),
                ..CloudConfig::default()
            },
            CloudMetrics::default(),
        )
    }

    fn create(subnet: &str, sg: &str) -> CreateEni {
        CreateEni {
            subnet_id: subnet.into(),
            security_groups: vec![sg.into()],
            tags: Tags::new(),
            secondary_ips: 3,
            description: "pods".into(),
        }
    }

    fn calls(sim: &SimCloud, action: Action) -> u64 {
        sim.stats().by_action.get(&action).map_or(0, |s| s.calls)
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_eni_whose_answers_are_lost_makes_one_eni_across_its_retries() {
        let (sim, subnet, sg) = sim(SimProvider::Aws, 1.0);
        let cloud = wrapper(&sim);
        let err = cloud
            .create_eni(&create(&subnet, &sg))
            .await
            .expect_err("every answer is lost");
        assert!(matches!(err, Error::DeadlineExceeded { .. }), "{err:?}");
        assert!(calls(&sim, Action::CreateEni) > 1, "the call was retried");
        assert_eq!(
            sim.all_enis().len(),
            1,
            "{} CreateNetworkInterface calls made {} ENIs",
            calls(&sim, Action::CreateEni),
            sim.all_enis().len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_eni_retried_after_a_lost_answer_returns_the_eni_it_made() {
        let (sim, subnet, sg) = sim(SimProvider::Aws, 0.5);
        let cloud = wrapper(&sim);
        for _ in 0..5 {
            let eni = cloud
                .create_eni(&create(&subnet, &sg))
                .await
                .expect("answered within the retries");
            assert_eq!(eni.secondary_ips.len(), 3);
        }
        let lost = sim.stats().by_action[&Action::CreateEni].answers_lost;
        assert!(lost > 0, "no answer was lost: the test shows nothing");
        assert_eq!(
            sim.all_enis().len(),
            5,
            "one ENI per intent, {lost} answers lost"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_assign_by_count_whose_answer_is_lost_is_not_sent_again_without_a_token() {
        let (sim, subnet, sg) = sim(SimProvider::Aws, 0.0);
        let eni = sim.create_eni(&create(&subnet, &sg)).await.expect("eni");
        sim.set_faults(Faults {
            lost_answer_ratio: 1.0,
            ..Faults::default()
        });
        let cloud = wrapper(&sim);
        let err = cloud
            .assign_ips(&eni.id, &AssignIps::Count(4))
            .await
            .expect_err("the answer is lost");
        assert!(err.may_have_taken_effect(), "{err:?}");
        let held = sim
            .all_enis()
            .iter()
            .find(|e| e.id == eni.id)
            .map_or(0, |e| e.secondary_ips.len());
        assert_eq!(
            held,
            3 + 4,
            "{} AssignPrivateIpAddresses(4) calls left {held} addresses on the ENI",
            calls(&sim, Action::AssignIps)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_assign_by_count_under_an_ecs_client_token_is_retried_without_extra_addresses() {
        let (sim, subnet, sg) = sim(SimProvider::Alibaba, 0.0);
        let eni = sim.create_eni(&create(&subnet, &sg)).await.expect("eni");
        sim.set_faults(Faults {
            lost_answer_ratio: 0.6,
            ..Faults::default()
        });
        let cloud = wrapper(&sim);
        let mut got = 0;
        for _ in 0..4 {
            got += cloud
                .assign_ips(&eni.id, &AssignIps::Count(2))
                .await
                .expect("answered within the retries")
                .len();
        }
        assert!(sim.stats().by_action[&Action::AssignIps].answers_lost > 0);
        let held = sim
            .all_enis()
            .iter()
            .find(|e| e.id == eni.id)
            .map_or(0, |e| e.secondary_ips.len());
        assert_eq!((got, held), (8, 3 + 8));
    }
}
