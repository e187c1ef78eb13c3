//! kube-scheduler extender for fixed IPs and IP capacity (work in progress, issue 6).
