//! The kernel log reader when the log wraps under it: guardian reads /dev/kmsg for the OOM
//! killer's lines, and a flood of messages can overwrite records before it reads them. It must
//! count the wrap, carry on from the oldest record the kernel still has, and see what comes
//! after. This test floods the real kernel log (root), which erases its older history.

mod support;

use std::{
    fs::OpenOptions,
    io::Write,
    time::{Duration, Instant},
};

use guardian::sources::kmsg;
use support::require_root;
use tokio::sync::mpsc;

/// Pids above the kernel's largest pid_max (2^22): no real process has them.
const LOST_PID: u32 = 4_200_001;
const LATER_PID: u32 = 4_200_002;

fn kill_line(pid: u32) -> String {
    format!("guardian-test: Memory cgroup out of memory: Killed process {pid} (kmsg-wrap-test)\n")
}

/// Writes lines to /dev/kmsg. The kernel drops a writer's lines beyond 10 per 5 s for each
/// open file (printk_devkmsg=ratelimit, the default), so every 10 lines get a file of their own.
fn log_lines(lines: impl IntoIterator<Item = String>) {
    let lines: Vec<String> = lines.into_iter().collect();
    for chunk in lines.chunks(10) {
        let mut kmsg = OpenOptions::new().write(true).open("/dev/kmsg").unwrap();
        for line in chunk {
            kmsg.write_all(line.as_bytes()).unwrap();
        }
    }
}

/// The size of the kernel's log buffer (`syslog(SYSLOG_ACTION_SIZE_BUFFER)`).
fn log_buffer_bytes() -> usize {
    // SAFETY: action 10 reads no buffer; it returns the size or -1.
    let size = unsafe { libc::klogctl(10, std::ptr::null_mut(), 0) };
    assert!(
        size > 0,
        "syslog(SIZE_BUFFER): {}",
        std::io::Error::last_os_error()
    );
    size as usize
}

#[test]
fn a_wrapped_kernel_log_is_counted_and_a_later_kill_line_is_still_seen() {
    require_root();
    // One thread: the reader cannot run while the test writes, so it falls behind for sure.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (tx, mut rx) = mpsc::channel(64);
        let wraps = kmsg::watch(tx);
        log_lines([kill_line(LOST_PID)]);
        // Three times the buffer in 200-byte records overwrites it (text and descriptors).
        let filler = "x".repeat(160);
        let records = 3 * log_buffer_bytes() / 200;
        log_lines((0..records).map(|i| format!("guardian-test: kmsg wrap filler {i} {filler}\n")));
        log_lines([kill_line(LATER_PID)]);

        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while !seen.contains(&LATER_PID) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(line)) => seen.push(line.pid),
                Ok(None) => panic!("the reader stopped after {seen:?}"),
                Err(_) => panic!(
                    "the kill line logged after the wrap never came (wraps {}, seen {seen:?})",
                    wraps.count()
                ),
            }
        }
        assert!(
            !seen.contains(&LOST_PID),
            "the first kill line should have been overwritten: {records} records did not wrap the log"
        );
        assert_eq!(wraps.count(), 1, "one wrap, counted once");
    });
}
