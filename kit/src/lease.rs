//! Leader election on a `coordination.k8s.io/v1` Lease (feature `lease`), so
//! that of several replicas of a controller only one runs the controllers and
//! talks to the cloud. Who writes (the field manager) and what time it is
//! (the [`Clock`]) are the caller's.
//!
//! ```text
//!  every renew period:  GET lease ─▶ decide (pure) ─▶ Create: POST
//!                                                   ├▶ Acquire / Renew: PUT with the read resourceVersion
//!                                                   └▶ Held: wait
//!  409 on POST/PUT = another replica won the race ─▶ not leader
//!  no successful renewal within the renew deadline ─▶ step down
//! ```
//!
//! The PUT carries the resourceVersion that was read, so two replicas that
//! both see an expired lease cannot both take it: the API server accepts
//! only the first write.

use std::{sync::Arc, time::Duration};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use prometheus_client::{metrics::gauge::Gauge, registry::Registry};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use crate::{admin::Readiness, errors::Chain as ErrorChain};

/// The clock lease rounds read; tests pin it or drive it from tokio's time.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What to do with the lease this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// There is no Lease object: create one naming us.
    Create,
    /// Nobody holds it, or the holder let it expire: take it over.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a live lease.
    Held {
        /// The holder's identity.
        holder: String,
        /// When it expires unless renewed.
        expires: Timestamp,
    },
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Decides from the lease as read (`None`: it does not exist) what `me`
/// does at `now`. The lease's own duration counts; `duration` stands in when
/// it has none.
pub fn decide(
    lease: Option<&Lease>,
    me: &str,
    now: Timestamp,
    duration: Duration,
) -> LeaseDecision {
    let Some(lease) = lease else {
        return LeaseDecision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder.is_empty() {
        return LeaseDecision::Acquire;
    }
    if holder == me {
        return LeaseDecision::Renew;
    }
    let Some(MicroTime(last)) = spec.renew_time.or(spec.acquire_time) else {
        return LeaseDecision::Acquire;
    };
    let secs = spec
        .lease_duration_seconds
        .filter(|s| *s > 0)
        .unwrap_or_else(|| seconds(duration));
    let expires = last.saturating_add(SignedDuration::from_secs(i64::from(secs)));
    match expires {
        Ok(expires) if expires > now => LeaseDecision::Held { holder, expires },
        _ => LeaseDecision::Acquire,
    }
}

/// Where the lease lives and who we are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub duration: Duration,
    /// Field manager of the Lease writes (the binary's own).
    pub field_manager: String,
}

impl LeaseConfig {
    /// How often the leader renews (and others retry): a third of the duration.
    pub fn renew_period(&self) -> Duration {
        (self.duration / 3).max(Duration::from_millis(100))
    }

    /// How long the leader keeps leading without a successful renewal:
    /// two thirds of the duration, so it stops before others may take over.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}

/// The lease to write for `decision` (`Held` writes nothing).
pub fn desired_lease(
    current: Option<&Lease>,
    decision: &LeaseDecision,
    config: &LeaseConfig,
    now: Timestamp,
) -> Option<Lease> {
    let mut lease = current.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let mut spec = lease.spec.take().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    match decision {
        LeaseDecision::Held { .. } => return None,
        LeaseDecision::Create => {
            spec = LeaseSpec {
                lease_transitions: Some(0),
                acquire_time: Some(MicroTime(now)),
                ..LeaseSpec::default()
            };
        }
        LeaseDecision::Acquire => {
            spec.lease_transitions = Some(transitions.saturating_add(1));
            spec.acquire_time = Some(MicroTime(now));
        }
        LeaseDecision::Renew => {
            spec.acquire_time.get_or_insert(MicroTime(now));
        }
    }
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds = Some(seconds(config.duration));
    spec.renew_time = Some(MicroTime(now));
    lease.spec = Some(spec);
    Some(lease)
}

/// A failed lease round.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Reading the lease failed.
    #[error("reading Lease {namespace}/{name}")]
    Read {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the lease failed (other than losing a race).
    #[error("writing Lease {namespace}/{name}")]
    Write {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Whether this replica leads: `<prefix>_leader` (1 or 0) and
/// `<prefix>_leader_changes_total`, under the registry the binary gives.
#[derive(Clone, Default)]
pub struct LeaderMetrics {
    leader: Gauge,
    transitions: prometheus_client::metrics::counter::Counter,
}

impl LeaderMetrics {
    /// Registers under `registry` (the binary's own, e.g. `sextant_operator`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "leader",
            "Whether this replica holds the leader lease",
            self.leader.clone(),
        );
        registry.register(
            "leader_changes",
            "Times this replica became or stopped being the leader",
            self.transitions.clone(),
        );
    }
}

/// Runs leader election for one replica.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    clock: Clock,
    metrics: LeaderMetrics,
    readiness: Option<Readiness>,
}

impl LeaderElector {
    /// An elector for the lease `config` names.
    pub fn new(
        client: kube::Client,
        config: LeaseConfig,
        clock: Clock,
        metrics: LeaderMetrics,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            clock,
            metrics,
            readiness: None,
        }
    }

    /// Publishes each round's outcome on `readiness`: ready once a round
    /// read the Lease (leading or standing by), not ready with the reason
    /// while rounds fail or hang, so `/readyz` says when this replica cannot
    /// reach the API server (a rollout then waits, instead of replacing a
    /// working replica with a broken one).
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    fn publish(&self, reason: Option<String>) {
        if let Some(r) = &self.readiness {
            match reason {
                None => r.set(true),
                Some(reason) => r.set_not_ready(reason),
            }
        }
    }

    /// Settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn read_error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Read {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    fn write_error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Write {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    /// One round: read, decide, write. `Ok(true)` when we hold the lease
    /// after it; losing a race (409) is `Ok(false)`.
    pub async fn try_lead(&self) -> Result<bool, LeaseError> {
        let now = (self.clock)();
        let current = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.read_error(e))?;
        let decision = decide(
            current.as_ref(),
            &self.config.identity,
            now,
            self.config.duration,
        );
        let Some(lease) = desired_lease(current.as_ref(), &decision, &self.config, now) else {
            if let LeaseDecision::Held { holder, expires } = &decision {
                debug!(%holder, %expires, "lease held by another replica");
            }
            return Ok(false);
        };
        let pp = PostParams {
            field_manager: Some(self.config.field_manager.clone()),
            ..PostParams::default()
        };
        let written = match decision {
            LeaseDecision::Create => self.api.create(&pp, &lease).await,
            _ => self.api.replace(&self.config.name, &pp, &lease).await,
        };
        match written {
            Ok(_) => {
                if decision != LeaseDecision::Renew {
                    info!(identity = %self.config.identity, ?decision, "acquired the leader lease");
                }
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => {
                debug!(?decision, "lost the lease race");
                Ok(false)
            }
            Err(e) => Err(self.write_error(e)),
        }
    }

    /// Gives the lease up (on shutdown) so another replica need not wait for
    /// it to expire. Only a lease we still hold is touched.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.read_error(e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime((self.clock)()));
        let pp = PostParams {
            field_manager: Some(self.config.field_manager.clone()),
            ..PostParams::default()
        };
        match self.api.replace(&self.config.name, &pp, &lease).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(()),
            Err(e) => Err(self.write_error(e)),
        }
    }

    /// Runs rounds forever, publishing whether we lead on `leading`. A
    /// leader that cannot renew within the renew deadline steps down, also
    /// when the API server stops answering: a round that has not finished by
    /// then is given up, since the Lease expires for the other replicas all
    /// the same.
    pub async fn run(&self, leading: watch::Sender<bool>) {
        // When the round that last renewed began: the lease's renewTime was
        // read from the clock then, so the deadline counts from there.
        let mut last_renewed: Option<Instant> = None;
        loop {
            let was = *leading.borrow();
            let started = Instant::now();
            let deadline = last_renewed.unwrap_or(started) + self.config.renew_deadline();
            let now_leading = match tokio::time::timeout_at(deadline, self.try_lead()).await {
                Ok(Ok(held)) => {
                    last_renewed = held.then_some(started);
                    self.publish(None);
                    held
                }
                Ok(Err(e)) => {
                    warn!(error = %ErrorChain(&e), "lease round failed");
                    self.publish(Some(format!("lease round failed: {}", ErrorChain(&e))));
                    Instant::now() < deadline && last_renewed.is_some()
                }
                Err(_) => {
                    warn!(timeout = ?self.config.renew_deadline(), "lease round timed out");
                    self.publish(Some(format!(
                        "lease round timed out after {:?}: the API server does not answer",
                        self.config.renew_deadline()
                    )));
                    false
                }
            };
            if !now_leading {
                last_renewed = None;
            }
            if now_leading != was {
                self.metrics.transitions.inc();
                if now_leading {
                    info!(identity = %self.config.identity, "leading");
                } else {
                    warn!(identity = %self.config.identity, "stepped down: lease lost");
                }
            }
            self.metrics.leader.set(i64::from(now_leading));
            leading.send_replace(now_leading);
            // A leader whose renewal failed retries soon, a few times before
            // its deadline, and at the deadline steps down.
            let renewed = last_renewed == Some(started);
            let pause = if now_leading && !renewed {
                self.config.renew_period() / 4
            } else {
                self.config.renew_period()
            };
            let next = Instant::now() + pause;
            let next = last_renewed.map_or(next, |t| next.min(t + self.config.renew_deadline()));
            tokio::time::sleep_until(next).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn mk_lease(holder: Option<&str>, renewed: &str, secs: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("sextant-operator".into()),
                namespace: Some("sextant-system".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(MicroTime(ts("2026-11-25T11:00:00Z"))),
                renew_time: Some(MicroTime(ts(renewed))),
                lease_transitions: Some(2),
                ..LeaseSpec::default()
            }),
        }
    }

    fn config() -> LeaseConfig {
        LeaseConfig {
            namespace: "sextant-system".into(),
            name: "sextant-operator".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
            field_manager: "sextant-operator".into(),
        }
    }

    const NOW: &str = "2026-11-25T12:00:00Z";
    const D: Duration = Duration::from_secs(15);

    #[test]
    fn missing_lease_is_created() {
        assert_eq!(decide(None, "me", ts(NOW), D), LeaseDecision::Create);
        let l = desired_lease(None, &LeaseDecision::Create, &config(), ts(NOW)).unwrap();
        let spec = l.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.renew_time, Some(MicroTime(ts(NOW))));
        assert_eq!(l.metadata.namespace.as_deref(), Some("sextant-system"));
    }

    #[test]
    fn a_live_lease_of_another_replica_is_left_alone() {
        let l = mk_lease(Some("other"), "2026-11-25T11:59:50Z", 15);
        assert_eq!(
            decide(Some(&l), "me", ts(NOW), D),
            LeaseDecision::Held {
                holder: "other".into(),
                expires: ts("2026-11-25T12:00:05Z")
            }
        );
        assert_eq!(
            desired_lease(
                Some(&l),
                &decide(Some(&l), "me", ts(NOW), D),
                &config(),
                ts(NOW)
            ),
            None
        );
    }

    #[test]
    fn an_expired_or_free_lease_is_taken_over_with_a_transition() {
        let expired = mk_lease(Some("other"), "2026-11-25T11:59:45Z", 15);
        assert_eq!(
            decide(Some(&expired), "me", ts(NOW), D),
            LeaseDecision::Acquire
        );
        let free = mk_lease(None, "2026-11-25T11:59:59Z", 15);
        assert_eq!(
            decide(Some(&free), "me", ts(NOW), D),
            LeaseDecision::Acquire
        );
        let l = desired_lease(Some(&expired), &LeaseDecision::Acquire, &config(), ts(NOW)).unwrap();
        assert_eq!(
            l.metadata.resource_version.as_deref(),
            Some("7"),
            "the write is guarded by what was read"
        );
        let spec = l.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(NOW))));
    }

    #[test]
    fn our_own_lease_is_renewed_keeping_its_acquire_time() {
        let ours = mk_lease(Some("me"), "2026-11-25T11:59:55Z", 15);
        assert_eq!(decide(Some(&ours), "me", ts(NOW), D), LeaseDecision::Renew);
        let spec = desired_lease(Some(&ours), &LeaseDecision::Renew, &config(), ts(NOW))
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(
            spec.acquire_time,
            Some(MicroTime(ts("2026-11-25T11:00:00Z")))
        );
        assert_eq!(spec.renew_time, Some(MicroTime(ts(NOW))));
        assert_eq!(spec.lease_transitions, Some(2));
    }

    #[test]
    fn a_lease_without_duration_uses_ours_and_one_without_times_is_free() {
        let mut l = mk_lease(Some("other"), "2026-11-25T11:59:50Z", 0);
        assert!(matches!(
            decide(Some(&l), "me", ts(NOW), D),
            LeaseDecision::Held { .. }
        ));
        assert_eq!(
            decide(Some(&l), "me", ts(NOW), Duration::from_secs(5)),
            LeaseDecision::Acquire
        );
        if let Some(s) = l.spec.as_mut() {
            s.renew_time = None;
            s.acquire_time = None;
        }
        assert_eq!(decide(Some(&l), "me", ts(NOW), D), LeaseDecision::Acquire);
        let bare = Lease::default();
        assert_eq!(
            decide(Some(&bare), "me", ts(NOW), D),
            LeaseDecision::Acquire
        );
    }

    #[test]
    fn renewals_come_well_before_the_deadline() {
        let c = config();
        assert_eq!(c.renew_period(), Duration::from_secs(5));
        assert_eq!(c.renew_deadline(), Duration::from_secs(10));
    }

    /// The lease round trips, against a mocked API server (feature
    /// `testing`: `cargo test -p sextant-kit --features testing`).
    #[cfg(feature = "testing")]
    mod round_trips {
        use super::*;

        use http::Method;
        use serde_json::{Value, json};

        use crate::testing::{ApiServerVerifier, mock_client, status_failure};

        const LEASE: &str =
            "/apis/coordination.k8s.io/v1/namespaces/sextant-system/leases/sextant-operator";
        const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/sextant-system/leases?&fieldManager=sextant-operator";
        const PUT_LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/sextant-system/leases/sextant-operator?&fieldManager=sextant-operator";
        /// [`NOW`] as the API server spells a `MicroTime`.
        const NOW_MICRO: &str = "2026-11-25T12:00:00.000000Z";

        fn elector_with(config: LeaseConfig, clock: Clock) -> (LeaderElector, ApiServerVerifier) {
            let (client, server) = mock_client();
            let elector = LeaderElector::new(client, config, clock, LeaderMetrics::default());
            (elector, server)
        }

        fn elector() -> (LeaderElector, ApiServerVerifier) {
            let now = ts(NOW);
            elector_with(config(), Arc::new(move || now))
        }

        fn not_found() -> Value {
            status_failure(404, "NotFound")
        }

        #[tokio::test]
        async fn a_missing_lease_is_created_naming_us() {
            let (elector, mut server) = elector();
            let script = async {
                server.expect(Method::GET, LEASE, 404, not_found()).await;
                server
                    .expect(
                        Method::POST,
                        LEASES,
                        201,
                        json!(mk_lease(Some("me"), NOW, 15)),
                    )
                    .await
            };
            let (led, created) = tokio::join!(elector.try_lead(), script);
            assert!(led.unwrap());
            assert_eq!(created.content_type.as_deref(), Some("application/json"));
            assert_eq!(
                created.body,
                json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": { "name": "sextant-operator", "namespace": "sextant-system" },
                    "spec": {
                        "holderIdentity": "me",
                        "leaseDurationSeconds": 15,
                        "acquireTime": NOW_MICRO,
                        "renewTime": NOW_MICRO,
                        "leaseTransitions": 0,
                    },
                })
            );
            drop(elector);
            server.expect_no_more().await;
        }

        #[tokio::test]
        async fn a_live_lease_of_another_replica_is_read_and_not_written() {
            let (elector, mut server) = elector();
            let live = mk_lease(Some("other"), "2026-11-25T11:59:50Z", 15);
            let (led, read) = tokio::join!(
                elector.try_lead(),
                server.expect(Method::GET, LEASE, 200, json!(live)),
            );
            assert!(!led.unwrap());
            assert_eq!(read.body, Value::Null);
            drop(elector);
            server.expect_no_more().await;
        }

        #[tokio::test]
        async fn an_expired_lease_is_taken_over_by_a_put_guarded_by_its_resource_version() {
            let (elector, mut server) = elector();
            let expired = mk_lease(Some("other"), "2026-11-25T11:59:45Z", 15);
            let script = async {
                server.expect(Method::GET, LEASE, 200, json!(expired)).await;
                server
                    .expect(Method::PUT, PUT_LEASE, 200, json!(expired))
                    .await
            };
            let (led, put) = tokio::join!(elector.try_lead(), script);
            assert!(led.unwrap());
            assert_eq!(put.content_type.as_deref(), Some("application/json"));
            assert_eq!(put.body["metadata"]["resourceVersion"], "7");
            assert_eq!(
                put.body["spec"],
                json!({
                    "holderIdentity": "me",
                    "leaseDurationSeconds": 15,
                    "acquireTime": NOW_MICRO,
                    "renewTime": NOW_MICRO,
                    "leaseTransitions": 3,
                })
            );
            drop(elector);
            server.expect_no_more().await;
        }

        #[tokio::test]
        async fn our_own_lease_is_renewed_by_a_put_keeping_its_acquire_time() {
            let (elector, mut server) = elector();
            let ours = mk_lease(Some("me"), "2026-11-25T11:59:55Z", 15);
            let script = async {
                server.expect(Method::GET, LEASE, 200, json!(ours)).await;
                server
                    .expect(Method::PUT, PUT_LEASE, 200, json!(ours))
                    .await
            };
            let (led, put) = tokio::join!(elector.try_lead(), script);
            assert!(led.unwrap());
            assert_eq!(put.body["metadata"]["resourceVersion"], "7");
            assert_eq!(
                put.body["spec"]["acquireTime"],
                "2026-11-25T11:00:00.000000Z"
            );
            assert_eq!(put.body["spec"]["renewTime"], NOW_MICRO);
            assert_eq!(put.body["spec"]["leaseTransitions"], 2);
            drop(elector);
            server.expect_no_more().await;
        }

        #[tokio::test]
        async fn losing_the_race_to_write_the_lease_means_not_leading_this_round() {
            // Another replica wrote the expired lease first: 409 Conflict.
            let (elector, mut server) = elector();
            let expired = mk_lease(Some("other"), "2026-11-25T11:59:45Z", 15);
            let script = async {
                server.expect(Method::GET, LEASE, 200, json!(expired)).await;
                server
                    .expect(Method::PUT, PUT_LEASE, 409, status_failure(409, "Conflict"))
                    .await;
                // Another replica created the lease first: 409 AlreadyExists.
                server.expect(Method::GET, LEASE, 404, not_found()).await;
                server
                    .expect(
                        Method::POST,
                        LEASES,
                        409,
                        status_failure(409, "AlreadyExists"),
                    )
                    .await;
            };
            let (lost_put, lost_post) = tokio::join!(
                async { (elector.try_lead().await, elector.try_lead().await) },
                script
            )
            .0;
            assert!(!lost_put.unwrap());
            assert!(!lost_post.unwrap());
            drop(elector);
            server.expect_no_more().await;
        }

        #[tokio::test]
        async fn a_failed_read_or_write_is_an_error_not_a_verdict() {
            let (elector, mut server) = elector();
            let expired = mk_lease(Some("other"), "2026-11-25T11:59:45Z", 15);
            let script = async {
                server
                    .expect(
                        Method::GET,
                        LEASE,
                        500,
                        status_failure(500, "InternalError"),
                    )
                    .await;
                server.expect(Method::GET, LEASE, 200, json!(expired)).await;
                server
                    .expect(
                        Method::PUT,
                        PUT_LEASE,
                        500,
                        status_failure(500, "InternalError"),
                    )
                    .await;
            };
            let ((read, write), ()) = tokio::join!(
                async { (elector.try_lead().await, elector.try_lead().await) },
                script
            );
            assert!(matches!(read, Err(LeaseError::Read { .. })), "{read:?}");
            assert!(matches!(write, Err(LeaseError::Write { .. })), "{write:?}");
            drop(elector);
            server.expect_no_more().await;
        }

        #[tokio::test]
        async fn release_frees_only_a_lease_we_hold() {
            let (elector, mut server) = elector();
            let ours = mk_lease(Some("me"), "2026-11-25T11:59:55Z", 15);
            let theirs = mk_lease(Some("other"), "2026-11-25T11:59:55Z", 15);
            let script = async {
                server.expect(Method::GET, LEASE, 200, json!(ours)).await;
                let put = server
                    .expect(Method::PUT, PUT_LEASE, 200, json!(ours))
                    .await;
                server.expect(Method::GET, LEASE, 200, json!(theirs)).await;
                server.expect(Method::GET, LEASE, 404, not_found()).await;
                put
            };
            let (released, put) = tokio::join!(
                async {
                    [
                        elector.release().await.is_ok(),
                        elector.release().await.is_ok(),
                        elector.release().await.is_ok(),
                    ]
                },
                script
            );
            assert_eq!(released, [true; 3]);
            assert_eq!(put.body["metadata"]["resourceVersion"], "7");
            let spec = &put.body["spec"];
            assert_eq!(spec.get("holderIdentity"), None, "nobody holds it");
            assert_eq!(spec["leaseDurationSeconds"], 1);
            assert_eq!(spec["renewTime"], NOW_MICRO);
            drop(elector);
            server.expect_no_more().await;
        }

        /// A clock that follows tokio's (paused) time from [`NOW`].
        fn tokio_clock() -> Clock {
            let start = Instant::now();
            let epoch = ts(NOW);
            Arc::new(move || {
                let since = SignedDuration::try_from(start.elapsed()).unwrap();
                epoch.checked_add(since).unwrap()
            })
        }

        /// A lease of 3 s: renewed every second, given up after 2 s without renewal.
        fn short_config() -> LeaseConfig {
            LeaseConfig {
                duration: Duration::from_secs(3),
                ..config()
            }
        }

        /// Starts `run`; returns the verifier after the first round made us leader.
        async fn leading_elector() -> (
            Arc<LeaderElector>,
            ApiServerVerifier,
            watch::Receiver<bool>,
            tokio::task::JoinHandle<()>,
            Instant,
        ) {
            let (elector, mut server) = elector_with(short_config(), tokio_clock());
            let elector = Arc::new(elector);
            let (tx, mut leading) = watch::channel(false);
            let started = Instant::now();
            let run = tokio::spawn({
                let elector = elector.clone();
                async move { elector.run(tx).await }
            });
            server.expect(Method::GET, LEASE, 404, not_found()).await;
            let lease = mk_lease(Some("me"), NOW, 3);
            server.expect(Method::POST, LEASES, 201, json!(lease)).await;
            leading.wait_for(|l| *l).await.unwrap();
            (elector, server, leading, run, started)
        }

        #[tokio::test(start_paused = true)]
        async fn a_leader_that_cannot_renew_steps_down_by_the_renew_deadline() {
            let (elector, mut server, mut leading, run, renewed) = leading_elector().await;
            let failing = async {
                loop {
                    server
                        .expect(
                            Method::GET,
                            LEASE,
                            500,
                            status_failure(500, "InternalError"),
                        )
                        .await;
                }
            };
            tokio::select! {
                stepped_down = leading.wait_for(|l| !*l) => { stepped_down.unwrap(); }
                () = failing => {}
                () = tokio::time::sleep(Duration::from_secs(30)) => panic!("never stepped down"),
            }
            assert!(
                renewed.elapsed() <= short_config().renew_deadline(),
                "stepped down {:?} after the last renewal",
                renewed.elapsed()
            );
            assert_eq!(elector.metrics.leader.get(), 0);
            assert_eq!(elector.metrics.transitions.get(), 2);
            run.abort();
        }

        /// `/readyz` follows the rounds: not ready before the first, ready
        /// once one read the Lease, not ready with the API error while they
        /// fail.
        #[tokio::test(start_paused = true)]
        async fn readiness_follows_whether_lease_rounds_reach_the_api_server() {
            let (elector, mut server) = elector_with(short_config(), tokio_clock());
            let readiness = Readiness::not_ready();
            let elector = Arc::new(elector.with_readiness(readiness.clone()));
            let (tx, mut leading) = watch::channel(false);
            let run = tokio::spawn({
                let elector = elector.clone();
                async move { elector.run(tx).await }
            });
            assert!(!readiness.is_ready());
            server.expect(Method::GET, LEASE, 404, not_found()).await;
            server
                .expect(
                    Method::POST,
                    LEASES,
                    201,
                    json!(mk_lease(Some("me"), NOW, 3)),
                )
                .await;
            leading.wait_for(|l| *l).await.unwrap();
            assert!(readiness.is_ready(), "{:?}", readiness.reason());
            server
                .expect(Method::GET, LEASE, 403, status_failure(403, "Forbidden"))
                .await;
            let mut waited = Duration::ZERO;
            while readiness.is_ready() && waited < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                waited += Duration::from_millis(10);
            }
            let reason = readiness.reason().unwrap_or_default();
            assert!(reason.contains("lease round failed"), "{reason}");
            run.abort();
        }

        #[tokio::test(start_paused = true)]
        async fn a_leader_rides_out_one_failed_renewal() {
            let (elector, mut server, mut leading, run, _) = leading_elector().await;
            let ours = mk_lease(Some("me"), NOW, 3);
            server
                .expect(
                    Method::GET,
                    LEASE,
                    500,
                    status_failure(500, "InternalError"),
                )
                .await;
            server.expect(Method::GET, LEASE, 200, json!(ours)).await;
            server
                .expect(Method::PUT, PUT_LEASE, 200, json!(ours))
                .await;
            // The next round begins only after the last one was published.
            let _next_round = server.expect_and_hang(Method::GET, LEASE).await;
            assert!(*leading.borrow_and_update());
            assert_eq!(elector.metrics.transitions.get(), 1, "never stepped down");
            assert_eq!(elector.metrics.leader.get(), 1);
            run.abort();
        }

        #[tokio::test(start_paused = true)]
        async fn a_leader_whose_renewal_hangs_steps_down_by_the_renew_deadline() {
            // The API server takes the GET and never answers (a half-open
            // connection): the lease expires for everyone else all the same.
            let (_elector, mut server, mut leading, run, renewed) = leading_elector().await;
            let _hung = server.expect_and_hang(Method::GET, LEASE).await;
            tokio::time::timeout(Duration::from_secs(30), leading.wait_for(|l| !*l))
                .await
                .expect("a hung renewal must not keep us leading")
                .unwrap();
            assert!(
                renewed.elapsed() <= short_config().renew_deadline(),
                "stepped down {:?} after the last renewal",
                renewed.elapsed()
            );
            run.abort();
        }
    }
}
