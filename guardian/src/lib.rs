//! guardian: a Linux memory guardian. It traces OOM kills and memory-cgroup reclaim stalls with
//! eBPF, listens to the kernel's cgroup notifications, and reports them per cgroup.
//!
//! The code is a pipeline: `sources` (kernel, cgroups, Docker, compose) → `model` (plain data,
//! the recorder) → `policy` (pure decisions: limits from peaks) → `store`, `report` and
//! `metrics` (what is written and served) — driven by the commands in `cli`.

pub mod actions;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod report;
pub mod sources;
pub mod store;
