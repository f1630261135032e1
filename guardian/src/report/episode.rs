//! Reports of incidents that are not kernel OOM kills (frozen or killed by guardian, throttled,
//! killed by a signal, warnings): Markdown and HTML with the readings and rule that decided.

use std::fmt::Write as _;

use super::incident::{esc, show};
use crate::{
    model::{Cause, Incident},
    policy::incidents::headline,
};

/// What happened, in one sentence.
fn what(i: &Incident) -> String {
    let state = if i.ended.is_some() {
        "ended"
    } else {
        "still going when this was written"
    };
    match &i.cause {
        Cause::FrozenByGuardian => {
            format!("guardian froze **{}** (cgroup.freeze); {state}", i.name)
        }
        Cause::KilledByGuardian => format!("guardian killed **{}** (cgroup.kill)", i.name),
        Cause::Throttled => format!(
            "**{}** was held at its memory.high, stalled in reclaim; {state}",
            i.name
        ),
        Cause::KilledBySignal { killer } => format!(
            "**{}** was killed by {} while memory was short",
            i.name,
            killer
                .as_deref()
                .unwrap_or("a signal, not the kernel's OOM killer")
        ),
        Cause::Warning => format!("**{}** stayed close to its limit", i.name),
        Cause::KernelOom => format!("the kernel OOM-killed **{}**", i.name),
    }
}

/// Label and value rows: the readings, and the rule that decided.
fn rows(i: &Incident) -> Vec<(&'static str, String)> {
    let mut rows = vec![("Kind", headline(&i.cause))];
    if let Some(d) = &i.decision {
        rows.push((
            "Rule (ladder step)",
            format!("{} (step {})", d.rule, d.step),
        ));
        rows.push(("Usage when decided", d.usage.to_string()));
        rows.push(("Priority", d.priority.to_string()));
        rows.push((
            "Host MemAvailable / reserve / critical reserve",
            format!(
                "{} / {} / {}",
                d.host_available, d.reserve, d.critical_reserve
            ),
        ));
        rows.push((
            "Host memory PSI (avg10)",
            format!(
                "some {:.1}%, full {:.1}%",
                d.host_psi_some_avg10, d.host_psi_full_avg10
            ),
        ));
    }
    rows.push(("Limit", show(i.limit)));
    rows.push((
        "guardian budget / memory.high",
        format!("{} / {}", show(i.budget), show(i.memory_high)),
    ));
    if let Some(ws) = i.working_set {
        rows.push(("Working set", ws.to_string()));
    }
    if let Some(ms) = i.duration_ms {
        rows.push(("Lasted", format!("{:.1} s", ms as f64 / 1000.0)));
    }
    if let Some(ms) = i.lost_ms {
        rows.push((
            "Time lost stalled (PSI full)",
            format!("{:.1} s", ms / 1000.0),
        ));
    }
    rows.push(("Ended", i.ended.clone().unwrap_or_else(|| "not yet".into())));
    rows
}

/// The Markdown report.
pub fn markdown(i: &Incident) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# {}: {}\n", headline(&i.cause), i.name);
    let _ = writeln!(o, "**{}**: {}.\n", i.time, what(i));
    let _ = writeln!(o, "**Next step:** {}\n", i.next_step);
    let _ = writeln!(o, "| | |\n|---|---|");
    for (label, value) in rows(i) {
        let _ = writeln!(o, "| {label} | {} |", value.replace('|', "\\|"));
    }
    if let (Some(first), Some(last)) = (i.timeline.first(), i.timeline.last()) {
        let _ = writeln!(
            o,
            "\n## Last 60 s\n\nUsage went from {} to {} over {:.0} s ({} samples).",
            first.bytes,
            last.bytes,
            (last.t_ms - first.t_ms) as f64 / 1000.0,
            i.timeline.len()
        );
    }
    if !i.actions.is_empty() {
        let _ = writeln!(o, "\n## What guardian did\n");
        for a in &i.actions {
            let _ = writeln!(
                o,
                "- {} on {}: {} -> {} ({})",
                a.action, a.name, a.before, a.after, a.reason
            );
        }
    }
    let _ = writeln!(o, "\n## Evidence\n\n- Seen by: {}", i.sources.join(", "));
    for n in &i.notes {
        let _ = writeln!(o, "- {n}");
    }
    let _ = writeln!(o, "- Report id: `{}`", i.id);
    o
}

/// The HTML report.
pub fn html(i: &Incident) -> String {
    let mut table = String::new();
    for (label, value) in rows(i) {
        let _ = write!(
            table,
            "<tr><th>{}</th><td>{}</td></tr>",
            esc(label),
            esc(&value)
        );
    }
    let mut notes = String::new();
    for n in &i.notes {
        let _ = write!(notes, "<li>{}</li>", esc(n));
    }
    let title = format!("{}: {}", headline(&i.cause), i.name);
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:760px;margin:2em auto;color:#222}}th{{text-align:left;padding-right:1em;vertical-align:top}}td,th{{border-bottom:1px solid #eee;padding:3px}}.next{{background:#fdf2e9;padding:.6em;border-left:4px solid #e67e22}}</style>
</head><body>
<h1>{title}</h1>
<p><strong>{time}</strong>: {what}.</p>
<p class="next"><strong>Next step:</strong> {next}</p>
<table>{table}</table>
<ul>{notes}</ul>
<p>Seen by: {sources}. Report id: {id}.</p>
</body></html>
"#,
        title = esc(&title),
        time = esc(&i.time),
        what = esc(&what(i).replace("**", "")),
        next = esc(&i.next_step),
        sources = esc(&i.sources.join(", ")),
        id = esc(&i.id),
    )
}
