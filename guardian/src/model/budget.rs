//! Memory budgets: how much a container (or a plain cgroup) may use before guardian squeezes it,
//! and where that number came from. Resolution is a pure function of labels, rules and profiles.

use serde::{Deserialize, Serialize};

use super::{Bytes, Container};

/// Label that sets a container's budget, e.g. `guardian.budget=512m`.
pub const LABEL_BUDGET: &str = "guardian.budget";
/// Label that sets a container's priority (higher = squeezed later), e.g. `guardian.priority=10`.
pub const LABEL_PRIORITY: &str = "guardian.priority";
/// Label `guardian.avoid=true`: never squeeze, freeze or kill this container.
pub const LABEL_AVOID: &str = "guardian.avoid";

/// Where a budget came from, most specific first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "from")]
pub enum BudgetSource {
    /// The container's `guardian.budget` label.
    Label,
    /// A `[[budget]]` rule of the config, named by what it matches.
    Rule(String),
    /// A profile file written by `guardian profile`.
    Profile(String),
}

impl std::fmt::Display for BudgetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BudgetSource::Label => f.write_str("label"),
            BudgetSource::Rule(r) => write!(f, "rule {r}"),
            BudgetSource::Profile(p) => write!(f, "profile {p}"),
        }
    }
}

/// A budget and its origin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Budget {
    pub bytes: Bytes,
    pub source: BudgetSource,
}

/// What guardian may do to one container or cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Guard {
    /// `None`: observe only.
    pub budget: Option<Budget>,
    /// Lower is squeezed, frozen and killed first.
    pub priority: i32,
    /// Never act on it.
    pub avoid: bool,
    /// Labels that were set but not used, each with why (not a size, below the floor, more
    /// than the host): logged when guarding starts. An ignored label never stops the watching.
    pub ignored_labels: Vec<String>,
}

/// One of the labels guardian reads from containers; whoever starts a container sets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrustedLabel {
    #[serde(rename = "guardian.budget")]
    Budget,
    #[serde(rename = "guardian.priority")]
    Priority,
    #[serde(rename = "guardian.avoid")]
    Avoid,
}

/// How far container labels are believed: which labels count at all (`[enforce]
/// trusted_labels`), and the bounds a label budget must fall in to be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelPolicy {
    pub trusted: Vec<TrustedLabel>,
    /// A label budget below this is ignored (the ladder's `floor`).
    pub floor: Bytes,
    /// A label budget above the host's MemTotal is ignored; `None` when unknown.
    pub host_total: Option<Bytes>,
}

impl Default for LabelPolicy {
    /// Every label trusted, no bounds: what tests of rules and profiles need.
    fn default() -> Self {
        Self {
            trusted: vec![
                TrustedLabel::Budget,
                TrustedLabel::Priority,
                TrustedLabel::Avoid,
            ],
            floor: Bytes(0),
            host_total: None,
        }
    }
}

/// A `guardian.budget` label's value as a budget, or why it is not used.
pub fn label_budget(value: &str, policy: &LabelPolicy) -> Result<Bytes, String> {
    let bytes: Bytes = value
        .parse()
        .map_err(|_| format!("{LABEL_BUDGET}={value:?} is not a size (e.g. 512m): ignored"))?;
    if bytes < policy.floor {
        return Err(format!(
            "{LABEL_BUDGET}={value} is below the floor of {} (enforce.floor): ignored",
            policy.floor
        ));
    }
    if let Some(total) = policy.host_total.filter(|t| bytes > *t) {
        return Err(format!(
            "{LABEL_BUDGET}={value} is more than the host's memory ({total}): ignored"
        ));
    }
    Ok(bytes)
}

/// A `[[budget]]` rule of the config: every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetRule {
    pub project: Option<String>,
    pub service: Option<String>,
    /// Image name; `postgres` matches `postgres:16` too.
    pub image: Option<String>,
    /// Container name.
    pub name: Option<String>,
    /// A cgroup path relative to the memory hierarchy's root (e.g. `/ci.slice/job`): budgets
    /// for groups that are not containers. The daemon watches it while it exists.
    pub cgroup: Option<String>,
    /// The budget, e.g. "512m".
    pub memory: Option<SizeText>,
    pub priority: Option<i32>,
    #[serde(default)]
    pub avoid: bool,
}

/// A size as written in a config ("512m"), parsed when the config is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeText(pub Bytes);

impl<'de> Deserialize<'de> for SizeText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(SizeText).map_err(serde::de::Error::custom)
    }
}

impl BudgetRule {
    /// How the rule is named in `ps` and logs, e.g. `service=db` or `cgroup=/t`.
    pub fn describe(&self) -> String {
        let fields = [
            ("project", &self.project),
            ("service", &self.service),
            ("image", &self.image),
            ("name", &self.name),
            ("cgroup", &self.cgroup),
        ];
        let parts: Vec<String> = fields
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
        if parts.is_empty() {
            "*".to_string()
        } else {
            parts.join(",")
        }
    }

    /// Whether the rule names this container. Rules with a `cgroup` only match that cgroup.
    pub fn matches(&self, c: &Container) -> bool {
        if self.cgroup.is_some() {
            return false;
        }
        let compose = c.compose.as_ref();
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        let image_matches = self.image.as_deref().is_none_or(|w| {
            c.image == w
                || c.image
                    .strip_prefix(w)
                    .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('@'))
        });
        eq(&self.project, compose.map(|s| s.project.as_str()))
            && eq(&self.service, compose.map(|s| s.service.as_str()))
            && eq(&self.name, Some(c.name.as_str()))
            && image_matches
    }
}

/// A budget from a profile file: the recommended limit of `(project, service)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileBudget {
    pub project: Option<String>,
    pub service: String,
    pub limit: Bytes,
    /// The file it came from, for `ps`.
    pub file: String,
}

/// Resolves a container's guard: its labels, then the first matching rule, then a profile.
/// Priority and avoid come from the label, else the first matching rule that sets them.
/// Labels not in `policy.trusted` are not read at all; a label that is read but unusable is
/// named in [`Guard::ignored_labels`] and the next source is used.
pub fn resolve_guard(
    c: &Container,
    rules: &[BudgetRule],
    profiles: &[ProfileBudget],
    policy: &LabelPolicy,
) -> Guard {
    let trusted = |label: TrustedLabel, name: &str| {
        policy
            .trusted
            .contains(&label)
            .then(|| c.labels.get(name))
            .flatten()
    };
    let mut ignored_labels = Vec::new();
    let matching: Vec<&BudgetRule> = rules.iter().filter(|r| r.matches(c)).collect();
    let label_budget = trusted(TrustedLabel::Budget, LABEL_BUDGET)
        .and_then(|v| {
            label_budget(v, policy)
                .map_err(|why| ignored_labels.push(why))
                .ok()
        })
        .map(|bytes| Budget {
            bytes,
            source: BudgetSource::Label,
        });
    let label_priority = trusted(TrustedLabel::Priority, LABEL_PRIORITY).and_then(|v| {
        v.parse::<i32>()
            .map_err(|_| {
                ignored_labels.push(format!(
                    "{LABEL_PRIORITY}={v:?} is not a whole number: ignored"
                ))
            })
            .ok()
    });
    let label_avoid = trusted(TrustedLabel::Avoid, LABEL_AVOID)
        .map(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let rule_budget = || {
        matching.iter().find_map(|r| {
            r.memory.map(|m| Budget {
                bytes: m.0,
                source: BudgetSource::Rule(r.describe()),
            })
        })
    };
    let profile_budget = || {
        let (project, service) = match &c.compose {
            Some(s) => (Some(s.project.as_str()), s.service.as_str()),
            None => (None, c.name.as_str()),
        };
        profiles
            .iter()
            .find(|p| p.service == service && p.project.as_deref() == project)
            .map(|p| Budget {
                bytes: p.limit,
                source: BudgetSource::Profile(p.file.clone()),
            })
    };
    Guard {
        budget: label_budget.or_else(rule_budget).or_else(profile_budget),
        priority: label_priority
            .or_else(|| matching.iter().find_map(|r| r.priority))
            .unwrap_or(0),
        avoid: label_avoid.unwrap_or_else(|| matching.iter().any(|r| r.avoid)),
        ignored_labels,
    }
}

/// The guard of a plain cgroup named by a `cgroup = ...` rule.
pub fn cgroup_guard(rule: &BudgetRule) -> Guard {
    Guard {
        budget: rule.memory.map(|m| Budget {
            bytes: m.0,
            source: BudgetSource::Rule(rule.describe()),
        }),
        priority: rule.priority.unwrap_or(0),
        avoid: rule.avoid,
        ignored_labels: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::model::ComposeService;

    const MIB: u64 = 1 << 20;

    fn db() -> Container {
        Container {
            id: "a".repeat(64),
            name: "ci-db-1".into(),
            image: "postgres:16".into(),
            compose: Some(ComposeService {
                project: "ci".into(),
                service: "db".into(),
                number: Some(1),
                oneoff: false,
            }),
            memory_limit: None,
            memory_reservation: None,
            pid: None,
            state: "running".into(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            oom_killed: false,
            health: None,
            cgroup: None,
            labels: BTreeMap::new(),
            tmpfs: Vec::new(),
        }
    }

    fn with_labels(labels: BTreeMap<String, String>) -> Container {
        Container { labels, ..db() }
    }

    fn rule(toml_text: &str) -> BudgetRule {
        toml::from_str(toml_text).unwrap()
    }

    fn profile(limit: u64) -> ProfileBudget {
        ProfileBudget {
            project: Some("ci".into()),
            service: "db".into(),
            limit: Bytes(limit),
            file: "profiles/ci.toml".into(),
        }
    }

    #[test]
    fn label_beats_rule_beats_profile() {
        let rules = [rule("service = \"db\"\nmemory = \"256m\"")];
        let profiles = [profile(128 * MIB)];
        let labels = BTreeMap::from([(LABEL_BUDGET.to_string(), "512m".to_string())]);
        let g = resolve_guard(
            &with_labels(labels),
            &rules,
            &profiles,
            &LabelPolicy::default(),
        );
        assert_eq!(g.budget.unwrap().bytes, Bytes(512 * MIB));

        let g = resolve_guard(&db(), &rules, &profiles, &LabelPolicy::default());
        let b = g.budget.unwrap();
        assert_eq!(
            (b.bytes, b.source),
            (Bytes(256 * MIB), BudgetSource::Rule("service=db".into()))
        );

        let g = resolve_guard(&db(), &[], &profiles, &LabelPolicy::default());
        let b = g.budget.unwrap();
        assert_eq!(b.bytes, Bytes(128 * MIB));
        assert_eq!(b.source.to_string(), "profile profiles/ci.toml");

        assert_eq!(
            resolve_guard(&db(), &[], &[], &LabelPolicy::default()).budget,
            None
        );
    }

    #[test]
    fn rules_match_every_field_given_and_images_by_repository() {
        assert!(rule("image = \"postgres\"").matches(&db()));
        assert!(rule("image = \"postgres:16\"").matches(&db()));
        assert!(!rule("image = \"postgr\"").matches(&db()));
        assert!(rule("project = \"ci\"\nservice = \"db\"").matches(&db()));
        assert!(!rule("project = \"other\"\nservice = \"db\"").matches(&db()));
        assert!(!rule("cgroup = \"/ci-db-1\"").matches(&db()));
    }

    #[test]
    fn priority_and_avoid_from_labels_or_rules() {
        let rules = [rule("service = \"db\"\npriority = 5\navoid = true")];
        let g = resolve_guard(&db(), &rules, &[], &LabelPolicy::default());
        assert_eq!((g.priority, g.avoid), (5, true));
        let labels = BTreeMap::from([
            (LABEL_PRIORITY.to_string(), "-3".to_string()),
            (LABEL_AVOID.to_string(), "false".to_string()),
        ]);
        let g = resolve_guard(&with_labels(labels), &rules, &[], &LabelPolicy::default());
        assert_eq!((g.priority, g.avoid), (-3, false));
    }

    #[test]
    fn a_bad_size_in_a_rule_is_an_error() {
        let e = toml::from_str::<BudgetRule>("memory = \"lots\"").unwrap_err();
        assert!(e.message().contains("invalid size"), "{e}");
    }

    fn labelled(pairs: &[(&str, &str)]) -> Container {
        with_labels(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn bounded() -> LabelPolicy {
        LabelPolicy {
            floor: Bytes(32 << 20),
            host_total: Some(Bytes(8 << 30)),
            ..LabelPolicy::default()
        }
    }

    #[test]
    fn a_label_budget_of_zero_or_below_the_floor_is_ignored_and_the_rule_applies() {
        let rules = [rule("image = \"postgres\"\nmemory = \"1g\"")];
        for value in ["0", "1m", "31m"] {
            let g = resolve_guard(&labelled(&[(LABEL_BUDGET, value)]), &rules, &[], &bounded());
            assert_eq!(
                g.budget.as_ref().map(|b| b.bytes),
                Some(Bytes(1 << 30)),
                "{value}"
            );
            assert!(
                g.ignored_labels[0].contains("below the floor"),
                "{:?}",
                g.ignored_labels
            );
        }
        let g = resolve_guard(&labelled(&[(LABEL_BUDGET, "32m")]), &rules, &[], &bounded());
        assert_eq!(g.budget.unwrap().bytes, Bytes(32 << 20));
    }

    #[test]
    fn a_label_budget_above_the_host_or_garbage_is_ignored_and_said() {
        for (value, why) in [
            ("64g", "more than the host"),
            ("lots", "not a size"),
            ("-5m", "not a size"),
            ("", "not a size"),
        ] {
            let g = resolve_guard(&labelled(&[(LABEL_BUDGET, value)]), &[], &[], &bounded());
            assert_eq!(g.budget, None, "{value}");
            assert!(
                g.ignored_labels[0].contains(why),
                "{value}: {:?}",
                g.ignored_labels
            );
        }
        let g = resolve_guard(&labelled(&[(LABEL_PRIORITY, "high")]), &[], &[], &bounded());
        assert_eq!(g.priority, 0);
        assert!(g.ignored_labels[0].contains("not a whole number"));
    }

    #[test]
    fn untrusted_labels_are_not_read_at_all() {
        let rules = [rule("image = \"postgres\"\nmemory = \"1g\"\npriority = 3")];
        let c = labelled(&[
            (LABEL_BUDGET, "64m"),
            (LABEL_PRIORITY, "100"),
            (LABEL_AVOID, "true"),
        ]);
        let none = LabelPolicy {
            trusted: vec![],
            ..bounded()
        };
        let g = resolve_guard(&c, &rules, &[], &none);
        assert_eq!(g.budget.unwrap().bytes, Bytes(1 << 30));
        assert_eq!((g.priority, g.avoid), (3, false));
        assert!(g.ignored_labels.is_empty());
        let budget_only = LabelPolicy {
            trusted: vec![TrustedLabel::Budget],
            ..bounded()
        };
        let g = resolve_guard(&c, &rules, &[], &budget_only);
        assert_eq!(g.budget.unwrap().bytes, Bytes(64 << 20));
        assert_eq!((g.priority, g.avoid), (3, false));
    }
}
