//! Thundering herd after a control-plane outage.
