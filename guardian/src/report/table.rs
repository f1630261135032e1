//! The recommendation table of `guardian profile` as CSV (RFC 4180, sizes in bytes, for
//! spreadsheets and scripts) or Markdown (sizes as compose writes them, for a pull request).

use crate::model::{compose_size, Recommendation};

/// Output formats of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Table {
    Csv,
    Markdown,
}

/// Renders `recs` in `format`, one row per service, with a header.
pub fn render(recs: &[Recommendation], format: Table) -> String {
    match format {
        Table::Csv => csv(recs),
        Table::Markdown => markdown(recs),
    }
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

fn csv(recs: &[Recommendation]) -> String {
    let mut out = String::from("project,service,runs,peak_bytes,peak_unreclaimable_bytes,sized_from,startup_peak_bytes,limit_bytes,oom_killed,recommended_limit_bytes,recommended_reservation_bytes,reason\r\n");
    for r in recs {
        let u = &r.usage;
        let row = [
            u.project.clone().unwrap_or_default(),
            u.service.clone(),
            u.runs.to_string(),
            u.peak.0.to_string(),
            u.peak_unreclaimable
                .map(|p| p.0.to_string())
                .unwrap_or_default(),
            sized_from(r).to_string(),
            u.startup_peak.0.to_string(),
            u.limit.map(|l| l.0.to_string()).unwrap_or_default(),
            u.oom_killed.to_string(),
            r.recommended_limit.0.to_string(),
            r.recommended_reservation.0.to_string(),
            r.reason.clone(),
        ];
        let fields: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    out
}

/// Which peak sized the limit, as the JSON says it.
fn sized_from(r: &Recommendation) -> &'static str {
    match r.sized_from {
        crate::model::PeakKind::Unreclaimable => "unreclaimable",
        crate::model::PeakKind::HighWater => "high_water",
    }
}

fn md_cell(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('\n', " ")
}

fn markdown(recs: &[Recommendation]) -> String {
    let mut out = String::from(
        "| Service | Runs | Peak | Unreclaimable peak | Start-up peak | Limit | OOM-killed | Recommended limit | Reservation | Why |\n|---|---:|---:|---:|---:|---:|---|---:|---:|---|\n",
    );
    for r in recs {
        let u = &r.usage;
        let name = match &u.project {
            Some(p) => format!("{p}/{}", u.service),
            None => u.service.clone(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            md_cell(&name),
            u.runs,
            u.peak,
            u.peak_unreclaimable
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            u.startup_peak,
            u.limit.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            if u.oom_killed { "yes" } else { "no" },
            compose_size(r.recommended_limit),
            compose_size(r.recommended_reservation),
            md_cell(&r.reason),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::Bytes,
        policy::profile::{recommend, ServiceUsage},
    };

    fn rec(service: &str) -> Recommendation {
        recommend(
            &ServiceUsage {
                project: Some("shop".into()),
                service: service.into(),
                runs: 3,
                peak: Bytes(100 << 20),
                peak_unreclaimable: Some(Bytes(100 << 20)),
                runs_without_unreclaimable: 0,
                startup_peak: Bytes(60 << 20),
                typical_working_set: Bytes(50 << 20),
                limit: Some(Bytes(256 << 20)),
                oom_killed: false,
            },
            0.2,
        )
    }

    #[test]
    fn csv_quotes_fields_with_commas_and_quotes_and_keeps_bytes_exact() {
        let text = render(&[rec("db,\"main\"")], Table::Csv);
        let mut lines = text.split("\r\n");
        assert!(lines
            .next()
            .unwrap()
            .starts_with("project,service,runs,peak_bytes"));
        let row = lines.next().unwrap();
        assert!(
            row.starts_with(
                "shop,\"db,\"\"main\"\"\",3,104857600,104857600,unreclaimable,62914560,268435456,false,125829120,"
            ),
            "{row}"
        );
    }

    #[test]
    fn markdown_is_a_table_with_one_row_per_service_and_escaped_pipes() {
        let text = render(&[rec("a|b"), rec("web")], Table::Markdown);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[2].starts_with("| shop/a\\|b | 3 | 100.0MiB |"),
            "{text}"
        );
        assert!(lines[3].contains("| 120m |"), "{text}");
        assert!(lines.iter().all(|l| l.starts_with('|') && l.ends_with('|')));
    }
}
