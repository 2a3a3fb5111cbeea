//! Checkpoints of a run: everything besides tensors in [`RlState`], the policy, its optimizer and PPO's value
//! head in `.bpk` files, written to the work folder and read back on resume.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use mmrl_model::MultimodalModel;
use mmrl_model::schedule::ScheduleState;
use mmrl_model::sft::load_model;
use serde::{Deserialize, Serialize};

use crate::algo::ValueHead;
use crate::error::{Error, Result, io};
use crate::metrics::{EvalMetrics, nan_safe};
use crate::replay::{PrioritizedReplay, ReplayState};

/// A rollout as stored for replay: what the loss needs besides the current policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// Sample index and view.
    pub item: (usize, usize),
    /// Generated answer tokens.
    pub tokens: Vec<u32>,
    /// Behaviour log-probabilities (tokens then `<eos>`).
    pub old_logp: Vec<f32>,
    /// Reference log-probabilities.
    pub ref_logp: Vec<f32>,
    /// Per-token advantages.
    pub advantages: Vec<f32>,
    /// Sequence-level advantage (priority source).
    pub advantage: f64,
}

/// Everything besides tensors that a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlState {
    /// Identity of the run; a checkpoint with another key is not resumed.
    pub key: String,
    /// Rollout steps done.
    pub step: u64,
    /// Optimizer steps done.
    pub optimizer_step: u64,
    /// Prompt stream position: epoch.
    pub cursor_epoch: u64,
    /// Prompt stream position: index in the epoch.
    pub cursor_pos: usize,
    /// Learning-rate schedule state.
    pub schedule: ScheduleState,
    /// Current entropy coefficient (adaptive).
    pub entropy_coef: f64,
    /// Step metrics, one row per step in [`step_columns`] order.
    #[serde(with = "nan_safe::rows")]
    pub rows: Vec<Vec<f64>>,
    /// Val metrics per evaluation.
    pub val: Vec<(u64, EvalMetrics)>,
    /// Replay buffer.
    pub replay: Option<ReplayState<Stored>>,
    /// Zero-variance groups and groups seen.
    pub zero_groups: (u64, u64),
    /// Answers sampled so far (dynamic sampling's extra rounds included): the generation cost.
    #[serde(default)]
    pub generated: u64,
}

impl RlState {
    /// The state of a run that has not started.
    pub fn new(key: String, entropy_coef: f64) -> Self {
        Self {
            key,
            step: 0,
            optimizer_step: 0,
            cursor_epoch: 0,
            cursor_pos: 0,
            schedule: ScheduleState::default(),
            entropy_coef,
            rows: Vec::new(),
            val: Vec::new(),
            replay: None,
            zero_groups: (0, 0),
            generated: 0,
        }
    }
}

/// What a checkpoint holds besides [`RlState`]: the tensors that change while training.
pub(crate) struct Trainable {
    pub policy: MultimodalModel,
    pub optim: ModuleOptimizer,
    pub head: ValueHead,
    pub vopt: ModuleOptimizer,
    pub replay: Option<PrioritizedReplay<Stored>>,
}

/// Writes the checkpoint of `state` into `dir` (the state last, so a half-written checkpoint is never read).
pub(crate) fn save(dir: &Path, t: &Trainable, ppo: bool, state: &RlState) -> Result<()> {
    save_checkpoint(
        dir,
        &t.policy,
        &t.optim,
        ppo.then_some((&t.head, &t.vopt)),
        state,
    )
}

/// Reads the checkpoint in `dir` back into `t` when it belongs to this run (`key`); a checkpoint of another
/// config, seed or inputs is removed. Returns the saved state, if resumed.
pub(crate) fn resume(
    dir: &Path,
    key: &str,
    t: &mut Trainable,
    ppo: bool,
    replay: &crate::replay::ReplayConfig,
) -> Result<Option<RlState>> {
    let state_path = dir.join("state.json");
    if !state_path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read(&state_path).map_err(io("reading", &state_path))?;
    let saved: RlState = serde_json::from_slice(&text)?;
    if saved.key != key {
        tracing::warn!(dir = %dir.display(), "checkpoint of another config, seed or inputs: starting over");
        std::fs::remove_dir_all(dir).map_err(io("removing", dir))?;
        return Ok(None);
    }
    t.policy = load_model(t.policy.clone(), &dir.join("model.bpk"))?;
    let ck = |p: PathBuf| {
        move |e: burn::store::RecordError| Error::Checkpoint {
            path: p,
            message: e.to_string(),
        }
    };
    t.optim = std::mem::replace(&mut t.optim, burn::optim::AdamWConfig::new().init())
        .load(dir.join("optimizer.bpk"))
        .map_err(ck(dir.join("optimizer.bpk")))?;
    if ppo {
        t.head = load_value_head(t.head.clone(), &dir.join("value.bpk"))?;
        t.vopt = std::mem::replace(&mut t.vopt, burn::optim::AdamWConfig::new().init())
            .load(dir.join("value_optimizer.bpk"))
            .map_err(ck(dir.join("value_optimizer.bpk")))?;
    }
    if let (Some(r), Some(s)) = (t.replay.as_mut(), saved.replay.clone()) {
        *r = PrioritizedReplay::from_state(replay.capacity, replay.alpha, replay.eps, s);
    }
    tracing::info!(step = saved.step, dir = %dir.display(), "resuming from checkpoint");
    Ok(Some(saved))
}

fn save_checkpoint(
    dir: &Path,
    model: &MultimodalModel,
    optim: &ModuleOptimizer,
    value: Option<(&ValueHead, &ModuleOptimizer)>,
    state: &RlState,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let ck = |e: burn::store::RecordError| Error::Checkpoint {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    let state_path = dir.join("state.json");
    let _ = std::fs::remove_file(&state_path);
    model
        .clone()
        .into_record()
        .save(dir.join("model.bpk"))
        .map_err(ck)?;
    optim.save(dir.join("optimizer.bpk")).map_err(ck)?;
    if let Some((head, vopt)) = value {
        head.clone()
            .into_record()
            .save(dir.join("value.bpk"))
            .map_err(ck)?;
        vopt.save(dir.join("value_optimizer.bpk")).map_err(ck)?;
    }
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(state)?).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &state_path).map_err(io("renaming", &tmp))?;
    Ok(())
}

fn load_value_head(head: ValueHead, path: &Path) -> Result<ValueHead> {
    let record = burn::store::ModuleRecord::load(path).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    head.try_load_record(record).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
