//! The two passes shared by the stage and the folder command.
//!
//! Pass 1 checks every image and keeps only what decisions need (statistics, hash, byte digest), so memory does
//! not grow with image size. Then duplicates are grouped, each sample's fate is decided, and the normalization is
//! fitted on the train images that stay. Pass 2 reads the input again and writes tensors batch by batch; it
//! decodes a second time rather than holding every tensor in memory.

use std::collections::{BTreeMap, HashSet};

use mmrl_artifact::sample::Split;
use rayon::prelude::*;
use serde::Serialize;

use crate::config::{ImageConfig, Policy};
use crate::dedup;
use crate::normalize::{ChannelSums, Normalization};
use crate::process::{Preprocessor, Scratch};
use crate::reject::{Reason, Reject};
use crate::{Error, Result};

/// One input row: a sample id, its split, where it came from, and its encoded image.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub id: String,
    pub split: Split,
    pub line: u64,
    pub image: Media,
}

/// The image of an input row.
#[derive(Debug, Clone)]
pub(crate) enum Media {
    /// The sample has no image.
    None,
    /// The encoded file.
    Bytes(Vec<u8>),
    /// The file could not be read; the message says why.
    Unreadable(String),
}

/// Something that can be read, in the same order, more than once.
pub(crate) trait Source: Sync {
    /// Where the rows come from, for error messages.
    fn describe(&self) -> String;
    /// Calls `f` with consecutive batches of rows.
    fn for_each_batch(&self, f: &mut dyn FnMut(Vec<Row>) -> Result<()>) -> Result<()>;
}

/// What pass 1 learned about an image that passed every check.
#[derive(Debug, Clone)]
struct Checked {
    sums: ChannelSums,
    fingerprint: dedup::Fingerprint,
    digest: [u8; 32],
    kind: String,
}

#[derive(Debug, Clone)]
enum Outcome {
    NoImage,
    Checked(Box<Checked>),
    Rejected(Reject),
}

/// What happens to a sample.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fate {
    /// Written with its tensor.
    Present,
    /// Written with `image_present = false`: the input had no image.
    NoImage,
    /// Written with `image_present = false`: the image failed a check whose policy is `absent`.
    Absent(Reject),
    /// Not written; listed in the rejects.
    Drop(Reject),
}

/// A row after pass 1.
#[derive(Debug, Clone)]
pub(crate) struct Info {
    pub id: String,
    pub split: Split,
    pub line: u64,
    outcome: Outcome,
    pub fate: Fate,
}

/// A group of near-duplicate images, as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DuplicateGroup {
    /// Sample ids (or file names), in input order.
    pub ids: Vec<String>,
    /// Their splits, in the same order.
    pub splits: Vec<String>,
    /// Whether every member has byte-identical image bytes.
    pub identical_bytes: bool,
    /// The largest hash distance between any two members.
    pub max_distance: u32,
    /// The split whose members stay: the most protected one present (test, then val, then train).
    pub kept_split: String,
    /// The members dropped (the rest of the group stays).
    pub dropped: Vec<String>,
}

/// Duplicate statistics of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DuplicateReport {
    /// The hash threshold used (bits).
    pub max_distance: u32,
    /// The thumbnail correlation threshold used.
    pub min_correlation: f32,
    /// The standardized luma difference threshold used for sources smaller than the thumbnail.
    pub small_max_diff: f32,
    /// Groups found.
    pub groups: usize,
    /// Images in those groups.
    pub images_in_groups: usize,
    /// Groups whose members all have identical bytes (exact copies).
    pub identical_bytes_groups: usize,
    /// Groups with members in more than one split.
    pub cross_split_groups: usize,
    /// Members dropped (from less protected splits, or within a split with `dedup_within_split`).
    pub dropped: usize,
    /// Members dropped, per split.
    pub dropped_by_split: BTreeMap<String, usize>,
    /// Every group.
    pub list: Vec<DuplicateGroup>,
}

/// Raw statistics of a split's view-0 images (0-1 scale, before normalization), for drift checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitStats {
    /// Images counted.
    pub images: usize,
    /// Mean per channel.
    pub mean: [f64; 3],
    /// Standard deviation per channel.
    pub std: [f64; 3],
}

/// A sample kept without its image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AbsentSample {
    /// Sample id or file name.
    pub id: String,
    /// Why.
    pub reason: Reason,
    /// The message.
    pub detail: String,
}

/// What pass 1 and the decisions produced.
pub(crate) struct Plan {
    pub rows: Vec<Info>,
    pub normalization: Normalization,
    pub fitted: bool,
    pub fit_sums: ChannelSums,
    pub fit_images: usize,
    pub duplicates: DuplicateReport,
    pub formats: BTreeMap<String, usize>,
    pub by_split: BTreeMap<String, SplitStats>,
}

/// Pass 1 and the decisions.
pub(crate) fn plan(pre: &Preprocessor, source: &dyn Source) -> Result<Plan> {
    let config = pre.config();
    let mut rows: Vec<Info> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    source.for_each_batch(&mut |batch| {
        let outcomes: Vec<Outcome> = batch
            .par_iter()
            .map_init(Scratch::new, |scratch, row| match &row.image {
                Media::None => Outcome::NoImage,
                Media::Unreadable(e) => Outcome::Rejected(Reject::new(
                    Reason::UndecodableImage,
                    format!("cannot read: {e}"),
                )),
                Media::Bytes(bytes) => match pre.analyze(scratch, bytes) {
                    Ok(a) => Outcome::Checked(Box::new(Checked {
                        sums: a.sums,
                        fingerprint: a.fingerprint,
                        digest: *blake3::hash(bytes).as_bytes(),
                        kind: format!("{}/{}", a.format.as_str(), a.layout),
                    })),
                    Err(reject) => Outcome::Rejected(reject),
                },
            })
            .collect();
        for (row, outcome) in batch.into_iter().zip(outcomes) {
            if !seen.insert(row.id.clone()) {
                return Err(Error::Input {
                    path: source.describe().into(),
                    message: format!(
                        "id {:?} appears twice (line {}); ids must be unique",
                        row.id, row.line
                    ),
                });
            }
            let fate = match &outcome {
                Outcome::NoImage => Fate::NoImage,
                Outcome::Checked(_) => Fate::Present,
                Outcome::Rejected(r) => match r.reason.policy(config) {
                    Policy::Drop => Fate::Drop(r.clone()),
                    Policy::Absent => Fate::Absent(r.clone()),
                },
            };
            rows.push(Info {
                id: row.id,
                split: row.split,
                line: row.line,
                outcome,
                fate,
            });
        }
        Ok(())
    })?;

    let duplicates = deduplicate(&mut rows, config);

    let mut formats = BTreeMap::new();
    let mut split_sums: BTreeMap<Split, (usize, ChannelSums)> = BTreeMap::new();
    let mut fit_sums = ChannelSums::default();
    let mut fit_images = 0;
    let mut any_present = false;
    for row in &rows {
        let Outcome::Checked(checked) = &row.outcome else {
            continue;
        };
        *formats.entry(checked.kind.clone()).or_insert(0) += 1;
        if row.fate != Fate::Present {
            continue;
        }
        any_present = true;
        let entry = split_sums.entry(row.split).or_default();
        entry.0 += 1;
        entry.1.add(&checked.sums);
        if row.split == Split::Train {
            fit_sums.add(&checked.sums);
            fit_images += 1;
        }
    }
    let by_split = split_sums
        .into_iter()
        .map(|(split, (images, sums))| {
            (
                split.as_str().to_owned(),
                SplitStats {
                    images,
                    mean: sums.mean(),
                    std: sums.std(),
                },
            )
        })
        .collect();
    let (normalization, fitted) = match (config.mean, config.std) {
        (Some(mean), Some(std)) => (Normalization { mean, std }, false),
        _ => match Normalization::fit(&fit_sums) {
            Some(n) => (n, true),
            None if any_present => {
                return Err(Error::NothingToFit {
                    what: "train view-0".into(),
                });
            }
            // No image anywhere: nothing will be normalized, so an identity normalization is recorded.
            None => (
                Normalization {
                    mean: [0.0; 3],
                    std: [1.0; 3],
                },
                false,
            ),
        },
    };
    Ok(Plan {
        rows,
        normalization,
        fitted,
        fit_sums,
        fit_images,
        duplicates,
        formats,
        by_split,
    })
}

/// Groups near-duplicates among the present images, drops the members that straddle splits (and, optionally,
/// repeats within a split), and reports every group.
///
/// A group that straddles splits keeps its members in the most protected split (test, else val) and drops the
/// others: the evaluation splits select wrote keep every row, and what leaks is removed from the split that
/// can afford it.
fn deduplicate(rows: &mut [Info], config: &ImageConfig) -> DuplicateReport {
    let rule = dedup::Rule {
        min_correlation: config.dedup_min_correlation as f32,
        small_max_diff: config.dedup_small_max_diff as f32,
    };
    let present: Vec<usize> = (0..rows.len())
        .filter(|&i| {
            rows[i].fate == Fate::Present && matches!(rows[i].outcome, Outcome::Checked(_))
        })
        .collect();
    let checked = |i: usize| match &rows[i].outcome {
        Outcome::Checked(c) => (c.fingerprint.clone(), c.digest),
        _ => (
            dedup::Fingerprint {
                hash: 0,
                thumb: Vec::new(),
                detail: 0,
                small_hash: None,
            },
            [0u8; 32],
        ),
    };
    let (prints, digests): (Vec<dedup::Fingerprint>, Vec<[u8; 32]>) =
        present.iter().map(|&i| checked(i)).unzip();
    let mut report = DuplicateReport {
        max_distance: config.dedup_max_distance,
        min_correlation: rule.min_correlation,
        small_max_diff: rule.small_max_diff,
        ..DuplicateReport::default()
    };
    for group in dedup::groups(&prints, config.dedup_max_distance, &rule) {
        let members: Vec<usize> = group.iter().map(|&k| present[k]).collect();
        let kept_split = members
            .iter()
            .map(|&i| rows[i].split)
            .max()
            .unwrap_or(Split::Test);
        // The sample every dropped member is reported against: the first of the kept split.
        let anchor = members
            .iter()
            .position(|&i| rows[i].split == kept_split)
            .unwrap_or(0);
        let anchor_id = rows[members[anchor]].id.clone();
        let mut dropped = Vec::new();
        for (k, &i) in members.iter().enumerate() {
            let split = rows[i].split;
            // Measured against the anchor; a member joined through another member may be further from it.
            let how = format!(
                "hash distance {}, {}",
                dedup::distance(prints[group[k]].hash, prints[group[anchor]].hash),
                prints[group[k]].compare(&prints[group[anchor]], &rule)
            );
            let reason = if split != kept_split {
                Some((
                    Reason::NearDuplicateAcrossSplits,
                    format!(
                        "near-duplicate ({how}) of {} sample {anchor_id:?}; dropped from {} so that {} keeps \
                         every row and shares no near-copy with {}",
                        kept_split.as_str(),
                        split.as_str(),
                        kept_split.as_str(),
                        split.as_str()
                    ),
                ))
            } else if config.dedup_within_split && k != anchor {
                Some((
                    Reason::NearDuplicate,
                    format!("near-duplicate ({how}) of {anchor_id:?}, kept"),
                ))
            } else {
                None
            };
            if let Some((reason, detail)) = reason {
                rows[i].fate = Fate::Drop(Reject::new(reason, detail));
                dropped.push(rows[i].id.clone());
                *report
                    .dropped_by_split
                    .entry(split.as_str().to_owned())
                    .or_insert(0) += 1;
            }
        }
        let max = (0..group.len())
            .flat_map(|a| (a + 1..group.len()).map(move |b| (a, b)))
            .map(|(a, b)| dedup::distance(prints[group[a]].hash, prints[group[b]].hash))
            .max()
            .unwrap_or(0);
        let splits: Vec<String> = members
            .iter()
            .map(|&i| rows[i].split.as_str().to_owned())
            .collect();
        let identical = group.iter().all(|&k| digests[k] == digests[group[0]]);
        report.groups += 1;
        report.images_in_groups += members.len();
        report.identical_bytes_groups += usize::from(identical);
        report.cross_split_groups += usize::from(splits.iter().any(|s| s != &splits[0]));
        report.dropped += dropped.len();
        report.list.push(DuplicateGroup {
            ids: members.iter().map(|&i| rows[i].id.clone()).collect(),
            splits,
            identical_bytes: identical,
            max_distance: max,
            kept_split: kept_split.as_str().to_owned(),
            dropped,
        });
    }
    report
}

/// Rows produced by pass 2 for one batch: `(row index, view, tensor or None)`.
pub(crate) type Produced = Vec<(usize, u16, Option<Vec<f32>>)>;

/// Pass 2: for each batch of the source, the tensors of every kept row: `(row index, view, tensor)`, with
/// `None` for a row without image. `views_for(split)` says how many augmented views a split gets.
pub(crate) fn produce(
    pre: &Preprocessor,
    source: &dyn Source,
    plan: &Plan,
    seed: u64,
    views_for: &(dyn Fn(Split) -> u16 + Sync),
    emit: &mut dyn FnMut(Produced) -> Result<()>,
) -> Result<()> {
    let size = pre.config().size as usize;
    let per = 3 * size * size;
    let mut offset = 0usize;
    source.for_each_batch(&mut |batch| {
        let start = offset;
        offset += batch.len();
        let infos = plan.rows.get(start..offset).ok_or_else(|| {
            Error::Other(format!(
                "{}: changed between the two passes (more rows)",
                source.describe()
            ))
        })?;
        let produced: Vec<Result<Produced>> = batch
            .par_iter()
            .zip(infos.par_iter())
            .enumerate()
            .map_init(Scratch::new, |scratch, (k, (row, info))| {
                if row.id != info.id {
                    return Err(Error::Other(format!(
                        "{}: changed between the two passes (row {} was {:?}, now {:?})",
                        source.describe(),
                        start + k,
                        info.id,
                        row.id
                    )));
                }
                let n_views = views_for(info.split);
                let index = start + k;
                let nulls = || (0..=n_views).map(|view| (index, view, None)).collect();
                match (&info.fate, &row.image) {
                    (Fate::Drop(_), _) => Ok(Vec::new()),
                    (Fate::Present, Media::Bytes(bytes)) => {
                        let canvases = pre.views(scratch, bytes, n_views, seed, &info.id).map_err(
                            |reject| {
                                Error::Other(format!(
                                    "{}: {:?} passed the first pass but not the second: {reject}",
                                    source.describe(),
                                    info.id
                                ))
                            },
                        )?;
                        Ok((0u16..)
                            .zip(canvases)
                            .map(|(view, canvas)| {
                                let mut tensor = vec![0.0f32; per];
                                plan.normalization.apply(&canvas, &mut tensor);
                                (index, view, Some(tensor))
                            })
                            .collect())
                    }
                    _ => Ok(nulls()),
                }
            })
            .collect();
        let mut out = Vec::new();
        for rows in produced {
            out.extend(rows?);
        }
        emit(out)
    })?;
    if offset != plan.rows.len() {
        return Err(Error::Other(format!(
            "{}: changed between the two passes (fewer rows)",
            source.describe()
        )));
    }
    Ok(())
}

/// Dropped samples per split and reason code: what each split lost, and why.
pub(crate) fn drops_by_split(rows: &[Info]) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for row in rows {
        if let Fate::Drop(r) = &row.fate {
            *counts
                .entry(row.split.as_str().to_owned())
                .or_default()
                .entry(r.reason.as_str().to_owned())
                .or_insert(0) += 1;
        }
    }
    counts
}

/// Counts per reason code, over the rows whose fate matches.
pub(crate) fn count_by_reason(rows: &[Info], absent: bool) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for row in rows {
        let reject = match (&row.fate, absent) {
            (Fate::Drop(r), false) | (Fate::Absent(r), true) => r,
            _ => continue,
        };
        *counts.entry(reject.reason.as_str().to_owned()).or_insert(0) += 1;
    }
    counts
}

/// The samples kept without image because of a check.
pub(crate) fn absent_samples(rows: &[Info]) -> Vec<AbsentSample> {
    rows.iter()
        .filter_map(|row| match &row.fate {
            Fate::Absent(r) => Some(AbsentSample {
                id: row.id.clone(),
                reason: r.reason,
                detail: r.detail.clone(),
            }),
            _ => None,
        })
        .collect()
}
