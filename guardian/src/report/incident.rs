//! OOM post-mortems as files: Markdown for people and CI logs, JSON for machines, HTML with an
//! SVG timeline (memory against limit, budget and memory.high over the last 60 s, the kill
//! marked). Written atomically: a temporary file renamed into place.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use crate::{
    model::{Bytes, Cause, Incident, OomKind, Point},
    policy::postmortem,
};

/// The report formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Md,
    Json,
    Html,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Md, Format::Json, Format::Html];

    fn ext(self) -> &'static str {
        match self {
            Format::Md => "md",
            Format::Json => "json",
            Format::Html => "html",
        }
    }
}

/// The report in `format`.
pub fn render(i: &Incident, format: Format) -> String {
    let oom = i.cause == Cause::KernelOom;
    match format {
        Format::Md if !oom => super::episode::markdown(i),
        Format::Html if !oom => super::episode::html(i),
        Format::Md => markdown(i),
        Format::Json => serde_json::to_string_pretty(i).expect("incidents always serialize"),
        Format::Html => html(i),
    }
}

/// The path of an incident's report in `dir`.
fn path(dir: &Path, id: &str, format: Format) -> PathBuf {
    dir.join(format!("{id}.{}", format.ext()))
}

/// Writes the three reports of `i` into `dir`; returns the Markdown one's path.
pub fn write_files(dir: &Path, i: &Incident) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for f in Format::ALL {
        super::write_atomic(&path(dir, &i.id, f), render(i, f).as_bytes())?;
    }
    Ok(path(dir, &i.id, Format::Md))
}

/// After a crash: drops the half-written temporary files in `dir`.
pub fn remove_partial(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Whether all report files of incident `id` exist in `dir`.
pub fn has_files(dir: &Path, id: &str) -> bool {
    Format::ALL.iter().all(|f| path(dir, id, *f).exists())
}

/// Removes the report files of incidents the store no longer holds (pruned).
pub fn remove_files(dir: &Path, ids: &[String]) {
    for id in ids {
        for f in Format::ALL {
            let _ = std::fs::remove_file(path(dir, id, f));
        }
    }
}

/// An optional size for a table cell, `-` when unknown.
pub fn show(b: Option<Bytes>) -> String {
    b.map_or_else(|| "-".to_string(), |b| b.to_string())
}

fn kind_words(i: &Incident) -> &'static str {
    match i.kind {
        Some(OomKind::Cgroup) => "cgroup OOM: it hit its own limit",
        Some(OomKind::Global) => "global OOM: the host ran out of memory",
        None => "OOM kill (kind unknown)",
    }
}

/// The parts of memory.stat a person reads first, under the kernel's names, in the order the
/// kernel prints them (v2: anon, file, shmem, kernel, sock; v1: the hierarchical totals).
fn stat_summary(i: &Incident) -> String {
    const NAMES: [&str; 9] = [
        "anon",
        "file",
        "shmem",
        "kernel",
        "sock",
        "total_rss",
        "total_cache",
        "total_shmem",
        "total_mapped_file",
    ];
    NAMES
        .iter()
        .filter_map(|n| Some(format!("{n} {}", i.memory_stat.get(*n)?)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Up to `n` points spread over the series, always with the last.
fn thin(points: &[Point], n: usize) -> Vec<Point> {
    if points.len() <= n {
        return points.to_vec();
    }
    let step = points.len() as f64 / n as f64;
    let mut out: Vec<Point> = (0..n).map(|k| points[(k as f64 * step) as usize]).collect();
    if out.last() != points.last() {
        *out.last_mut().expect("n > 0") = *points.last().expect("not empty");
    }
    out
}

/// The summary table, shared by the Markdown and HTML reports: label, value, and whether the
/// value is code (a command line).
fn summary_rows(i: &Incident) -> Vec<(&'static str, String, bool)> {
    let mut rows = vec![
        (
            "Kind",
            format!(
                "{}{}",
                kind_words(i),
                i.kind_evidence
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
            false,
        ),
        ("Limit", show(i.limit), false),
        ("Peak (kernel high-water mark)", show(i.peak), false),
        (
            "guardian budget / memory.high",
            format!("{} / {}", show(i.budget), show(i.memory_high)),
            false,
        ),
        (
            "Suggested limit",
            match i.suggested_limit {
                Some(l) => format!("at least {l} ({})", i.suggestion),
                None => format!("- ({})", i.suggestion),
            },
            false,
        ),
    ];
    if let Some(words) = postmortem::filler_words(i) {
        rows.push(("What filled it", words, false));
    }
    if !i.memory_stat.is_empty() {
        rows.push(("memory.stat just after the kill", stat_summary(i), false));
    }
    if let Some(rate) = i.climb_per_s {
        rows.push((
            "Climb at the kill",
            if rate >= postmortem::STILL_GROWING_PER_S {
                format!("{rate}/s: still growing when it was killed")
            } else {
                format!("{rate}/s: it had stopped growing")
            },
            false,
        ));
    }
    match i.container_survived {
        Some(true) => rows.push((
            "Container",
            "survived: a child process was killed, the container went on running".into(),
            false,
        )),
        Some(false) => rows.push(("Container", "died with the kill".into(), false)),
        None => {}
    }
    if let Some(r) = &i.victim.rss {
        rows.push((
            "Victim memory",
            format!(
                "anon {}, file {}, shmem {} (of {} virtual)",
                r.anon_rss, r.file_rss, r.shmem_rss, r.total_vm
            ),
            false,
        ));
    }
    if let Some(adj) = i.victim.oom_score_adj {
        rows.push(("oom_score_adj", adj.to_string(), false));
    }
    if let Some(c) = &i.victim.cmdline {
        rows.push(("Command", c.clone(), true));
    }
    if let Some(t) = &i.trigger {
        rows.push((
            "Triggered by",
            format!(
                "{} (pid {}){}",
                t.comm.as_deref().unwrap_or("?"),
                t.pid,
                t.container
                    .as_deref()
                    .map(|c| format!(" in {c}"))
                    .unwrap_or_default()
            ),
            false,
        ));
    }
    if let Some(p) = &i.pressure {
        rows.push((
            "Memory pressure (avg10)",
            format!("some {:.1}%, full {:.1}%", p.some.avg10, p.full.avg10),
            false,
        ));
    }
    if let Some(st) = &i.reclaim_stalls {
        rows.push((
            "Reclaim stalls",
            format!(
                "{} stalls, {:.1} ms in all, longest {:.1} ms",
                st.count, st.total_ms, st.max_ms
            ),
            false,
        ));
    }
    if let Some(code) = i.exit_code {
        rows.push(("Exit code", code.to_string(), false));
    }
    rows
}

fn markdown(i: &Incident) -> String {
    let mut o = String::new();
    let victim = match (&i.victim.comm, i.victim.pid) {
        (Some(c), Some(p)) => format!("`{c}` (pid {p})"),
        (None, Some(p)) => format!("pid {p}"),
        (Some(c), None) => format!("`{c}`"),
        (None, None) => "its main process".to_string(),
    };
    let _ = writeln!(o, "# OOM kill: {} ({})\n", i.name, kind_words(i));
    let where_ = match &i.container {
        Some(c) => format!("container `{}`, image `{}`", c.name, c.image),
        None => format!("cgroup `{}`", i.cgroup.as_deref().unwrap_or("?")),
    };
    let _ = writeln!(
        o,
        "**{}**: the kernel killed {victim} in **{}** ({where_}).\n",
        i.time, i.name
    );
    let _ = writeln!(o, "**Next step:** {}\n", i.next_step);
    let _ = writeln!(o, "| | |\n|---|---|");
    for (label, value, code) in summary_rows(i) {
        let value = value.replace('|', "\\|");
        if code {
            let _ = writeln!(o, "| {label} | `{}` |", value.replace('`', "'"));
        } else {
            let _ = writeln!(o, "| {label} | {value} |");
        }
    }
    let _ = writeln!(o, "\n## Last 60 s\n");
    if i.timeline.is_empty() {
        let _ = writeln!(
            o,
            "No samples: guardian was not recording this container before the kill."
        );
    } else {
        let _ = writeln!(
            o,
            "| t (s) | {} usage | host MemAvailable |\n|---:|---:|---:|",
            i.name
        );
        for p in thin(&i.timeline, 12) {
            let host = i
                .host_available
                .iter()
                .min_by_key(|h| (h.t_ms - p.t_ms).abs())
                .map(|h| h.bytes.to_string())
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                o,
                "| {:.1} | {} | {host} |",
                p.t_ms as f64 / 1000.0,
                p.bytes
            );
        }
    }
    let _ = writeln!(o, "\n## Who else was using memory\n");
    if i.neighbours.is_empty() {
        let _ = writeln!(o, "No other containers were running.");
    } else {
        let _ = writeln!(
            o,
            "| container | usage | peak | limit |\n|---|---:|---:|---:|"
        );
        for n in &i.neighbours {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                n.name,
                n.usage,
                n.peak,
                show(n.limit)
            );
        }
    }
    let _ = writeln!(o, "\n## What guardian did\n");
    if i.actions.is_empty() {
        let _ = writeln!(o, "Nothing: guardian changed no cgroup in the last 60 s.");
    }
    for a in &i.actions {
        let _ = writeln!(
            o,
            "- {} {} on {}: {} -> {} ({})",
            crate::model::time::rfc3339_seconds(a.at_ms),
            a.action,
            a.name,
            a.before,
            a.after,
            a.reason
        );
    }
    let _ = writeln!(o, "\n## Evidence\n\n- Seen by: {}", i.sources.join(", "));
    if let Some(l) = &i.kernel_line {
        let _ = writeln!(o, "- Kernel log: `{l}`");
    }
    for n in &i.notes {
        let _ = writeln!(o, "- {n}");
    }
    let _ = writeln!(o, "- Report id: `{}`", i.id);
    o
}

/// Escapes text for HTML, SVG and XML.
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The timeline chart: usage against limit, budget and memory.high, the kill at t = 0.
fn svg(i: &Incident) -> String {
    const W: f64 = 720.0;
    const H: f64 = 260.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    const T: f64 = 20.0;
    const B: f64 = 40.0;
    let mib = |b: Bytes| b.0 as f64 / (1u64 << 20) as f64;
    let top = [i.limit, i.budget, i.memory_high, i.peak]
        .into_iter()
        .flatten()
        .chain(i.timeline.iter().map(|p| p.bytes))
        .map(mib)
        .fold(1.0, f64::max)
        * 1.1;
    let t0 = i.timeline.first().map_or(-60_000, |p| p.t_ms.min(-1000)) as f64;
    let x = |t_ms: i64| L + (t_ms as f64 - t0) / (0.0 - t0) * (W - L - R);
    let y = |v: f64| T + (1.0 - v / top) * (H - T - B);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12"><rect width="{W}" height="{H}" fill="#ffffff"/>"##
    );
    let _ = write!(
        s,
        r##"<line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="#333"/><line x1="{L}" y1="{T}" x2="{L}" y2="{}" stroke="#333"/>"##,
        H - B,
        W - R,
        H - B,
        H - B
    );
    for k in 0..=4 {
        let v = top / 4.0 * k as f64;
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end">{v:.0} MiB</text>"##,
            L - 6.0,
            y(v) + 4.0
        );
    }
    let _ = write!(
        s,
        r##"<text x="{L}" y="{}">{:.0} s</text><text x="{}" y="{}" text-anchor="end">0 s (kill)</text>"##,
        H - B + 16.0,
        t0 / 1000.0,
        W - R,
        H - B + 16.0
    );
    for (label, value, color) in [
        ("limit", i.limit, "#c0392b"),
        ("budget", i.budget, "#e67e22"),
        ("memory.high", i.memory_high, "#2980b9"),
    ] {
        if let Some(v) = value {
            let yy = y(mib(v));
            let _ = write!(
                s,
                r##"<line x1="{L}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="{color}" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" fill="{color}" text-anchor="middle">{label} {}</text>"##,
                W - R,
                (L + W - R) / 2.0,
                yy - 4.0,
                esc(&v.to_string())
            );
        }
    }
    if !i.timeline.is_empty() {
        let pts: Vec<String> = i
            .timeline
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.t_ms), y(mib(p.bytes))))
            .collect();
        let _ = write!(
            s,
            r##"<polyline fill="none" stroke="#27ae60" stroke-width="2" points="{}"/>"##,
            pts.join(" ")
        );
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{}" fill="#27ae60" text-anchor="middle">— usage of {}</text>"##,
            (L + W - R) / 2.0,
            H - 8.0,
            esc(&i.name)
        );
    }
    let kx = x(0);
    let _ = write!(
        s,
        r##"<line x1="{kx:.1}" y1="{T}" x2="{kx:.1}" y2="{}" stroke="#000" stroke-width="2"/><text x="{:.1}" y="{}" text-anchor="end" font-weight="bold">OOM kill</text></svg>"##,
        H - B,
        kx - 4.0,
        T + 28.0
    );
    s
}

fn html(i: &Incident) -> String {
    let mut rows = String::new();
    for (label, value, code) in summary_rows(i) {
        let value = if code {
            format!("<code>{}</code>", esc(&value))
        } else {
            esc(&value)
        };
        let _ = write!(rows, "<tr><th>{}</th><td>{value}</td></tr>", esc(label));
    }
    let mut neighbours = String::new();
    if i.neighbours.is_empty() {
        neighbours.push_str("<tr><td colspan=\"4\">No other containers were running.</td></tr>");
    }
    for n in &i.neighbours {
        let _ = write!(
            neighbours,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&n.name),
            n.usage,
            n.peak,
            esc(&show(n.limit))
        );
    }
    let mut actions = String::new();
    if i.actions.is_empty() {
        actions.push_str("<li>Nothing: guardian changed no cgroup in the last 60 s.</li>");
    }
    for a in &i.actions {
        let _ = write!(
            actions,
            "<li>{} on {}: {} &rarr; {} ({})</li>",
            esc(&a.action),
            esc(&a.name),
            esc(&a.before),
            esc(&a.after),
            esc(&a.reason)
        );
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>OOM kill: {name}</title>
<style>body{{font-family:sans-serif;max-width:760px;margin:2em auto;color:#222}}th{{text-align:left;padding-right:1em;vertical-align:top}}td,th{{border-bottom:1px solid #eee;padding:3px}}.next{{background:#fdf2e9;padding:.6em;border-left:4px solid #e67e22}}</style>
</head><body>
<h1>OOM kill: {name}</h1>
<p><strong>{time}</strong>: {kind}.</p>
<p class="next"><strong>Next step:</strong> {next}</p>
<figure>{svg}<figcaption>Memory of {name} over the last 60 s against its limit, budget and memory.high; the kill at 0 s.</figcaption></figure>
<table>{rows}</table>
<h2>Who else was using memory</h2><table><tr><th>container</th><th>usage</th><th>peak</th><th>limit</th></tr>{neighbours}</table>
<h2>What guardian did</h2><ul>{actions}</ul>
<p>Seen by: {sources}. Report id: {id}.</p>
</body></html>
"#,
        name = esc(&i.name),
        time = esc(&i.time),
        kind = esc(kind_words(i)),
        next = esc(&i.next_step),
        svg = svg(i),
        sources = esc(&i.sources.join(", ")),
        id = esc(&i.id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ActionRecord, Neighbour};

    const MIB: u64 = 1 << 20;

    fn lone_kill() -> Incident {
        Incident {
            id: "20261125T000000Z-ci-db-42".into(),
            time: "2026-11-25T00:00:00Z".into(),
            kind: Some(OomKind::Cgroup),
            name: "ci/db".into(),
            limit: Some(Bytes(48 * MIB)),
            suggested_limit: Some(Bytes(152 * MIB)),
            suggestion: "test".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_kill_with_no_neighbours_and_no_actions_says_so_in_words() {
        let i = lone_kill();
        let md = render(&i, Format::Md);
        assert!(
            md.contains("## Who else was using memory\n\nNo other containers were running.\n"),
            "{md}"
        );
        assert!(!md.contains("| container | usage |"), "{md}");
        assert!(
            md.contains("## What guardian did\n\nNothing: guardian changed no cgroup"),
            "{md}"
        );
        let html = render(&i, Format::Html);
        assert!(html.contains("No other containers were running."), "{html}");
        assert!(
            html.contains("<li>Nothing: guardian changed no cgroup"),
            "{html}"
        );
    }

    #[test]
    fn neighbours_and_actions_are_listed_without_the_empty_words() {
        let mut i = lone_kill();
        i.neighbours.push(Neighbour {
            name: "ci/cache".into(),
            usage: Bytes(100 * MIB),
            peak: Bytes(120 * MIB),
            limit: None,
            timeline: vec![],
        });
        i.actions.push(ActionRecord {
            at_ms: 0,
            action: "set memory.high".into(),
            name: "ci/cache".into(),
            before: "max".into(),
            after: "100m".into(),
            reason: "budget".into(),
            ..Default::default()
        });
        let md = render(&i, Format::Md);
        assert!(
            md.contains("| ci/cache | 100.0MiB | 120.0MiB | - |"),
            "{md}"
        );
        assert!(!md.contains("No other containers"), "{md}");
        assert!(
            md.contains("set memory.high on ci/cache: max -> 100m"),
            "{md}"
        );
        assert!(!md.contains("Nothing:"), "{md}");
    }

    #[test]
    fn the_suggested_limit_reads_as_a_floor_and_the_filler_is_named() {
        let mut i = lone_kill();
        i.memory_stat = [("anon", MIB), ("file", 63 * MIB), ("shmem", 62 * MIB)]
            .iter()
            .map(|(k, v)| (k.to_string(), Bytes(*v)))
            .collect();
        i.filled_by = postmortem::filled_by(&i.memory_stat, None);
        let md = render(&i, Format::Md);
        assert!(
            md.contains("| Suggested limit | at least 152.0MiB (test) |"),
            "{md}"
        );
        assert!(
            md.contains("| What filled it | tmpfs and shared memory (shmem), 62.0MiB"),
            "{md}"
        );
        assert!(
            md.contains(
                "| memory.stat just after the kill | anon 1.0MiB, file 63.0MiB, shmem 62.0MiB |"
            ),
            "{md}"
        );
    }
}
