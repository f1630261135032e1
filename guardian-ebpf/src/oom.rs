//! `oom:mark_victim`: one event per OOM kill, read at the offsets userspace found in this
//! kernel's format file.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes,
    },
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use guardian_common::{oom_field, OomEvent, OomLayout, COMM_LEN, DROP_OOM, FIELD_ABSENT};

use crate::{config, count_drop, OOM_EVENTS};

#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    let layout = config().oom;
    let Some(mut slot) = OOM_EVENTS.reserve::<OomEvent>(0) else {
        count_drop(DROP_OOM);
        return 0;
    };
    let event = slot.as_mut_ptr();
    // SAFETY: `event` points at a reserved ring-buffer slot of the right size; every field is
    // written before submit.
    unsafe {
        fill(&ctx, &layout, &mut *event);
    }
    slot.submit(0);
    0
}

#[inline(always)]
unsafe fn fill(ctx: &TracePointContext, layout: &OomLayout, event: &mut OomEvent) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    event.ts_ns = unsafe { bpf_ktime_get_ns() };
    event.trigger_pid = pid_tgid as u32;
    event.trigger_tgid = (pid_tgid >> 32) as u32;
    event.trigger_cgroup_id = cgroup_id;
    event.trigger_comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    event.victim_pid = unsafe { read_u32(ctx, layout.pid) }.unwrap_or(0);
    event.present = 0;
    event._pad = [0; 2];

    // The allocating task is the victim more often than not (a hog at its own limit); only then
    // does the kernel side know the victim's cgroup. Userspace resolves the other cases.
    if event.victim_pid == event.trigger_pid {
        event.victim_cgroup_id = cgroup_id;
        event.present |= oom_field::VICTIM_CGROUP;
    } else {
        event.victim_cgroup_id = 0;
    }

    event.victim_comm = [0; COMM_LEN];
    if layout.comm != FIELD_ABSENT && unsafe { read_comm(ctx, layout, &mut event.victim_comm) } {
        event.present |= oom_field::COMM;
    }

    let rss = (
        unsafe { read_u64(ctx, layout.total_vm) },
        unsafe { read_u64(ctx, layout.anon_rss) },
        unsafe { read_u64(ctx, layout.file_rss) },
        unsafe { read_u64(ctx, layout.shmem_rss) },
    );
    if let (Some(total_vm), Some(anon), Some(file), Some(shmem)) = rss {
        event.total_vm_kb = total_vm;
        event.anon_rss_kb = anon;
        event.file_rss_kb = file;
        event.shmem_rss_kb = shmem;
        event.present |= oom_field::RSS;
    } else {
        event.total_vm_kb = 0;
        event.anon_rss_kb = 0;
        event.file_rss_kb = 0;
        event.shmem_rss_kb = 0;
    }
    match unsafe { read_u32(ctx, layout.uid) } {
        Some(uid) => {
            event.uid = uid;
            event.present |= oom_field::UID;
        }
        None => event.uid = 0,
    }
    match unsafe { read_u64(ctx, layout.pgtables) } {
        Some(pgtables) => {
            event.pgtables_kb = pgtables;
            event.present |= oom_field::PGTABLES;
        }
        None => event.pgtables_kb = 0,
    }
    match unsafe { read_i16(ctx, layout.oom_score_adj) } {
        Some(adj) => {
            event.oom_score_adj = adj;
            event.present |= oom_field::OOM_SCORE_ADJ;
        }
        None => event.oom_score_adj = 0,
    }
}

#[inline(always)]
unsafe fn read_comm(ctx: &TracePointContext, layout: &OomLayout, out: &mut [u8; COMM_LEN]) -> bool {
    let offset = if layout.comm_is_data_loc != 0 {
        // __data_loc: the u32 at `comm` holds (length << 16) | offset of the string.
        match unsafe { ctx.read_at::<u32>(layout.comm as usize) } {
            Ok(loc) => (loc & 0xffff) as usize,
            Err(_) => return false,
        }
    } else {
        layout.comm as usize
    };
    // SAFETY: the address lies inside the trace record; the helper bounds the copy by `out`.
    let src = unsafe { (ctx.as_ptr() as *const u8).add(offset) };
    unsafe { bpf_probe_read_kernel_str_bytes(src, out) }.is_ok()
}

#[inline(always)]
unsafe fn read_u64(ctx: &TracePointContext, offset: u16) -> Option<u64> {
    if offset == FIELD_ABSENT {
        return None;
    }
    unsafe { ctx.read_at::<u64>(offset as usize) }.ok()
}

#[inline(always)]
unsafe fn read_u32(ctx: &TracePointContext, offset: u16) -> Option<u32> {
    if offset == FIELD_ABSENT {
        return None;
    }
    unsafe { ctx.read_at::<u32>(offset as usize) }.ok()
}

#[inline(always)]
unsafe fn read_i16(ctx: &TracePointContext, offset: u16) -> Option<i16> {
    if offset == FIELD_ABSENT {
        return None;
    }
    unsafe { ctx.read_at::<i16>(offset as usize) }.ok()
}
