//! Container labels, which whoever starts a container sets (`key=value` lines, as
//! `docker run --label` takes them): a budget from a label is never below the floor nor above
//! the host, and a label never stops the guarding.
#![no_main]

use std::collections::{BTreeMap, HashMap};

use guardian::model::{
    resolve_guard, BudgetRule, BudgetSource, Bytes, ComposeService, Container, LabelPolicy,
    SizeText,
};
use libfuzzer_sys::fuzz_target;

const MIB: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let labels: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let container = Container {
        compose: ComposeService::from_labels(&labels),
        labels: labels
            .iter()
            .filter(|(k, _)| k.starts_with("guardian."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        id: "0".repeat(64),
        name: "fuzz-app-1".into(),
        image: "app:latest".into(),
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
        tmpfs: Vec::new(),
    };
    let rule = BudgetRule {
        memory: Some(SizeText(Bytes(256 * MIB))),
        ..Default::default()
    };
    let policy = LabelPolicy {
        floor: Bytes(32 * MIB),
        host_total: Some(Bytes(8192 * MIB)),
        ..Default::default()
    };
    let guard = resolve_guard(&container, &[rule], &[], &policy);
    let budget = guard
        .budget
        .expect("the rule's budget when no label is usable");
    if budget.source == BudgetSource::Label {
        assert!(budget.bytes >= policy.floor && Some(budget.bytes) <= policy.host_total);
    } else {
        assert_eq!(budget.bytes, Bytes(256 * MIB));
    }
});
