//! RL step throughput: rollout steps per second of the `rl` stage on real artifacts (generation, scoring,
//! advantages and the update; the starting and final val evaluations are not timed).
//! `cargo run -p mmrl-rl --example step_bench -- SFT_DIR DATA_DIR [STEPS] [ALGORITHM] [REPS]`, where DATA_DIR
//! holds `select`, `image`, `audio` and `tabular`; the default config otherwise (64 rollouts of 8 per prompt).

use std::path::PathBuf;
use std::time::Instant;

use mmrl_model::data::InputPaths;
use mmrl_rl::algo::Algorithm;
use mmrl_rl::stage::{self, Hooks, Progress, RlConfig, RlInputs};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 3 {
        anyhow::bail!("usage: step_bench SFT_DIR DATA_DIR [STEPS] [grpo|rloo|ppo] [REPS]");
    }
    let (model, data) = (PathBuf::from(&a[1]), PathBuf::from(&a[2]));
    let steps: u64 = a.get(3).map_or(Ok(22), |s| s.parse())?;
    let algorithm = match a.get(4).map_or("grpo", String::as_str) {
        "grpo" => Algorithm::Grpo,
        "rloo" => Algorithm::Rloo,
        "ppo" => Algorithm::Ppo,
        other => anyhow::bail!("unknown algorithm {other:?}"),
    };
    let reps: usize = a.get(5).map_or(Ok(1), |s| s.parse())?;
    anyhow::ensure!(steps >= 4, "STEPS must be at least 4");
    let inputs = RlInputs {
        model,
        data: InputPaths {
            samples: data.join("select"),
            image: Some(data.join("image")),
            audio: Some(data.join("audio")),
            tabular: Some(data.join("tabular")),
        },
    };
    let config = RlConfig {
        algorithm,
        steps,
        eval_every: steps * 10,
        checkpoint_every: 0,
        ..Default::default()
    };
    let scratch = tempfile::tempdir()?;
    for rep in 0..reps {
        let mut marks: Vec<(u64, Instant)> = Vec::new();
        let mut on_step = |p: Progress| marks.push((p.step, Instant::now()));
        let hooks = Hooks {
            progress: Some(&mut on_step),
            ..Default::default()
        };
        let out = scratch.path().join(format!("rl{rep}"));
        stage::run(&config, 1, &inputs, &out, hooks)?;
        // From the end of step 1 to the end of step STEPS - 1: no evaluation falls in between.
        let (first, last) = (marks[0], marks[marks.len() - 2]);
        let timed = (last.0 - first.0) as f64;
        let seconds = last.1.duration_since(first.1).as_secs_f64();
        println!(
            "{algorithm:?} rep {rep}: {:.2} steps/s ({:.0} rollouts/s) over {timed} steps, {seconds:.1} s",
            timed / seconds,
            timed * config.batch_size as f64 / seconds
        );
    }
    Ok(())
}
