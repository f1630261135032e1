//! Prometheus exposition: names in the cAdvisor style, one series per container, served on a
//! loopback port from the snapshot the daemon renders after every sampling round.

use std::{fmt::Write as _, net::SocketAddr, sync::Arc};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::watch,
};
use tracing::{debug, warn};

use crate::model::LiveRun;

/// Reclaim-stall totals of one container for the histogram (bucket upper bounds in µs).
pub struct StallSeries {
    pub labels: String,
    pub buckets_us: Vec<(u64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The label set of a run: container, id, image, project, service.
pub fn labels(run: &LiveRun) -> String {
    let r = &run.record;
    format!(
        "container=\"{}\",id=\"{}\",image=\"{}\",project=\"{}\",service=\"{}\"",
        escape(&r.name),
        escape(&r.container_id.chars().take(12).collect::<String>()),
        escape(&r.image),
        escape(r.project.as_deref().unwrap_or("")),
        escape(r.service.as_deref().unwrap_or("")),
    )
}

/// Renders the exposition text.
pub fn render<'a>(
    runs: impl Iterator<Item = &'a LiveRun>,
    stalls: &[StallSeries],
    oom_kills_total: u64,
) -> String {
    let runs: Vec<&LiveRun> = runs.collect();
    let mut out = String::new();
    let mut gauge =
        |name: &str, help: &str, kind: &str, value: &dyn Fn(&LiveRun) -> Option<u64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for run in &runs {
                if let Some(v) = value(run) {
                    let _ = writeln!(out, "{name}{{{}}} {v}", labels(run));
                }
            }
        };
    gauge(
        "guardian_container_memory_usage_bytes",
        "Memory charged to the container's cgroup.",
        "gauge",
        &|r| r.last.as_ref().map(|m| m.usage.0),
    );
    gauge(
        "guardian_container_memory_working_set_bytes",
        "Usage minus inactive file pages, as kubelet and cAdvisor count it.",
        "gauge",
        &|r| r.last.as_ref().map(|m| m.working_set.0),
    );
    gauge(
        "guardian_container_memory_peak_bytes",
        "The kernel's high-water mark of the container's memory in this run.",
        "gauge",
        &|r| Some(r.record.peak.0),
    );
    gauge(
        "guardian_container_memory_limit_bytes",
        "The container's memory limit.",
        "gauge",
        &|r| r.record.memory_limit.map(|b| b.0),
    );
    gauge(
        "guardian_container_oom_kills_total",
        "OOM kills the kernel counted in the container's cgroup.",
        "counter",
        &|r| Some(r.record.oom_kills),
    );
    let _ = writeln!(
        out,
        "# HELP guardian_oom_kills_total OOM kills seen on this host since guardian started.\n# TYPE guardian_oom_kills_total counter\nguardian_oom_kills_total {oom_kills_total}"
    );
    let name = "guardian_reclaim_stall_seconds";
    let _ = writeln!(out, "# HELP {name} Time tasks stalled in memory-cgroup direct reclaim (eBPF).\n# TYPE {name} histogram");
    for s in stalls {
        let mut cumulative = 0;
        for (le_us, n) in &s.buckets_us {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{},le=\"{}\"}} {cumulative}",
                s.labels,
                *le_us as f64 / 1e6
            );
        }
        let _ = writeln!(out, "{name}_bucket{{{},le=\"+Inf\"}} {}", s.labels, s.count);
        let _ = writeln!(out, "{name}_sum{{{}}} {}", s.labels, s.sum_seconds);
        let _ = writeln!(out, "{name}_count{{{}}} {}", s.labels, s.count);
    }
    out
}

/// Serves `GET /metrics` on `addr` with the latest snapshot until the process exits.
pub async fn serve(
    addr: SocketAddr,
    snapshot: watch::Receiver<Arc<String>>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, peer)) = listener.accept().await else {
                continue;
            };
            let body = snapshot.borrow().clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let ok = request.starts_with("GET /metrics ") || request.starts_with("GET / ");
                let response = if ok {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                if let Err(e) = conn.write_all(response.as_bytes()).await {
                    debug!(%peer, "metrics client went away: {e}");
                }
            });
        }
    });
    Ok(())
}

/// Logs once that the metrics endpoint could not start.
pub fn warn_unavailable(addr: SocketAddr, e: &std::io::Error) {
    warn!(%addr, "metrics endpoint disabled: {e}; set [metrics] listen or --metrics-listen to a free port");
}
