//! The fleet as Prometheus sees it: every runner's guardian daemon is a scrape target, and the
//! per-service series (`metrics::SERVICE_*`) over a time range say what each compose service
//! used on any runner. Instant PromQL queries over the HTTP API (`/api/v1/query`) with hyper.

use std::{collections::BTreeMap, time::Duration};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes as Chunk;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::Deserialize;

use crate::{
    metrics::{
        SERVICE_LIMIT, SERVICE_OOM_KILLED_RUNS, SERVICE_PEAK, SERVICE_PEAK_UNRECLAIMABLE,
        SERVICE_RUNS, SERVICE_RUNS_WITHOUT_UNRECLAIMABLE, SERVICE_STARTUP_PEAK,
        SERVICE_TYPICAL_WORKING_SET,
    },
    model::Bytes,
    policy::profile::ServiceUsage,
};

/// How long one query may take, connection included.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the fleet could not be read; each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("{url} is not an http:// URL of a Prometheus server (e.g. http://prometheus:9090)")]
    BadUrl { url: String },
    #[error("cannot reach Prometheus at {url}: {why}; check --prometheus")]
    Unreachable { url: String, why: String },
    #[error("{url} answered HTTP {status} to a query, not a Prometheus API answer: is --prometheus the server's base URL?")]
    NotPrometheus { url: String, status: u16 },
    #[error("Prometheus refused the query ({why}); check --selector and --range")]
    Query { why: String },
}

/// What the recommendation rests on: the services' usage across the fleet.
#[derive(Clone, Debug, PartialEq)]
pub struct Fleet {
    pub services: Vec<ServiceUsage>,
    /// Runners (Prometheus `instance`s) that reported any service in the range.
    pub runners: u64,
}

/// A Prometheus server's base URL (`http://host:9090`, with or without a path prefix).
pub struct Prometheus {
    base: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Chunk>>,
}

/// The PromQL selector's matchers: the user's `{a="b",...}` (braces optional) plus a project.
pub fn matchers(selector: Option<&str>, project: Option<&str>) -> String {
    let mut parts = Vec::new();
    if let Some(s) = selector {
        let inner = s
            .trim()
            .trim_start_matches('{')
            .trim_end_matches('}')
            .trim();
        if !inner.is_empty() {
            parts.push(inner.to_string());
        }
    }
    if let Some(p) = project {
        parts.push(format!(
            "project=\"{}\"",
            p.replace('\\', "\\\\").replace('"', "\\\"")
        ));
    }
    parts.join(",")
}

/// The queries, one per quantity, each an instant vector by (project, service) over `range`
/// (a PromQL duration such as `1209600s`): peaks and limits are the highest any runner saw,
/// runs and OOM-killed runs are summed over runners (each runner's highest count in the range).
pub fn queries(m: &str, range: &str) -> Vec<(&'static str, String)> {
    let max = |series: &str| {
        format!("max by (project, service) (max_over_time({series}{{{m}}}[{range}]))")
    };
    let sum = |series: &str| {
        format!("sum by (project, service) (max_over_time({series}{{{m}}}[{range}]))")
    };
    vec![
        ("peak", max(SERVICE_PEAK)),
        ("peak_unreclaimable", max(SERVICE_PEAK_UNRECLAIMABLE)),
        (
            "runs_without_unreclaimable",
            sum(SERVICE_RUNS_WITHOUT_UNRECLAIMABLE),
        ),
        // Runners too old to export the unreclaimable peak: all their runs lack it.
        (
            "runs_on_older_runners",
            format!(
                "sum by (project, service) (max_over_time({SERVICE_RUNS}{{{m}}}[{range}]) \
                 unless on (instance, project, service) \
                 max_over_time({SERVICE_RUNS_WITHOUT_UNRECLAIMABLE}{{{m}}}[{range}]))"
            ),
        ),
        ("startup_peak", max(SERVICE_STARTUP_PEAK)),
        ("typical_working_set", max(SERVICE_TYPICAL_WORKING_SET)),
        ("limit", max(SERVICE_LIMIT)),
        ("runs", sum(SERVICE_RUNS)),
        ("oom_killed_runs", sum(SERVICE_OOM_KILLED_RUNS)),
        (
            "runners",
            format!("count(count by (instance) (max_over_time({SERVICE_RUNS}{{{m}}}[{range}])))"),
        ),
    ]
}

/// One sample of an instant-vector answer.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct VectorSample {
    pub metric: BTreeMap<String, String>,
    /// `[unix seconds, "value"]`.
    pub value: (f64, String),
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<AnswerData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct AnswerData {
    result: Vec<VectorSample>,
}

/// Parses an `/api/v1/query` answer body (vector result).
pub fn parse_answer(body: &[u8]) -> Result<Vec<VectorSample>, PrometheusError> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| PrometheusError::Query {
        why: format!("unreadable answer: {e}"),
    })?;
    if answer.status != "success" {
        return Err(PrometheusError::Query {
            why: answer.error.unwrap_or(answer.status),
        });
    }
    Ok(answer.data.map(|d| d.result).unwrap_or_default())
}

/// Turns the answers of [`queries`] (by name) into per-service usage and the runner count.
pub fn assemble(answers: &BTreeMap<&str, Vec<VectorSample>>) -> Fleet {
    let mut by_service: BTreeMap<(String, String), ServiceUsage> = BTreeMap::new();
    let value = |s: &VectorSample| s.value.1.parse::<f64>().unwrap_or(0.0).max(0.0) as u64;
    for s in answers.get("peak").into_iter().flatten() {
        let project = s.metric.get("project").cloned().unwrap_or_default();
        let service = s.metric.get("service").cloned().unwrap_or_default();
        by_service.insert(
            (project.clone(), service.clone()),
            ServiceUsage {
                project: (!project.is_empty()).then_some(project),
                service,
                runs: 0,
                peak: Bytes(value(s)),
                // A runner too old to export the unreclaimable peak counts its runs as
                // without it (`runs_on_older_runners`): the high-water mark sizes the service.
                peak_unreclaimable: None,
                runs_without_unreclaimable: 0,
                startup_peak: Bytes(0),
                typical_working_set: Bytes(0),
                limit: None,
                oom_killed: false,
            },
        );
    }
    for (name, samples) in answers {
        for s in samples {
            let key = (
                s.metric.get("project").cloned().unwrap_or_default(),
                s.metric.get("service").cloned().unwrap_or_default(),
            );
            let Some(u) = by_service.get_mut(&key) else {
                continue;
            };
            let v = value(s);
            match *name {
                "startup_peak" => u.startup_peak = Bytes(v),
                "peak_unreclaimable" => u.peak_unreclaimable = Some(Bytes(v)),
                "runs_without_unreclaimable" | "runs_on_older_runners" => {
                    u.runs_without_unreclaimable += v
                }
                "typical_working_set" => u.typical_working_set = Bytes(v),
                "limit" => u.limit = Some(Bytes(v)),
                "runs" => u.runs = v,
                "oom_killed_runs" => u.oom_killed = v > 0,
                _ => {}
            }
        }
    }
    let runners = answers
        .get("runners")
        .and_then(|r| r.first())
        .map(value)
        .unwrap_or(0);
    Fleet {
        services: by_service.into_values().collect(),
        runners,
    }
}

impl Prometheus {
    /// A client for the server at `url`; only plain http (put a local proxy in front of TLS).
    pub fn new(url: &str) -> Result<Self, PrometheusError> {
        let base = url.trim_end_matches('/').to_string();
        let ok = base
            .strip_prefix("http://")
            .is_some_and(|rest| !rest.is_empty())
            && base.parse::<hyper::Uri>().is_ok();
        if !ok {
            return Err(PrometheusError::BadUrl { url: url.into() });
        }
        Ok(Self {
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Runs one instant query.
    pub async fn query(
        &self,
        promql: &str,
        at_unix_s: Option<f64>,
    ) -> Result<Vec<VectorSample>, PrometheusError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("query", promql);
        if let Some(t) = at_unix_s {
            form.append_pair("time", &format!("{t:.3}"));
        }
        let query: String = form.finish();
        let uri: hyper::Uri = format!("{}/api/v1/query?{query}", self.base)
            .parse()
            .map_err(|_| PrometheusError::BadUrl {
                url: self.base.clone(),
            })?;
        let unreachable = |why: String| PrometheusError::Unreachable {
            url: self.base.clone(),
            why,
        };
        let fetch = async {
            let response = self.client.get(uri).await.map_err(|e| {
                // The root cause (connection refused, no such host) is what a person can act on.
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why = s.to_string();
                    source = s.source();
                }
                unreachable(why)
            })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, PrometheusError>((status, body))
        };
        let (status, body) = tokio::time::timeout(QUERY_TIMEOUT, fetch)
            .await
            .map_err(|_| unreachable(format!("no answer within {QUERY_TIMEOUT:?}")))??;
        // Prometheus answers a bad query with 400/422 and a JSON error; anything else that is
        // not JSON is some other server.
        match parse_answer(&body) {
            Ok(samples) if status.is_success() => Ok(samples),
            Err(PrometheusError::Query { .. }) | Ok(_)
                if !body.starts_with(b"{") || status == hyper::StatusCode::NOT_FOUND =>
            {
                Err(PrometheusError::NotPrometheus {
                    url: self.base.clone(),
                    status: status.as_u16(),
                })
            }
            Ok(_) => Err(PrometheusError::Query {
                why: format!("HTTP {status}"),
            }),
            Err(e) => Err(e),
        }
    }

    /// Reads the fleet: every query of [`queries`] with the given matchers and range.
    pub async fn fleet(&self, matchers: &str, range: Duration) -> Result<Fleet, PrometheusError> {
        let range = format!("{}s", range.as_secs().max(1));
        // Every query at the same instant, so that a scrape landing between two of them cannot
        // give one answer a runner the others lack (a peak without its runner, seen in CI).
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut answers = BTreeMap::new();
        for (name, q) in queries(matchers, &range) {
            answers.insert(name, self.query(&q, Some(at)).await?);
        }
        Ok(assemble(&answers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_merge_with_the_project_and_lose_their_braces() {
        assert_eq!(
            matchers(Some("{runner_pool=\"x\"}"), None),
            "runner_pool=\"x\""
        );
        assert_eq!(
            matchers(Some(" {a=\"1\", b=~\"2.*\"} "), Some("shop")),
            "a=\"1\", b=~\"2.*\",project=\"shop\""
        );
        assert_eq!(matchers(None, None), "");
    }

    #[test]
    fn queries_name_the_service_series_with_the_users_matchers() {
        let q = queries("runner_pool=\"x\"", "1209600s");
        let peak = &q.iter().find(|(n, _)| *n == "peak").unwrap().1;
        assert_eq!(
            peak,
            "max by (project, service) (max_over_time(guardian_service_memory_peak_bytes{runner_pool=\"x\"}[1209600s]))"
        );
        assert!(q
            .iter()
            .all(|(_, promql)| promql.contains("{runner_pool=\"x\"}[1209600s]")));
    }

    /// An answer as Prometheus 2.42 gives it for `max by (project, service) (...)`.
    const PEAK_ANSWER: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"project":"shop","service":"db"},"value":[1764530000.123,"50331648"]},{"metric":{"project":"","service":"lonely"},"value":[1764530000.123,"1048576"]}]}}"#;

    fn answer(metric: &str, value: &str) -> Vec<VectorSample> {
        parse_answer(
            format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{metric},"value":[1764530000,"{value}"]}}]}}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn answers_become_per_service_usage_with_runs_oom_and_runners() {
        let db = r#"{"project":"shop","service":"db"}"#;
        let answers: BTreeMap<&str, Vec<VectorSample>> = [
            ("peak", parse_answer(PEAK_ANSWER.as_bytes()).unwrap()),
            ("startup_peak", answer(db, "1000")),
            ("limit", answer(db, "67108864")),
            ("runs", answer(db, "7")),
            ("oom_killed_runs", answer(db, "1")),
            ("runners", answer("{}", "2")),
        ]
        .into_iter()
        .collect();
        let fleet = assemble(&answers);
        assert_eq!(fleet.runners, 2);
        assert_eq!(fleet.services.len(), 2);
        let db = fleet.services.iter().find(|s| s.service == "db").unwrap();
        assert_eq!(db.project.as_deref(), Some("shop"));
        assert_eq!(db.peak, Bytes(48 << 20));
        assert_eq!((db.runs, db.oom_killed), (7, true));
        assert_eq!(db.limit, Some(Bytes(64 << 20)));
        let lonely = fleet
            .services
            .iter()
            .find(|s| s.service == "lonely")
            .unwrap();
        assert_eq!(lonely.project, None);
        assert_eq!((lonely.runs, lonely.oom_killed), (0, false));
    }

    #[test]
    fn runs_on_runners_that_do_not_export_the_unreclaimable_peak_size_from_the_high_water_mark() {
        let db = r#"{"project":"shop","service":"db"}"#;
        let answers = |older: &str| -> BTreeMap<&'static str, Vec<VectorSample>> {
            [
                ("peak", parse_answer(PEAK_ANSWER.as_bytes()).unwrap()),
                ("peak_unreclaimable", answer(db, "1048576")),
                ("runs_without_unreclaimable", answer(db, "0")),
                ("runs_on_older_runners", answer(db, older)),
                ("runs", answer(db, "12")),
                ("runners", answer("{}", "2")),
            ]
            .into_iter()
            .collect()
        };
        let mixed = assemble(&answers("10"));
        let db_mixed = mixed.services.iter().find(|s| s.service == "db").unwrap();
        assert_eq!(db_mixed.runs_without_unreclaimable, 10);
        assert_eq!(
            db_mixed.sizing_peak(),
            (Bytes(48 << 20), crate::model::PeakKind::HighWater)
        );
        // Every runner new enough: the unreclaimable peak sizes it.
        let (_, (peak, kind)) = {
            let all_new = assemble(&answers("0"));
            let db = all_new
                .services
                .into_iter()
                .find(|s| s.service == "db")
                .unwrap();
            ((), db.sizing_peak())
        };
        assert_eq!(
            (peak, kind),
            (Bytes(1 << 20), crate::model::PeakKind::Unreclaimable)
        );
    }

    #[test]
    fn an_error_answer_says_why() {
        let e = parse_answer(
            br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("parse error at char 5"), "{e}");
    }

    #[test]
    fn only_http_urls_are_taken() {
        assert!(Prometheus::new("https://p:9090").is_err());
        assert!(Prometheus::new("prometheus:9090").is_err());
        assert!(Prometheus::new("http://").is_err());
    }
}
