//! Prioritized experience replay: a flat sum-tree with a min-tree beside it, proportional priorities, and
//! importance-sampling weights with an annealed exponent.
//!
//! Layout: one flat array of `2 * capacity` nodes (capacity rounded up to a power of two), each node its
//! `(sum, min)` pair, node `i` with children `2i` and `2i + 1`, the root at 1 and leaf `j` at `capacity + j`:
//! an update reads both children's sums and mins from one cache line. (A 4-ary layout with one 64-byte group
//! per node was measured too: about 10% slower here, its in-group scan costing more than the levels it
//! saves.) A batch
//! is sampled stratified (one uniform draw per equal slice of the total mass, so the masses come out
//! sorted) and walked down the tree level by level for the whole batch at once: the loads of the batch's
//! descents are independent, so the CPU overlaps their cache misses, which a one-item-at-a-time descent
//! cannot. Updates go up level by level as well, each parent recomputed once however many of its leaves
//! changed. The hot path (`sample_into` + `update_priorities`) allocates nothing: callers keep a
//! [`SampleBatch`] and reuse it.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A sum-tree and a min-tree over `capacity` leaves (a power of two), `(sum, min)` interleaved per node.
#[derive(Debug, Clone)]
pub struct SumMinTree {
    capacity: usize,
    depth: u32,
    /// `(sum, min)` per node, interleaved: an update reads both children's sums and mins from one cache line.
    nodes: Vec<[f64; 2]>,
}

impl SumMinTree {
    /// A tree with at least `capacity` leaves (rounded up to a power of two), all at priority 0.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        Self {
            capacity,
            depth: capacity.trailing_zeros(),
            nodes: vec![[0.0, f64::INFINITY]; 2 * capacity],
        }
    }

    /// Leaves of the tree.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sum of all priorities.
    pub fn total(&self) -> f64 {
        self.nodes[1][0]
    }

    /// Smallest priority of the set leaves (`inf` when none is set).
    pub fn min(&self) -> f64 {
        self.nodes[1][1]
    }

    /// Priority of leaf `i`.
    pub fn get(&self, i: usize) -> f64 {
        self.nodes[self.capacity + i][0]
    }

    #[inline(always)]
    fn refresh(&mut self, n: usize) {
        let (l, r) = (self.nodes[2 * n], self.nodes[2 * n + 1]);
        self.nodes[n] = [l[0] + r[0], l[1].min(r[1])];
    }

    /// Sets leaf `i` to priority `p` (`p` finite and at least 0) and refreshes its ancestors.
    pub fn set(&mut self, i: usize, p: f64) {
        let mut n = self.capacity + i;
        self.nodes[n] = [p, p];
        n >>= 1;
        while n >= 1 {
            self.refresh(n);
            n >>= 1;
        }
    }

    /// Fills every leaf from `priorities` (the rest at 0) and rebuilds the inner nodes in one pass.
    pub fn fill(&mut self, priorities: &[f64]) {
        let cap = self.capacity;
        for j in 0..cap {
            self.nodes[cap + j] = match priorities.get(j) {
                Some(&p) => [p, p],
                None => [0.0, f64::INFINITY],
            };
        }
        for n in (1..cap).rev() {
            self.refresh(n);
        }
    }

    /// The leaf whose prefix-sum interval holds `mass` (`0 <= mass < total`); never a zero-priority leaf
    /// while the total is positive.
    pub fn find(&self, mass: f64) -> usize {
        let mut n = 1usize;
        let mut m = mass;
        for _ in 0..self.depth {
            let left = self.nodes[2 * n][0];
            let right = (m >= left) & (self.nodes[2 * n + 1][0] > 0.0);
            m -= if right { left } else { 0.0 };
            n = 2 * n + usize::from(right);
        }
        n - self.capacity
    }

    /// [`find`](Self::find) for a whole batch, walking all descents one level at a time. `masses` is used
    /// as scratch (consumed); `out` receives the leaves.
    pub fn find_batch(&self, masses: &mut [f64], out: &mut [usize]) {
        debug_assert_eq!(masses.len(), out.len());
        out.fill(1);
        for _ in 0..self.depth {
            for (n, m) in out.iter_mut().zip(masses.iter_mut()) {
                let left = self.nodes[2 * *n][0];
                let right = (*m >= left) & (self.nodes[2 * *n + 1][0] > 0.0);
                *m -= if right { left } else { 0.0 };
                *n = 2 * *n + usize::from(right);
            }
        }
        for n in out.iter_mut() {
            *n -= self.capacity;
        }
    }

    /// Sets the leaves `leaves[k]` to `priorities[k]` and recomputes each ancestor once. `leaves` must be
    /// sorted ascending (stratified samples are); `scratch` (at least `leaves.len()` long) holds the node
    /// frontier. With duplicate leaves the last priority wins.
    pub fn update_sorted(&mut self, leaves: &[usize], priorities: &[f64], scratch: &mut [usize]) {
        debug_assert!(leaves.windows(2).all(|w| w[0] <= w[1]));
        let cap = self.capacity;
        let mut len = 0usize;
        for (&j, &p) in leaves.iter().zip(priorities) {
            let n = cap + j;
            self.nodes[n] = [p, p];
            let parent = n >> 1;
            if len == 0 || scratch[len - 1] != parent {
                scratch[len] = parent;
                len += 1;
            }
        }
        for _ in 0..self.depth {
            let mut next = 0usize;
            for k in 0..len {
                let n = scratch[k];
                self.refresh(n);
                let parent = n >> 1;
                if parent >= 1 && (next == 0 || scratch[next - 1] != parent) {
                    scratch[next] = parent;
                    next += 1;
                }
            }
            len = next;
        }
    }
}

/// Replay hyperparameters (`[stages.rl.params.replay]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Whether rollouts are stored and replayed.
    pub enabled: bool,
    /// Rollouts kept (oldest overwritten first).
    pub capacity: usize,
    /// Replayed rollouts added to each optimizer step.
    pub batch: usize,
    /// Priority exponent: 0 is uniform, 1 fully proportional.
    pub alpha: f64,
    /// Importance-sampling exponent at step 0, annealed linearly to 1.
    pub beta0: f64,
    /// Steps over which beta reaches 1 (0: the whole run).
    pub beta_steps: u64,
    /// Added to |advantage| so no item starves.
    pub eps: f64,
    /// Truncation of the importance ratio pi/behaviour of a replayed rollout.
    pub ratio_clip: f64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            capacity: 4096,
            batch: 16,
            alpha: 0.6,
            beta0: 0.4,
            beta_steps: 0,
            eps: 1e-3,
            ratio_clip: 1.0,
        }
    }
}

impl ReplayConfig {
    /// Checks the ranges; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let field = |f: &str, m: String| Err(Error::config(format!("replay.{f}"), m));
        if self.capacity == 0 || self.capacity > 1 << 26 {
            return field(
                "capacity",
                format!("must be in [1, 2^26], got {}", self.capacity),
            );
        }
        if self.enabled && self.batch == 0 {
            return field("batch", "must be at least 1 when replay is enabled".into());
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return field("alpha", format!("must be in [0, 1], got {}", self.alpha));
        }
        if !(0.0..=1.0).contains(&self.beta0) {
            return field("beta0", format!("must be in [0, 1], got {}", self.beta0));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return field("eps", format!("must be positive, got {}", self.eps));
        }
        if !(self.ratio_clip > 0.0 && self.ratio_clip.is_finite()) {
            return field(
                "ratio_clip",
                format!("must be positive, got {}", self.ratio_clip),
            );
        }
        Ok(())
    }
}

/// The indices and importance weights of one sampled batch; reuse it across steps to stay allocation-free.
#[derive(Debug, Clone, Default)]
pub struct SampleBatch {
    /// Slots of the sampled items, ascending.
    pub indices: Vec<usize>,
    /// Importance-sampling weights `(N P(i))^-beta`, normalized by the largest possible weight.
    pub weights: Vec<f64>,
    masses: Vec<f64>,
    scratch: Vec<usize>,
    priorities: Vec<f64>,
}

impl SampleBatch {
    /// A batch with room for `n` items.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            indices: vec![0; n],
            weights: vec![0.0; n],
            masses: vec![0.0; n],
            scratch: vec![0; n],
            priorities: vec![0.0; n],
        }
    }

    fn resize(&mut self, n: usize) {
        self.indices.resize(n, 0);
        self.weights.resize(n, 0.0);
        self.masses.resize(n, 0.0);
        self.scratch.resize(n, 0);
        self.priorities.resize(n, 0.0);
    }
}

/// A ring buffer of items with proportional priorities `(|advantage| + eps)^alpha`.
#[derive(Debug, Clone)]
pub struct PrioritizedReplay<T> {
    tree: SumMinTree,
    items: Vec<T>,
    capacity: usize,
    next: usize,
    alpha: f64,
    eps: f64,
    /// Largest raw priority `|advantage| + eps` seen; new items enter at it.
    max_priority: f64,
}

/// The serializable state of a buffer (for checkpoints): items in slot order, their raw priorities, the
/// write position and the running maximum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayState<T> {
    /// Items by slot.
    pub items: Vec<T>,
    /// Tree leaf values (already raised to alpha) by slot.
    pub leaves: Vec<f64>,
    /// Next slot to write.
    pub next: usize,
    /// Running maximum of raw priorities.
    pub max_priority: f64,
}

impl<T> PrioritizedReplay<T> {
    /// An empty buffer of `capacity` items.
    pub fn new(capacity: usize, alpha: f64, eps: f64) -> Self {
        Self {
            tree: SumMinTree::new(capacity),
            items: Vec::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
            next: 0,
            alpha,
            eps,
            max_priority: 1.0,
        }
    }

    /// Items stored.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The item in `slot`.
    pub fn get(&self, slot: usize) -> Option<&T> {
        self.items.get(slot)
    }

    /// The tree (for inspection).
    pub fn tree(&self) -> &SumMinTree {
        &self.tree
    }

    /// Stores `item` at the current maximum priority, overwriting the oldest when full; returns its slot.
    pub fn push(&mut self, item: T) -> usize {
        let slot = self.next;
        if slot < self.items.len() {
            self.items[slot] = item;
        } else {
            self.items.push(item);
        }
        self.tree.set(slot, self.max_priority.powf(self.alpha));
        self.next = (self.next + 1) % self.capacity;
        slot
    }

    /// Beta of `step` for a run of `total` steps: `beta0` annealed linearly to 1.
    pub fn beta(beta0: f64, step: u64, total: u64) -> f64 {
        if total == 0 {
            return 1.0;
        }
        (beta0 + (1.0 - beta0) * step as f64 / total as f64).min(1.0)
    }

    /// Samples `n` items stratified by priority into `out`, with importance weights for exponent `beta`.
    /// Allocation-free once `out` has room for `n`. Does nothing useful on an empty buffer (check
    /// [`is_empty`](Self::is_empty)).
    pub fn sample_into(&self, n: usize, beta: f64, rng: &mut impl Rng, out: &mut SampleBatch) {
        out.resize(n);
        let total = self.tree.total();
        let seg = total / n as f64;
        for (k, m) in out.masses.iter_mut().enumerate() {
            // Strictly below the total, so rounding never walks past the last item.
            *m = ((k as f64 + rng.random::<f64>()) * seg).min(total * (1.0 - 1e-15));
        }
        self.tree.find_batch(&mut out.masses, &mut out.indices);
        // w_i = (N P(i))^-beta / max_j (N P(j))^-beta = (p_i / p_min)^-beta.
        let p_min = self.tree.min();
        for (w, &i) in out.weights.iter_mut().zip(&out.indices) {
            *w = (self.tree.get(i) / p_min).powf(-beta);
        }
    }

    /// Sets the priorities of `slots` (ascending, as [`sample_into`](Self::sample_into) returns them) from
    /// their new |advantage| magnitudes. Uses `scratch` buffers of `batch`; allocation-free.
    pub fn update_priorities(&mut self, batch: &mut SampleBatch, magnitudes: &[f64]) {
        let n = batch.indices.len().min(magnitudes.len());
        let alpha = self.alpha;
        for (p, m) in batch.priorities[..n].iter_mut().zip(&magnitudes[..n]) {
            let raw = m.abs() + self.eps;
            self.max_priority = self.max_priority.max(raw);
            *p = if alpha == 1.0 { raw } else { raw.powf(alpha) };
        }
        self.tree.update_sorted(
            &batch.indices[..n],
            &batch.priorities[..n],
            &mut batch.scratch,
        );
    }
}

impl<T: Clone> PrioritizedReplay<T> {
    /// The checkpointable state.
    pub fn state(&self) -> ReplayState<T> {
        ReplayState {
            items: self.items.clone(),
            leaves: (0..self.items.len()).map(|i| self.tree.get(i)).collect(),
            next: self.next,
            max_priority: self.max_priority,
        }
    }

    /// Rebuilds a buffer from a checkpointed state.
    pub fn from_state(capacity: usize, alpha: f64, eps: f64, state: ReplayState<T>) -> Self {
        let mut r = Self::new(capacity, alpha, eps);
        r.tree.fill(&state.leaves);
        r.items = state.items;
        r.next = state.next;
        r.max_priority = state.max_priority;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn brute_find(p: &[f64], mass: f64) -> usize {
        let mut acc = 0.0;
        for (i, &x) in p.iter().enumerate() {
            acc += x;
            if mass < acc {
                return i;
            }
        }
        p.len() - 1
    }

    #[test]
    fn tree_sums_mins_and_finds_like_a_linear_scan() {
        let p = [3.0, 0.0, 1.0, 4.0, 0.5];
        let mut t = SumMinTree::new(p.len());
        assert_eq!(t.capacity(), 8);
        for (i, &x) in p.iter().enumerate() {
            t.set(i, x);
        }
        assert_eq!(t.total(), 8.5);
        assert_eq!(t.min(), 0.0);
        for k in 0..85 {
            let m = k as f64 / 10.0;
            assert_eq!(t.find(m), brute_find(&p, m), "mass {m}");
        }
        let mut masses: Vec<f64> = (0..85).map(|k| k as f64 / 10.0).collect();
        let expected: Vec<usize> = masses.iter().map(|&m| brute_find(&p, m)).collect();
        let mut out = vec![0; masses.len()];
        t.find_batch(&mut masses, &mut out);
        assert_eq!(out, expected);
        // Zero-priority leaves are never found, even at their boundary.
        assert_ne!(t.find(3.0), 1);
    }

    #[test]
    fn deep_tree_finds_like_a_linear_scan() {
        // Dyadic priorities (some zero) keep every partial sum exact, whatever the summation order.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let p: Vec<f64> = (0..1000)
            .map(|_| f64::from(rng.random_range(0..8u8)) / 8.0)
            .collect();
        let mut t = SumMinTree::new(p.len());
        assert_eq!(t.capacity(), 1024);
        t.fill(&p);
        let total: f64 = p.iter().sum();
        assert_eq!(t.total(), total);
        assert_eq!(t.min(), 0.0);
        let mut masses: Vec<f64> = (0..4000).map(|_| rng.random::<f64>() * total).collect();
        masses.sort_by(f64::total_cmp);
        let expected: Vec<usize> = masses.iter().map(|&m| brute_find(&p, m)).collect();
        let single: Vec<usize> = masses.iter().map(|&m| t.find(m)).collect();
        assert_eq!(single, expected);
        let mut out = vec![0; masses.len()];
        t.find_batch(&mut masses, &mut out);
        assert_eq!(out, expected);
    }

    #[test]
    fn batched_update_matches_single_updates() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 37;
        let init: Vec<f64> = (0..n).map(|_| rng.random::<f64>() + 0.1).collect();
        let mut a = SumMinTree::new(n);
        a.fill(&init);
        let mut b = a.clone();
        let leaves = [0usize, 3, 3, 4, 17, 30, 36];
        let pr = [0.5, 2.0, 0.25, 7.0, 0.01, 1.5, 3.0];
        let mut scratch = vec![0; leaves.len()];
        a.update_sorted(&leaves, &pr, &mut scratch);
        for (&j, &p) in leaves.iter().zip(&pr) {
            b.set(j, p);
        }
        assert_eq!(a.nodes, b.nodes);
        assert_eq!(a.get(3), 0.25, "the last duplicate wins");
        assert_eq!(a.min(), 0.01);
    }

    #[test]
    fn weights_and_priority_updates_are_exact_on_a_small_case() {
        let mut r = PrioritizedReplay::new(4, 0.5, 0.0);
        for i in 0..4 {
            r.push(i);
        }
        // Everything enters at the max priority 1.
        assert_eq!(r.tree().total(), 4.0);
        let mut batch = SampleBatch::with_capacity(4);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        r.sample_into(4, 0.5, &mut rng, &mut batch);
        assert_eq!(
            batch.indices,
            [0, 1, 2, 3],
            "stratified: one per equal slice"
        );
        assert_eq!(batch.weights, [1.0; 4]);
        // Raw priorities 4, 1, 9, 16 -> leaves 2, 1, 3, 4 with alpha 0.5.
        r.update_priorities(&mut batch, &[4.0, 1.0, 9.0, 16.0]);
        assert_eq!(r.tree().total(), 10.0);
        assert_eq!(r.tree().min(), 1.0);
        // w_i = (p_i / p_min)^-beta with beta 1: 1/2, 1, 1/3, 1/4.
        let mut b2 = SampleBatch::with_capacity(10);
        r.sample_into(10, 1.0, &mut rng, &mut b2);
        for (&i, &w) in b2.indices.iter().zip(&b2.weights) {
            let p = [2.0, 1.0, 3.0, 4.0][i];
            assert!((w - 1.0 / p).abs() < 1e-12, "slot {i}: {w}");
        }
        // Ten equal slices of mass 1 over leaves [2, 1, 3, 4]: 2, 1, 3 and 4 slices.
        assert_eq!(b2.indices, [0, 0, 1, 2, 2, 2, 3, 3, 3, 3]);
        // A new item enters at the max raw priority so far (16, leaf 4) and overwrites slot 0.
        assert_eq!(r.push(9), 0);
        assert_eq!(r.tree().get(0), 4.0);
        assert_eq!(r.get(0), Some(&9));
    }

    #[test]
    fn sampling_frequencies_match_priorities_chi_square() {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let n = 50;
        let mut r = PrioritizedReplay::new(n, 1.0, 0.0);
        for i in 0..n {
            r.push(i);
        }
        let priorities: Vec<f64> = (0..n).map(|i| 0.2 + (i % 7) as f64 * 0.5).collect();
        let mut batch = SampleBatch::with_capacity(n);
        r.sample_into(n, 0.4, &mut rng, &mut batch);
        batch.indices.copy_from_slice(&(0..n).collect::<Vec<_>>());
        r.update_priorities(&mut batch, &priorities);
        let total: f64 = priorities.iter().sum();
        let draws = 200_000usize;
        let per = 64;
        let mut counts = vec![0u64; n];
        let mut b = SampleBatch::with_capacity(per);
        for _ in 0..draws / per {
            r.sample_into(per, 0.4, &mut rng, &mut b);
            for &i in &b.indices {
                counts[i] += 1;
            }
        }
        let drawn = (draws / per * per) as f64;
        let chi2: f64 = counts
            .iter()
            .zip(&priorities)
            .map(|(&c, &p)| {
                let e = drawn * p / total;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        // 49 degrees of freedom: the 99.9% quantile is 85.4. Stratified sampling lowers the variance, so
        // a correct sampler sits far below it, and a wrong one (e.g. uniform) lands in the tens of thousands.
        assert!(chi2 < 85.4, "chi-square {chi2}");
    }

    #[test]
    fn state_round_trips() {
        let mut r = PrioritizedReplay::new(3, 0.7, 0.01);
        for i in 0..5 {
            r.push(i);
        }
        let mut b = SampleBatch::with_capacity(2);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        r.sample_into(2, 0.5, &mut rng, &mut b);
        r.update_priorities(&mut b, &[0.3, 2.0]);
        let s = r.state();
        let back = PrioritizedReplay::from_state(3, 0.7, 0.01, s.clone());
        assert_eq!(back.state(), s);
        assert_eq!(back.tree().total(), r.tree().total());
        assert_eq!(back.tree().min(), r.tree().min());
    }
}
