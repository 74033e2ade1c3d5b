//! Drawing a token from a distribution: top-k, then top-p (nucleus), then a draw at the
//! temperature, as the local engine's scheduler samples.

use crate::engine::Sampling;

/// Draws a token from log-probabilities `logp`: top-k, then top-p (nucleus), then a draw at the
/// temperature from `rng`. Only the head of the distribution is sorted (a vocabulary of 100k
/// tokens is not), so this is linear in the vocabulary. Returns the token and its log-probability.
pub fn draw(logp: &[f32], s: &Sampling, rng: &mut fastrand::Rng) -> (u32, f32) {
    let n = logp.len();
    if n == 0 {
        return (0, f32::NEG_INFINITY);
    }
    // Highest first; ties by token id, so the order does not depend on the algorithm.
    let rank = |a: &usize, b: &usize| logp[*b].total_cmp(&logp[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..n).collect();
    if let Some(k) = s.top_k {
        let k = (k as usize).clamp(1, n);
        if k < n {
            idx.select_nth_unstable_by(k - 1, rank);
            idx.truncate(k);
        }
    }
    let max = idx
        .iter()
        .map(|&i| logp[i])
        .fold(f32::NEG_INFINITY, f32::max);
    let t = s.temperature.max(1e-6);
    let weight = |i: usize| (((logp[i] - max) / t) as f64).exp();
    let total: f64 = idx.iter().map(|&i| weight(i)).sum();
    let mut keep = idx.len();
    if s.top_p < 1.0 {
        // Grow a sorted head until it holds `top_p` of the mass.
        let target = s.top_p as f64 * total;
        let mut m = idx.len().min(64);
        'grow: loop {
            if m < idx.len() {
                idx.select_nth_unstable_by(m - 1, rank);
            }
            idx[..m].sort_by(rank);
            let mut cum = 0.0;
            for (k, &i) in idx[..m].iter().enumerate() {
                cum += weight(i);
                if cum >= target {
                    keep = k + 1;
                    break 'grow;
                }
            }
            if m == idx.len() {
                break;
            }
            m = (m * 8).min(idx.len());
        }
    }
    let kept = &idx[..keep];
    let total: f64 = kept.iter().map(|&i| weight(i)).sum();
    let mut x = rng.f64() * total;
    for &i in kept {
        let w = weight(i);
        if x < w {
            return (i as u32, logp[i]);
        }
        x -= w;
    }
    let i = kept[keep - 1];
    (i as u32, logp[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logp(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    #[test]
    fn draws_keep_to_top_k_and_the_nucleus_in_proportion() {
        // 200 tokens: four likely ones, then a long tail.
        let mut probs = vec![0.4, 0.3, 0.2, 0.05];
        probs.extend(std::iter::repeat_n(0.05 / 196.0, 196));
        let lp = logp(&probs);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut count = |s: &Sampling, n: usize| {
            let mut seen = vec![0usize; lp.len()];
            for _ in 0..n {
                seen[draw(&lp, s, &mut rng).0 as usize] += 1;
            }
            seen
        };
        let base = Sampling {
            temperature: 1.0,
            ..Sampling::default()
        };
        // top_p 0.5: the nucleus is {0, 1} (0.4 < 0.5 <= 0.7), drawn 4:3.
        let seen = count(
            &Sampling {
                top_p: 0.5,
                ..base.clone()
            },
            7000,
        );
        assert_eq!(seen[0] + seen[1], 7000);
        assert!((seen[0] as f64 / 4000.0 - 1.0).abs() < 0.06, "{seen:?}");
        // top_k 3: only the first three, in proportion 4:3:2.
        let seen = count(
            &Sampling {
                top_k: Some(3),
                ..base.clone()
            },
            9000,
        );
        assert_eq!(seen[0] + seen[1] + seen[2], 9000);
        assert!((seen[2] as f64 / 2000.0 - 1.0).abs() < 0.1, "{seen:?}");
        // No limits: the tail gets its 5% (a nucleus reaching past the sorted head grows it).
        let seen = count(&base, 20_000);
        let tail: usize = seen[4..].iter().sum();
        assert!((tail as f64 / 1000.0 - 1.0).abs() < 0.15, "{tail}");
        let seen = count(
            &Sampling {
                top_p: 0.999,
                ..base.clone()
            },
            20_000,
        );
        let tail: usize = seen[4..].iter().sum();
        assert!(tail > 700, "{tail}");
        // The log-probability returned is the token's own.
        let (t, l) = draw(
            &lp,
            &Sampling {
                top_k: Some(1),
                ..base
            },
            &mut rng,
        );
        assert_eq!((t, l), (0, lp[0]));
    }
}
