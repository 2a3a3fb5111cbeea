//! Diagnostics of a model as an RL starting point: greedy EM on train (view 0 and random views) and val,
//! sampled EM, the fraction of zero-variance groups of 8 samples, pass@8, the largest difference between
//! `generate`'s and `score`'s token log-probabilities, and how many wrong answers sit among the least
//! confident. `cargo run -p mmrl-rl --example diag -- SFT_DIR DATA_DIR [TEMPERATURE]`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use mmrl_artifact::sample::Split;
use mmrl_model::data::{Dataset, InputPaths};
use mmrl_model::predict::load_trained;
use mmrl_model::sft::DeviceKind;
use mmrl_model::vocab::normalize_answer;
use mmrl_model::{Decoding, Dropout};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 3 {
        anyhow::bail!(
            "usage: diag MODEL_DIR DATA_DIR [TEMPERATURE] (DATA_DIR holds select, image, audio, tabular)"
        );
    }
    let (model_dir, data_dir) = (PathBuf::from(&a[1]), PathBuf::from(&a[2]));
    let temp: f32 = a.get(3).map_or(Ok(1.0), |s| s.parse())?;
    let t = load_trained(&model_dir, DeviceKind::Cpu)?;
    let data = Dataset::load(&InputPaths {
        samples: data_dir.join("select"),
        image: Some(data_dir.join("image")),
        audio: Some(data_dir.join("audio")),
        tabular: Some(data_dir.join("tabular")),
    })?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (name, split, random_view) in [
        ("train view0", Split::Train, false),
        ("train randview", Split::Train, true),
        ("val", Split::Val, false),
    ] {
        let idx = data.split(split);
        let items: Vec<(usize, usize)> = if random_view {
            data.epoch_order(3, 0).into_iter().take(2000).collect()
        } else {
            idx.iter().take(2000).map(|&i| (i, 0)).collect()
        };
        let mut per: BTreeMap<String, [f64; 6]> = BTreeMap::new();
        let g = 8;
        let mut max_diff = 0f32;
        // calibration: (seq prob of greedy, correct)
        let mut cal: Vec<(f32, bool)> = Vec::new();
        for chunk in items.chunks(64) {
            let (batch, _) = data.batch(chunk, &t.vocab, t.model.config(), None);
            let greedy = t.model.generate(&batch, Decoding::Greedy, &mut rng);
            let rep: Vec<(usize, usize)> = chunk
                .iter()
                .flat_map(|&p| std::iter::repeat_n(p, g))
                .collect();
            let (rb, _) = data.batch(&rep, &t.vocab, t.model.config(), None);
            let sampled = t.model.generate(
                &rb,
                Decoding::Sample {
                    temperature: temp,
                    top_k: None,
                    epsilon: 0.0,
                },
                &mut rng,
            );
            // score vs generate (only meaningful at temperature 1)
            let answers: Vec<Vec<u32>> = sampled.iter().map(|s| s.tokens.clone()).collect();
            let sc = t.model.score(&rb, &answers, &mut Dropout::off());
            let [_, steps] = sc.token_logprobs.dims();
            let lp: Vec<f32> = sc
                .token_logprobs
                .into_data()
                .try_into_vec::<f32>()
                .unwrap_or_default();
            for (r, s) in sampled.iter().enumerate() {
                for (k, &l) in s.token_logprobs.iter().enumerate() {
                    if k < steps {
                        max_diff = max_diff.max((lp[r * steps + k] - l).abs());
                    }
                }
            }
            for (j, &(i, _)) in chunk.iter().enumerate() {
                let s = &data.samples[i];
                let refa = normalize_answer(&s.answer);
                let gh = normalize_answer(&t.vocab.decode_answer(&greedy[j].tokens)) == refa;
                cal.push((greedy[j].logprob.exp(), gh));
                let hits: Vec<bool> = (0..g)
                    .map(|k| {
                        normalize_answer(&t.vocab.decode_answer(&sampled[j * g + k].tokens)) == refa
                    })
                    .collect();
                let n_hit = hits.iter().filter(|&&h| h).count();
                for key in [s.qtype.clone(), "ALL".into()] {
                    let e = per.entry(key).or_default();
                    e[0] += 1.0;
                    e[1] += f64::from(u8::from(gh));
                    e[2] += n_hit as f64 / g as f64;
                    e[3] += f64::from(u8::from(n_hit == 0 || n_hit == g));
                    e[4] += f64::from(u8::from(n_hit == g));
                    e[5] += f64::from(u8::from(n_hit > 0));
                }
            }
        }
        println!(
            "== {name} (T={temp}) n={} max|score-generate| logprob diff {max_diff:.2e}",
            items.len()
        );
        println!(
            "{:22} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7}",
            "qtype", "n", "greedy", "sampEM", "zeroVar", "allOK", "pass@8"
        );
        for (q, e) in &per {
            println!(
                "{q:22} {:5} {:7.3} {:7.3} {:7.3} {:7.3} {:7.3}",
                e[0],
                e[1] / e[0],
                e[2] / e[0],
                e[3] / e[0],
                e[4] / e[0],
                e[5] / e[0]
            );
        }
        cal.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = cal.len();
        for q in [0.1, 0.2, 0.3] {
            let k = (n as f64 * q) as usize;
            let wrong_low = cal[..k].iter().filter(|c| !c.1).count();
            let wrong_all = cal.iter().filter(|c| !c.1).count();
            println!(
                "lowest {:.0}% confidence (p<{:.3}): {} of {} wrong answers there, acc {:.3}",
                q * 100.0,
                cal[k].0,
                wrong_low,
                wrong_all,
                1.0 - wrong_low as f64 / k as f64
            );
        }
    }
    Ok(())
}
