//! The test split is what select wrote: every test row is scored, and a row whose image, audio or tabular
//! row a curation stage dropped is answered with that modality absent. This module counts those rows per
//! modality and reason (read from the modality artifact's `rejects.parquet`) for the report's headline.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use arrow::array::{Array, AsArray};
use mmrl_artifact::Artifact;
use mmrl_model::data::Dataset;
use serde::Serialize;

use crate::error::{Result, input_err};

/// The reason recorded for a dropped row that its stage's `rejects.parquet` does not list.
pub const UNLISTED: &str = "not_in_rejects";

/// Test rows that lost one modality to a curation stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LostModality {
    /// Test rows the modality's table lacks.
    pub rows: usize,
    /// Those rows per reason code of the stage's `rejects.parquet` ([`UNLISTED`] when it does not list one).
    pub by_reason: BTreeMap<String, usize>,
}

/// How the scored test rows relate to select's test split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// Rows of select's samples table whose split is `test`.
    pub select_test_rows: usize,
    /// Test rows scored: always every one of them.
    pub scored_rows: usize,
    /// Per modality (`image`, `audio`, `tabular`), the test rows answered without it because its stage dropped
    /// them; absent when no test row lost that modality.
    pub lost: BTreeMap<String, LostModality>,
}

impl Coverage {
    /// Counts, for the test rows `test` of `data`, the modalities a stage dropped, reading each reason from
    /// the `rejects` table of that modality's artifact (`artifacts`: modality name and artifact directory).
    pub fn measure(
        data: &Dataset,
        test: &[usize],
        select_test_rows: usize,
        artifacts: &[(&str, &Path)],
    ) -> Result<Self> {
        let mut lost = BTreeMap::new();
        for &(modality, dir) in artifacts {
            let missing: Vec<&str> = test
                .iter()
                .map(|&i| &data.samples[i])
                .filter(|s| match modality {
                    "image" => data.image.is_some() && s.image.is_empty(),
                    "audio" => data.audio.is_some() && s.audio.is_empty(),
                    _ => data.tabular.is_some() && s.tabular.is_none(),
                })
                .map(|s| s.id.as_str())
                .collect();
            if missing.is_empty() {
                continue;
            }
            let reasons = reject_reasons(dir)?;
            let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
            for id in &missing {
                let reason = reasons.get(*id).map_or(UNLISTED, String::as_str);
                *by_reason.entry(reason.to_owned()).or_default() += 1;
            }
            tracing::warn!(
                modality,
                rows = missing.len(),
                ?by_reason,
                "test rows its stage dropped are answered without that modality"
            );
            lost.insert(
                modality.to_owned(),
                LostModality {
                    rows: missing.len(),
                    by_reason,
                },
            );
        }
        Ok(Self {
            select_test_rows,
            scored_rows: test.len(),
            lost,
        })
    }

    /// One line for the headline: rows scored of select's test rows, and the rows that lost a modality with
    /// their reasons.
    pub fn headline(&self) -> String {
        let mut line = format!(
            "test rows: {} of the {} in select's test split scored",
            self.scored_rows, self.select_test_rows
        );
        if self.lost.is_empty() {
            line.push_str("; none lost a modality to curation");
            return line;
        }
        for (modality, l) in &self.lost {
            let reasons: Vec<String> = l
                .by_reason
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            line.push_str(&format!(
                "; {} answered without {modality} (dropped by the {modality} stage: {})",
                l.rows,
                reasons.join(", ")
            ));
        }
        line
    }
}

/// Reason code per sample id of the artifact's `rejects` table; empty when it has none.
fn reject_reasons(dir: &Path) -> Result<HashMap<String, String>> {
    let artifact = Artifact::open(dir)?;
    let mut out = HashMap::new();
    if artifact.manifest().output("rejects.parquet").is_none() {
        return Ok(out);
    }
    let (_, batches) = artifact.read_table("rejects")?;
    for b in &batches {
        let column = |name: &str| {
            b.column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| {
                    input_err(
                        dir,
                        format!("table \"rejects\" has no Utf8 column {name:?}"),
                    )
                })
        };
        let (ids, reasons) = (column("id")?, column("reason")?);
        for i in 0..b.num_rows() {
            if ids.is_valid(i) && reasons.is_valid(i) {
                out.insert(ids.value(i).to_owned(), reasons.value(i).to_owned());
            }
        }
    }
    Ok(out)
}
