//! Loading guardian's eBPF programs (embedded in the binary), attaching them to the OOM and
//! memcg-reclaim tracepoints, and reading their ring buffers and maps.

use std::time::{Duration, SystemTime};

use aya::{
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
use guardian_common::{
    OomEvent, ProbeConfig, StallEvent, StallStats, COMM_LEN, DROP_OOM, DROP_STALL, STALL_BUCKETS,
};
use tokio::io::unix::AsyncFd;

use super::tracefs::{Tracefs, TracefsError};
use crate::model::CgroupId;

/// The compiled programs, built by build.rs from guardian-ebpf.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guardian"));

/// The tracepoints guardian attaches to: (program, category, name).
const ATTACHMENTS: [(&str, &str, &str); 3] = [
    ("oom_mark_victim", "oom", "mark_victim"),
    (
        "memcg_reclaim_begin",
        "vmscan",
        "mm_vmscan_memcg_reclaim_begin",
    ),
    ("memcg_reclaim_end", "vmscan", "mm_vmscan_memcg_reclaim_end"),
];

/// Why the eBPF side is unavailable. guardian keeps working from cgroup notifications.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("eBPF needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN): run guardian as root")]
    NotPermitted,
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("the kernel refused guardian's eBPF programs ({0}); run `guardian doctor` and report the kernel version")]
    Load(String),
    #[error("attaching {program} to {category}:{name} failed ({reason}); run `guardian doctor`")]
    Attach {
        program: &'static str,
        category: &'static str,
        name: &'static str,
        reason: String,
    },
}

/// What the programs can be told at load time.
#[derive(Clone, Copy, Debug)]
pub struct ProbeOptions {
    /// Reclaim stalls at least this long become events; shorter ones are only counted.
    pub stall_threshold: Duration,
}

/// One record from a ring buffer.
#[derive(Clone, Copy, Debug)]
pub enum KernelEvent {
    Oom(OomEvent),
    Stall(StallEvent),
}

/// Per-cgroup reclaim-stall totals summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StallTotals {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub nr_reclaimed: u64,
    pub hist: [u64; STALL_BUCKETS],
}

/// The loaded and attached programs. Dropping it detaches them.
pub struct Probes {
    // Owns the programs and links; the maps below were taken out of it.
    _ebpf: Ebpf,
    oom: AsyncFd<RingBuf<MapData>>,
    stall: AsyncFd<RingBuf<MapData>>,
    stats: PerCpuHashMap<MapData, u64, StallStats>,
    dropped: PerCpuArray<MapData, u64>,
    tracefs: Tracefs,
}

impl Probes {
    /// Loads and attaches the programs on this kernel.
    pub fn load(options: ProbeOptions) -> Result<Self, BpfError> {
        if !has_bpf_capabilities() {
            return Err(BpfError::NotPermitted);
        }
        let tracefs = Tracefs::ensure()?;
        let oom = tracefs.format("oom", "mark_victim")?.oom_layout()?;
        let reclaim_end = tracefs.format("vmscan", "mm_vmscan_memcg_reclaim_end")?;
        let config = ProbeConfig {
            stall_threshold_ns: options.stall_threshold.as_nanos().min(u64::MAX as u128) as u64,
            reclaim_end_nr_reclaimed: reclaim_end.nr_reclaimed_offset(),
            _pad: [0; 6],
            oom,
            _pad2: [0; 4],
        };
        raise_memlock_limit();
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .load(PROGRAMS)
            .map_err(|e| load_error(e.into()))?;
        for (program, category, name) in ATTACHMENTS {
            let attach = |ebpf: &mut Ebpf| -> anyhow::Result<()> {
                let tp: &mut TracePoint = ebpf
                    .program_mut(program)
                    .ok_or_else(|| anyhow::anyhow!("program missing from the object"))?
                    .try_into()?;
                tp.load()?;
                tp.attach(category, name)?;
                Ok(())
            };
            attach(&mut ebpf).map_err(|e| match load_error(e) {
                BpfError::Load(reason) => BpfError::Attach {
                    program,
                    category,
                    name,
                    reason,
                },
                other => other,
            })?;
        }
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| BpfError::Load(format!("map {name} missing from the object")))
        };
        let oom_map = RingBuf::try_from(take(&mut ebpf, "OOM_EVENTS")?)
            .map_err(|e| BpfError::Load(e.to_string()))?;
        let stall_map = RingBuf::try_from(take(&mut ebpf, "STALL_EVENTS")?)
            .map_err(|e| BpfError::Load(e.to_string()))?;
        let stats = PerCpuHashMap::try_from(take(&mut ebpf, "STALL_STATS")?)
            .map_err(|e| BpfError::Load(e.to_string()))?;
        let dropped = PerCpuArray::try_from(take(&mut ebpf, "DROPPED")?)
            .map_err(|e| BpfError::Load(e.to_string()))?;
        let async_fd = |rb| {
            super::owned_async_fd(rb, tokio::io::Interest::READABLE)
                .map_err(|e| BpfError::Load(e.to_string()))
        };
        Ok(Self {
            _ebpf: ebpf,
            oom: async_fd(oom_map)?,
            stall: async_fd(stall_map)?,
            stats,
            dropped,
            tracefs,
        })
    }

    /// The tracefs the programs were attached through.
    pub fn tracefs(&self) -> &Tracefs {
        &self.tracefs
    }

    /// Waits for ring-buffer records and appends all that are ready to `out`; OOM kills first.
    pub async fn next_batch(&mut self, out: &mut Vec<KernelEvent>) -> std::io::Result<()> {
        tokio::select! {
            biased;
            guard = self.oom.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    if let Some(e) = read_record::<OomEvent>(&item) {
                        out.push(KernelEvent::Oom(e));
                    }
                }
                guard.clear_ready();
            }
            guard = self.stall.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    if let Some(e) = read_record::<StallEvent>(&item) {
                        out.push(KernelEvent::Stall(e));
                    }
                }
                guard.clear_ready();
            }
        }
        Ok(())
    }

    /// Reclaim-stall totals per cgroup since the programs were attached.
    pub fn stall_totals(&self) -> Vec<(CgroupId, StallTotals)> {
        let mut out = Vec::new();
        for entry in self.stats.iter().flatten() {
            let (id, per_cpu) = entry;
            let mut t = StallTotals {
                count: 0,
                total_ns: 0,
                max_ns: 0,
                nr_reclaimed: 0,
                hist: [0; STALL_BUCKETS],
            };
            for s in per_cpu.iter() {
                t.count += s.count;
                t.total_ns += s.total_ns;
                t.max_ns = t.max_ns.max(s.max_ns);
                t.nr_reclaimed += s.nr_reclaimed;
                for (sum, v) in t.hist.iter_mut().zip(s.hist) {
                    *sum += v;
                }
            }
            out.push((CgroupId(id), t));
        }
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// Records lost because a ring buffer was full: (OOM, stall).
    pub fn dropped(&self) -> (u64, u64) {
        let sum = |i| {
            self.dropped
                .get(&i, 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0)
        };
        (sum(DROP_OOM), sum(DROP_STALL))
    }
}

/// [`Probes::next_batch`] when the probes are loaded; never ready when they are not, so a
/// `select!` over it simply waits on its other branches.
pub async fn next_batch_if_loaded(
    probes: Option<&mut Probes>,
    batch: &mut Vec<KernelEvent>,
) -> std::io::Result<()> {
    match probes {
        Some(p) => p.next_batch(batch).await,
        None => std::future::pending().await,
    }
}

/// Copies a record out of the ring buffer; `None` if it is shorter than `T`.
fn read_record<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: T is a #[repr(C)] Pod record written by our own program, and the length was
    // checked; read_unaligned because ring-buffer records are only 8-byte aligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Maps a load/attach failure to a cause the user can act on.
fn load_error(e: anyhow::Error) -> BpfError {
    let permission = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            .is_some_and(|code| code == libc::EPERM || code == libc::EACCES)
    });
    if permission {
        BpfError::NotPermitted
    } else {
        // The chain holds the verifier log when the kernel refused a program.
        BpfError::Load(
            e.chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ")
                .replace('\n', " "),
        )
    }
}

/// Whether this process may load tracing programs: CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON.
pub fn has_bpf_capabilities() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return false;
    };
    let has = |cap: u32| eff & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so loading works there too.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid, initialised struct; failure only matters on old kernels,
    // where the load error that follows says what went wrong.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// The wall-clock time of a kernel `bpf_ktime_get_ns()` timestamp (CLOCK_MONOTONIC).
pub fn wall_time(ktime_ns: u64) -> SystemTime {
    let now_mono = monotonic_ns();
    SystemTime::now() - Duration::from_nanos(now_mono.saturating_sub(ktime_ns))
}

/// CLOCK_MONOTONIC now, in nanoseconds, the clock `bpf_ktime_get_ns()` reads.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// A kernel `comm` (NUL-padded, 16 bytes) as text.
pub fn comm_string(comm: &[u8; COMM_LEN]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&comm[..end]).into_owned()
}
