//! Intermediate values of a stage run as an HPO trial, for pruning.
//!
//! The hpo stage runs a trial as a child process with [`TRIAL_REPORT_ENV`] naming a file; a stage that
//! reports progress (sft and rl report their val metric per evaluation) appends one JSON line
//! `{"step":N,"value":X}` per value. Outside a trial the variable is unset and reporting does nothing. The
//! hpo stage reads the file while the trial runs and stops the process when its pruner says so.

use std::io::Write;
use std::path::Path;

/// Environment variable naming the file a trial appends its intermediate values to.
pub const TRIAL_REPORT_ENV: &str = "MMRL_TRIAL_REPORT";

/// Appends `{"step":step,"value":value}` to the file named by [`TRIAL_REPORT_ENV`], if it is set. A
/// failure to write is logged, never fatal: pruning is an optimisation, the trial's result still counts.
pub fn report_intermediate(step: u64, value: f64) {
    let Some(path) = std::env::var_os(TRIAL_REPORT_ENV) else {
        return;
    };
    if let Err(e) = append(Path::new(&path), step, value) {
        tracing::warn!(path = %Path::new(&path).display(), error = %e, "could not report an intermediate value");
    }
}

fn append(path: &Path, step: u64, value: f64) -> std::io::Result<()> {
    let line = format!(
        "{}\n",
        serde_json::json!({ "step": step, "value": if value.is_finite() { serde_json::json!(value) } else { serde_json::Value::Null } })
    );
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write call per line: concurrent readers see whole lines or nothing of a line.
    file.write_all(line.as_bytes())?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_one_json_line_per_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        append(&path, 1, 0.5).unwrap();
        append(&path, 2, f64::NAN).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["step"], 1);
        assert_eq!(lines[0]["value"], 0.5);
        assert!(lines[1]["value"].is_null());
    }
}
