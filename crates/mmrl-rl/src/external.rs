//! External checkers: a reward computed by any program, declared in the pipeline TOML with `command`.
//!
//! The protocol is JSON lines over stdin and stdout, as OpenRLHF's and verl's remote reward functions take a
//! batch. Once per step the command is started (relative paths resolve against the current folder, the
//! repository root under `cargo xtask pipeline`), gets one request line per rollout on stdin, then end of
//! input:
//!
//! ```json
//! {"id": "s00042", "qtype": "name_color", "prompt": "name a color in the image", "answer": "red",
//!  "reference": "blue", "checks": {"accept": "red|blue"}}
//! ```
//!
//! (`reference` is `null` for an unlabeled row), and must write one response line per request, in order:
//! `{"score": 1.0}` (`{"score": null}`: the reward does not apply to that rollout), then exit with status 0
//! within `timeout_s`. A crash (non-zero exit), a timeout, a wrong count of lines, a line that is not JSON or has
//! no numeric `score`, and a non-finite score are errors that name the reward and the sample, never a silent 0.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::reward::{BUILTINS, Reward, RewardContext, RewardSpec};

/// Seconds a command may take per step when `timeout_s` is not given.
pub const DEFAULT_TIMEOUT_S: f64 = 60.0;

/// An external checker (see the module docs).
#[derive(Debug, Clone)]
pub struct ExternalReward {
    name: String,
    command: Vec<String>,
    timeout: Duration,
}

/// Checks the `command` and `timeout_s` of a reward spec before any compute.
pub(crate) fn validate_spec(spec: &RewardSpec) -> Result<()> {
    if let Some(command) = &spec.command {
        if BUILTINS.contains(&spec.name.as_str()) {
            return Err(Error::config(
                "rewards.command",
                format!(
                    "{:?} is a built-in reward; give the external checker another name",
                    spec.name
                ),
            ));
        }
        if command.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(Error::config(
                "rewards.command",
                format!(
                    "reward {:?}: command must name a program, e.g. command = [\"python3\", \"checker.py\"]",
                    spec.name
                ),
            ));
        }
    }
    if let Some(t) = spec.timeout_s {
        if spec.command.is_none() {
            return Err(Error::config(
                "rewards.timeout_s",
                format!(
                    "reward {:?}: timeout_s applies to a command only",
                    spec.name
                ),
            ));
        }
        if !(t.is_finite() && t > 0.0) {
            return Err(Error::config(
                "rewards.timeout_s",
                format!(
                    "reward {:?}: must be a positive number of seconds, got {t}",
                    spec.name
                ),
            ));
        }
    }
    Ok(())
}

impl ExternalReward {
    /// The checker of a spec with a `command`.
    pub fn from_spec(spec: &RewardSpec) -> Result<Self> {
        validate_spec(spec)?;
        let command = spec.command.clone().ok_or_else(|| {
            Error::config(
                "rewards.command",
                format!("reward {:?} has no command", spec.name),
            )
        })?;
        Ok(Self {
            name: spec.name.clone(),
            command,
            timeout: Duration::from_secs_f64(spec.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S)),
        })
    }

    fn error(&self, sample: &str, message: impl Into<String>) -> Error {
        Error::ExternalReward {
            name: self.name.clone(),
            sample: sample.to_owned(),
            message: message.into(),
        }
    }

    /// Runs the command on the request lines; returns its stdout, or the error naming `first` (the batch's first
    /// sample) when it cannot start, crashes or times out.
    fn exchange(&self, input: Vec<u8>, first: &str) -> Result<String> {
        let shown = self.command.join(" ");
        let mut child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.error(first, format!("cannot start `{shown}`: {e}")))?;
        let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(self.error(first, format!("`{shown}`: no pipes to the process")));
        };
        // Writing and reading on their own threads: a checker that answers while it reads never deadlocks. A
        // write error means the checker stopped reading; its exit status or line count says why.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            stdout.read_to_string(&mut out).map(|_| out)
        });
        let errors = std::thread::spawn(move || {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err);
            err
        });
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(self.error(
                        first,
                        format!(
                            "`{shown}` did not finish within timeout_s = {} s; it was killed",
                            self.timeout.as_secs_f64()
                        ),
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => return Err(self.error(first, format!("waiting for `{shown}`: {e}"))),
            }
        };
        let _ = writer.join();
        let stderr_text = errors.join().unwrap_or_default();
        if !status.success() {
            let tail: String = stderr_text
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" | ");
            return Err(self.error(
                first,
                format!("`{shown}` crashed ({status}); its stderr ends: {tail}"),
            ));
        }
        match reader.join() {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(self.error(first, format!("reading the output of `{shown}`: {e}"))),
            Err(_) => Err(self.error(first, format!("reading the output of `{shown}` failed"))),
        }
    }

    /// One response line as a score; errors name the sample it answers.
    fn parse_line(&self, line: &str, sample: &str) -> Result<Option<f64>> {
        let value: Value = serde_json::from_str(line).map_err(|e| {
            self.error(
                sample,
                format!("response {line:?} is not JSON ({e}); expected {{\"score\": x}}"),
            )
        })?;
        match value.get("score") {
            Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(self.error(sample, format!("score {n} is not a finite number"))),
            },
            _ => Err(self.error(
                sample,
                format!("response {line:?} has no numeric score; expected {{\"score\": x}} or {{\"score\": null}}"),
            )),
        }
    }
}

/// The request line of one rollout.
fn request(ctx: &RewardContext) -> Value {
    json!({
        "id": ctx.sample_id,
        "qtype": ctx.qtype,
        "prompt": ctx.question,
        "answer": ctx.answer,
        "reference": ctx.reference,
        "checks": ctx.checks,
    })
}

impl Reward for ExternalReward {
    fn name(&self) -> &str {
        &self.name
    }

    /// One rollout alone; the stage calls [`Reward::score_batch`], and an error here reads as not applicable.
    fn score(&self, ctx: &RewardContext) -> Option<f64> {
        self.score_batch(std::slice::from_ref(ctx))
            .ok()
            .and_then(|mut v| v.pop().flatten())
    }

    fn score_batch(&self, ctxs: &[RewardContext]) -> Result<Vec<Option<f64>>> {
        let Some(first) = ctxs.first() else {
            return Ok(Vec::new());
        };
        let mut input = Vec::new();
        for ctx in ctxs {
            serde_json::to_writer(&mut input, &request(ctx))?;
            input.push(b'\n');
        }
        let out = self.exchange(input, first.sample_id)?;
        let lines: Vec<&str> = out.lines().collect();
        if lines.len() != ctxs.len() {
            let sample = ctxs
                .get(lines.len())
                .map_or_else(|| ctxs[ctxs.len() - 1].sample_id, |c| c.sample_id);
            return Err(self.error(
                sample,
                format!(
                    "`{}` wrote {} lines for {} rollouts; expected one {{\"score\": x}} line per request line",
                    self.command.join(" "),
                    lines.len(),
                    ctxs.len()
                ),
            ));
        }
        lines
            .iter()
            .zip(ctxs)
            .map(|(line, ctx)| self.parse_line(line, ctx.sample_id))
            .collect()
    }
}
