//! Trial processes die with the hpo process that started them: `kill -9` of hpo leaves no trial writing into the
//! study (Linux: the stage protocol's parent-death signal, armed when `MMRL_PARENT_PID` names the parent).

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mmrl-hpo");

/// A study of one slow toy trial (about a minute), so it is still running when hpo is killed.
const SLOW: &str = r#"sampler = "random"
n_trials = 1
workers = 1
[trial]
run = "mmrl-hpo toy"
params = { x = 0.5, y = 0.5, kind = "a", steps = 600, sleep_ms = 100, fail = false }
[objective]
metric = "score"
direction = "maximize"
[pruner]
kind = "none"
[space]
x = { type = "float", low = 0.0, high = 1.0 }
"#;

/// The pids of the live children of `pid` whose command line contains `word`.
fn children(pid: u32, word: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .collect();
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        if fields[1] == pid.to_string()
            && fields[0] != "Z"
            && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(word)
        {
            out.push(child);
        }
    }
    out
}

/// Whether `pid` is a live process (a zombie waiting to be reaped is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !matches!(
            s[s.rfind(')').unwrap() + 1..].split_whitespace().next(),
            Some("Z" | "X")
        )
    })
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

#[test]
fn a_trial_dies_with_the_hpo_process_that_started_it() {
    let tmp = tempfile::tempdir().unwrap();
    let params = tmp.path().join("hpo.toml");
    std::fs::write(&params, SLOW).unwrap();
    let mut hpo = Command::new(BIN)
        .arg("hpo")
        .arg("--params")
        .arg(&params)
        .arg("--output")
        .arg(tmp.path().join("hpo"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut trial = Vec::new();
    let started = wait_until(Duration::from_secs(60), || {
        trial = children(hpo.id(), " toy --params");
        trial.retain(|&p| {
            String::from_utf8_lossy(
                &std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default(),
            )
            .contains("--output")
        });
        !trial.is_empty()
    });
    assert!(started, "hpo started no trial process");
    let trial = trial[0];

    hpo.kill().unwrap(); // SIGKILL: hpo cannot clean up after itself
    hpo.wait().unwrap();
    let gone = wait_until(Duration::from_secs(5), || !alive(trial));
    if !gone {
        let _ = Command::new("kill")
            .args(["-9", &trial.to_string()])
            .status();
    }
    assert!(
        gone,
        "trial process {trial} outlived the killed hpo process"
    );
    // Nothing writes into the study any more: the interrupted trial never committed an artifact.
    assert!(!Path::new(&tmp.path().join(".hpo.hpo-study/trials/0/manifest.json")).exists());
}

/// The toy stage's `--check` with `MMRL_PARENT_PID` set to `parent`.
fn check_with_parent(parent: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["toy", "--check"])
        .env("MMRL_PARENT_PID", parent)
        .output()
        .unwrap()
}

#[test]
fn a_stage_whose_starter_is_already_gone_stops_at_once() {
    // Our own pid is the parent of the stage: it runs.
    let out = check_with_parent(&std::process::id().to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A pid that is not its parent: the process that started it has exited (the stage was re-parented).
    let out = check_with_parent("1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the stage ran on: {err}");
    assert!(
        err.contains("the process that started this stage (pid 1) has exited"),
        "{err}"
    );
    let out = check_with_parent("not-a-pid");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("MMRL_PARENT_PID=\"not-a-pid\""),
        "{err}"
    );
}
