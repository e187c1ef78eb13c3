//! Stand-ins the cloud crate's integration tests run against; each test
//! binary that needs one declares `mod support;`.

pub mod ecs;
