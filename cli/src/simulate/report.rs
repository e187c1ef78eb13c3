//! What a simulation measured, and the comparison table.

use std::{collections::BTreeMap, time::Duration};

use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use sextant_cloud::Action;

use super::Strategy;

/// Figures of one simulation run.
#[derive(Clone, Debug)]
pub struct Report {
    /// Resync strategy used.
    pub strategy: Strategy,
    /// Nodes simulated.
    pub nodes: usize,
    /// Simulated time from the first node until every node was ready.
    pub all_ready_after: Option<Duration>,
    /// Median time from a node's creation to ready.
    pub ready_p50: Option<f64>,
    /// 99th percentile of the same.
    pub ready_p99: Option<f64>,
    /// Nodes that became ready.
    pub nodes_ready: usize,
    /// Cloud API calls received by the provider.
    pub api_calls: u64,
    /// Calls per action.
    pub by_action: BTreeMap<Action, u64>,
    /// Calls the provider throttled.
    pub throttled: u64,
    /// Retries made by the client.
    pub retries: u64,
    /// Errors that reached the reconciler after retries, by kind.
    pub surfaced: BTreeMap<&'static str, u64>,
    /// Pods running at the end.
    pub pods: usize,
    /// IPs used by running pods.
    pub used_ips: usize,
    /// IPs in all pools.
    pub pool_size: usize,
    /// Pod IPs handed to two pods at once.
    pub double_allocations: u64,
    /// Running pods whose IP is no longer on their node's ENI.
    pub used_ips_lost: usize,
    /// IPs on pod ENIs that no pool lists.
    pub leaked_ips: usize,
    /// Sextant-tagged ENIs left unattached at the end.
    pub leaked_enis: usize,
    /// ENIs garbage-collected.
    pub gc_deleted: usize,
    /// Reconciles run.
    pub reconciles: u64,
    /// Status PATCHes the agents sent (usage reports, handshake answers).
    pub agent_patches: u64,
    /// Simulated time in all.
    pub simulated: Duration,
}

impl Report {
    /// The agents' status PATCHes per simulated second: their API server load.
    pub fn agent_patches_per_second(&self) -> f64 {
        self.agent_patches as f64 / self.simulated.as_secs_f64().max(1.0)
    }

    /// Throttling errors that reached the reconciler.
    pub fn throttles_surfaced(&self) -> u64 {
        self.surfaced.get("throttled").copied().unwrap_or(0)
    }

    /// Used IPs over pool IPs.
    pub fn utilisation(&self) -> f64 {
        if self.pool_size == 0 {
            0.0
        } else {
            self.used_ips as f64 / self.pool_size as f64
        }
    }

    /// Whether the run kept every safety promise.
    pub fn is_clean(&self) -> bool {
        self.double_allocations == 0
            && self.used_ips_lost == 0
            && self.leaked_ips == 0
            && self.leaked_enis == 0
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} s", d.as_secs_f64()))
        .unwrap_or_else(|| "not reached".into())
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1} s")).unwrap_or_else(|| "-".into())
}

/// One table comparing runs (the first column is Sextant's).
pub fn print_comparison(reports: &[Report]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec![Cell::new("")];
    header.extend(reports.iter().map(|r| Cell::new(r.strategy.name())));
    t.set_header(header);
    let mut row = |name: &str, f: &dyn Fn(&Report) -> String| {
        let mut cells = vec![Cell::new(name)];
        cells.extend(
            reports
                .iter()
                .map(|r| Cell::new(f(r)).set_alignment(CellAlignment::Right)),
        );
        t.add_row(cells);
    };
    row("time until every node ready", &|r| secs(r.all_ready_after));
    row("node ready p50 / p99", &|r| {
        format!("{} / {}", opt(r.ready_p50), opt(r.ready_p99))
    });
    row("nodes ready", &|r| format!("{}/{}", r.nodes_ready, r.nodes));
    row("API calls", &|r| r.api_calls.to_string());
    row("API calls per node", &|r| {
        format!("{:.1}", r.api_calls as f64 / r.nodes.max(1) as f64)
    });
    for a in Action::ALL {
        if reports.iter().any(|r| r.by_action.contains_key(&a)) {
            row(&format!("  {a}"), &|r| {
                r.by_action.get(&a).copied().unwrap_or(0).to_string()
            });
        }
    }
    row("throttled by the cloud", &|r| r.throttled.to_string());
    row("client retries", &|r| r.retries.to_string());
    row("errors surfaced to reconciler", &|r| {
        let n: u64 = r.surfaced.values().sum();
        if n == 0 {
            "0".into()
        } else {
            format!(
                "{n} ({})",
                r.surfaced
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    });
    row("reconciles", &|r| r.reconciles.to_string());
    row("agent status PATCHes (per second)", &|r| {
        format!(
            "{} ({:.1}/s)",
            r.agent_patches,
            r.agent_patches_per_second()
        )
    });
    row("pods running", &|r| r.pods.to_string());
    row("IP utilisation (used / pool)", &|r| {
        format!(
            "{:.0}% ({}/{})",
            r.utilisation() * 100.0,
            r.used_ips,
            r.pool_size
        )
    });
    row("double allocations", &|r| r.double_allocations.to_string());
    row("used IPs released", &|r| r.used_ips_lost.to_string());
    row("leaked IPs / ENIs", &|r| {
        format!("{} / {}", r.leaked_ips, r.leaked_enis)
    });
    row("ENIs garbage-collected", &|r| r.gc_deleted.to_string());
    row("simulated time", &|r| {
        format!("{:.0} s", r.simulated.as_secs_f64())
    });
    t.to_string()
}
