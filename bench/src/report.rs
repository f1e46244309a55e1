//! Repeated measurements (min / median / max) and the two outputs:
//! `summary.json` (medians, plus `KEY_min_max`) and `report.md`.

use std::collections::BTreeMap;

use serde_json::json;

/// min / median / max of repeated measurements.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) min: f64,
    pub(crate) median: f64,
    pub(crate) max: f64,
}

impl Stats {
    pub(crate) fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self {
            min: values[0],
            median: values[values.len() / 2],
            max: values[values.len() - 1],
        }
    }

    pub(crate) fn row(&self, name: &str, unit: &str) -> String {
        format!(
            "| {name} | {} | {} | {} | {unit} |",
            fmt(self.min),
            fmt(self.median),
            fmt(self.max)
        )
    }
}

pub(crate) fn fmt(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

pub(crate) struct Report {
    pub(crate) summary: BTreeMap<String, serde_json::Value>,
    pub(crate) markdown: Vec<String>,
}

impl Report {
    pub(crate) fn figure(&mut self, key: &str, stats: Stats) {
        self.summary.insert(key.to_owned(), json!(stats.median));
        self.summary
            .insert(format!("{key}_min_max"), json!([stats.min, stats.max]));
    }
}

/// How long each stage took (wall seconds), for the summary's
/// `stage_seconds` and the report's last table.
#[derive(Default)]
pub(crate) struct Stages {
    seconds: Vec<(&'static str, f64)>,
}

impl Stages {
    pub(crate) fn took(&mut self, stage: &'static str, started: std::time::Instant) {
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("stage {stage}: {seconds:.0} s");
        self.seconds.push((stage, seconds));
    }

    pub(crate) fn report(self, report: &mut Report) {
        let total: f64 = self.seconds.iter().map(|(_, s)| s).sum();
        let rows: Vec<String> = self
            .seconds
            .iter()
            .map(|(stage, seconds)| format!("| {stage} | {seconds:.0} |"))
            .collect();
        report.summary.insert(
            "stage_seconds".into(),
            json!(
                self.seconds
                    .iter()
                    .map(|&(stage, seconds)| (stage.to_owned(), json!(seconds.round())))
                    .collect::<BTreeMap<_, _>>()
            ),
        );
        report.markdown.push(format!(
            "### Stage durations\n\n| stage | seconds |\n|---|---|\n{}\n| all | {total:.0} |\n",
            rows.join("\n")
        ));
    }
}
