//! guardian: a Linux memory guardian. It traces OOM kills and memory-cgroup reclaim stalls with
//! eBPF, listens to the kernel's cgroup notifications, and reports them per cgroup.
//!
//! The code is a pipeline: `sources` (kernel, cgroups, Docker) → `model` (plain data) → the
//! commands in `cli` that print it.

pub mod cli;
pub mod model;
pub mod sources;
