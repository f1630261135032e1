//! Types shared by guardian's eBPF programs and its userspace: the records the programs write to
//! ring buffers and maps, and the layouts userspace hands the programs at load time.
//!
//! Every type is `#[repr(C)]` with explicit padding so both sides agree on the bytes.
#![no_std]

/// Length of a task name in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Marks a tracepoint field this kernel's record does not have.
pub const FIELD_ABSENT: u16 = u16::MAX;

/// Number of log2 buckets in a reclaim-stall histogram; bucket `i` counts stalls of
/// `[2^i, 2^(i+1))` microseconds (bucket 0 also holds stalls under 1 µs).
pub const STALL_BUCKETS: usize = 32;

/// Index of the OOM ring buffer's drop counter in the `DROPPED` per-CPU array.
pub const DROP_OOM: u32 = 0;
/// Index of the reclaim-stall ring buffer's drop counter in the `DROPPED` per-CPU array.
pub const DROP_STALL: u32 = 1;

/// Bits of [`OomEvent::present`]: which optional fields came from the kernel's trace record.
pub mod oom_field {
    /// `comm` of the victim.
    pub const COMM: u32 = 1 << 0;
    /// `total_vm`, `anon_rss`, `file_rss`, `shmem_rss` (kB).
    pub const RSS: u32 = 1 << 1;
    /// `uid` of the victim.
    pub const UID: u32 = 1 << 2;
    /// `pgtables` (kB).
    pub const PGTABLES: u32 = 1 << 3;
    /// `oom_score_adj` of the victim.
    pub const OOM_SCORE_ADJ: u32 = 1 << 4;
    /// The victim is the task that triggered the kill, so `victim_cgroup_id` is the kernel's.
    pub const VICTIM_CGROUP: u32 = 1 << 5;
}

/// Where the fields of `oom:mark_victim` sit in this kernel's trace record.
///
/// Userspace fills it from `events/oom/mark_victim/format` before loading, because the record
/// changed across kernels (6.1 has `pid` only, 6.8+ adds comm and the RSS breakdown).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomLayout {
    pub pid: u16,
    /// Offset of `comm`; see `comm_is_data_loc`.
    pub comm: u16,
    pub total_vm: u16,
    pub anon_rss: u16,
    pub file_rss: u16,
    pub shmem_rss: u16,
    pub uid: u16,
    pub pgtables: u16,
    pub oom_score_adj: u16,
    /// 1 when `comm` is a `__data_loc char[]` (a u32 of length << 16 | offset), 0 for `char[16]`.
    pub comm_is_data_loc: u16,
}

impl OomLayout {
    /// A layout in which every optional field is absent (only `pid` is known).
    pub const fn pid_only(pid: u16) -> Self {
        Self {
            pid,
            comm: FIELD_ABSENT,
            total_vm: FIELD_ABSENT,
            anon_rss: FIELD_ABSENT,
            file_rss: FIELD_ABSENT,
            shmem_rss: FIELD_ABSENT,
            uid: FIELD_ABSENT,
            pgtables: FIELD_ABSENT,
            oom_score_adj: FIELD_ABSENT,
            comm_is_data_loc: 0,
        }
    }
}

/// One OOM kill, as seen by `oom:mark_victim`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the victim was marked.
    pub ts_ns: u64,
    /// v2 cgroup id of the victim, when the kernel side knows it (see `oom_field::VICTIM_CGROUP`).
    pub victim_cgroup_id: u64,
    /// v2 cgroup id of the task whose allocation triggered the kill.
    pub trigger_cgroup_id: u64,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    pub victim_pid: u32,
    /// Thread id of the triggering task.
    pub trigger_pid: u32,
    /// Process id of the triggering task.
    pub trigger_tgid: u32,
    pub uid: u32,
    /// `oom_field` bits.
    pub present: u32,
    pub oom_score_adj: i16,
    pub _pad: [u8; 2],
    pub victim_comm: [u8; COMM_LEN],
    pub trigger_comm: [u8; COMM_LEN],
}

/// One direct-reclaim stall of a memory cgroup longer than the configured threshold.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StallEvent {
    /// `bpf_ktime_get_ns()` when the reclaim ended.
    pub ts_ns: u64,
    pub duration_ns: u64,
    /// v2 cgroup id of the stalled task.
    pub cgroup_id: u64,
    pub nr_reclaimed: u64,
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; COMM_LEN],
}

/// A reclaim that has begun and not yet ended, keyed by pid_tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StallStart {
    pub ts_ns: u64,
}

/// Per-cgroup reclaim-stall totals (one copy per CPU; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StallStats {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub nr_reclaimed: u64,
    pub hist: [u64; STALL_BUCKETS],
}

impl StallStats {
    /// All counters at zero.
    pub const ZERO: Self = Self {
        count: 0,
        total_ns: 0,
        max_ns: 0,
        nr_reclaimed: 0,
        hist: [0; STALL_BUCKETS],
    };
}

/// Tunables userspace writes into the programs' read-only data before loading.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Reclaim stalls at least this long are sent as [`StallEvent`]s (all are counted).
    pub stall_threshold_ns: u64,
    /// Offset of `nr_reclaimed` in `vmscan:mm_vmscan_memcg_reclaim_end`, or [`FIELD_ABSENT`].
    pub reclaim_end_nr_reclaimed: u16,
    pub _pad: [u8; 6],
    pub oom: OomLayout,
    pub _pad2: [u8; 4],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made of integers and integer arrays, with explicit
    // padding fields, so every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::OomEvent {}
    unsafe impl aya::Pod for super::StallEvent {}
    unsafe impl aya::Pod for super::StallStart {}
    unsafe impl aya::Pod for super::StallStats {}
    unsafe impl aya::Pod for super::ProbeConfig {}
}
