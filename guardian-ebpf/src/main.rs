//! guardian's eBPF programs: OOM kills (`oom.rs`) and memory-cgroup reclaim stalls
//! (`reclaim.rs`), written to ring buffers and per-cgroup maps that userspace reads.
#![no_std]
#![no_main]

mod oom;
mod reclaim;

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use guardian_common::{OomLayout, ProbeConfig, FIELD_ABSENT};

/// Set by userspace at load time (`EbpfLoader::override_global`); these defaults are never used.
#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig {
    stall_threshold_ns: u64::MAX,
    reclaim_end_nr_reclaimed: FIELD_ABSENT,
    _pad: [0; 6],
    oom: OomLayout::pid_only(FIELD_ABSENT),
    _pad2: [0; 4],
};

/// Per-CPU counters of events that did not fit a ring buffer (`DROP_OOM`, `DROP_STALL`).
#[map]
static DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// OOM kills; its own buffer so that a storm of stalls can never crowd out a kill.
#[map]
static OOM_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Reclaim stalls above the configured threshold.
#[map]
static STALL_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[inline(always)]
fn config() -> ProbeConfig {
    // SAFETY: CONFIG is a plain static; the volatile read stops the compiler from folding the
    // defaults above, since userspace rewrites the value in .rodata before loading.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

#[inline(always)]
fn count_drop(index: u32) {
    if let Some(counter) = DROPPED.get_ptr_mut(index) {
        // SAFETY: per-CPU value, so no other CPU writes it concurrently.
        unsafe { *counter += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
