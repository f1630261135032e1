//! `vmscan:mm_vmscan_memcg_reclaim_begin/end`: how long tasks stall in memory-cgroup direct
//! reclaim, per cgroup (count, total, max, log2 histogram) and as events above a threshold.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuHashMap},
    programs::TracePointContext,
};
use guardian_common::{
    StallEvent, StallStart, StallStats, COMM_LEN, DROP_STALL, FIELD_ABSENT, STALL_BUCKETS,
};

use crate::{config, count_drop, STALL_EVENTS};

/// Reclaims in progress, keyed by pid_tgid.
#[map]
static STALL_START: HashMap<u64, StallStart> = HashMap::with_max_entries(16384, 0);

/// Totals per v2 cgroup id.
#[map]
static STALL_STATS: PerCpuHashMap<u64, StallStats> = PerCpuHashMap::with_max_entries(4096, 0);

#[tracepoint]
pub fn memcg_reclaim_begin(_ctx: TracePointContext) -> u32 {
    let start = StallStart {
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    // A full map only loses this one measurement.
    let _ = STALL_START.insert(&bpf_get_current_pid_tgid(), &start, 0);
    0
}

#[tracepoint]
pub fn memcg_reclaim_end(ctx: TracePointContext) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(start) = (unsafe { STALL_START.get(&pid_tgid) }).map(|s| s.ts_ns) else {
        return 0;
    };
    let _ = STALL_START.remove(&pid_tgid);
    let duration = now.saturating_sub(start);
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let cfg = config();
    let nr_reclaimed = if cfg.reclaim_end_nr_reclaimed == FIELD_ABSENT {
        0
    } else {
        unsafe { ctx.read_at::<u64>(cfg.reclaim_end_nr_reclaimed as usize) }.unwrap_or(0)
    };

    account(cgroup_id, duration, nr_reclaimed);

    if duration >= cfg.stall_threshold_ns {
        match STALL_EVENTS.reserve::<StallEvent>(0) {
            Some(mut slot) => {
                let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
                slot.write(StallEvent {
                    ts_ns: now,
                    duration_ns: duration,
                    cgroup_id,
                    nr_reclaimed,
                    pid: pid_tgid as u32,
                    tgid: (pid_tgid >> 32) as u32,
                    comm,
                });
                slot.submit(0);
            }
            None => count_drop(DROP_STALL),
        }
    }
    0
}

#[inline(always)]
fn account(cgroup_id: u64, duration: u64, nr_reclaimed: u64) {
    let bucket = log2(duration / 1000).min(STALL_BUCKETS as u32 - 1) as usize;
    let stats = match STALL_STATS.get_ptr_mut(&cgroup_id) {
        Some(stats) => stats,
        None => {
            let _ = STALL_STATS.insert(&cgroup_id, &StallStats::ZERO, 0);
            match STALL_STATS.get_ptr_mut(&cgroup_id) {
                Some(stats) => stats,
                None => return,
            }
        }
    };
    // SAFETY: a per-CPU value: no other CPU writes this copy.
    unsafe {
        (*stats).count += 1;
        (*stats).total_ns += duration;
        if duration > (*stats).max_ns {
            (*stats).max_ns = duration;
        }
        (*stats).nr_reclaimed += nr_reclaimed;
        if let Some(slot) = (*stats).hist.get_mut(bucket) {
            *slot += 1;
        }
    }
}

/// floor(log2(v)), 0 for v <= 1; branchy halving that the verifier accepts without loops.
#[inline(always)]
fn log2(mut v: u64) -> u32 {
    let mut r = 0;
    for shift in [32u32, 16, 8, 4, 2, 1] {
        if v >= 1 << shift {
            v >>= shift;
            r += shift;
        }
    }
    r
}
