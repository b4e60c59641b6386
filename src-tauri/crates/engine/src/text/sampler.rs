//! Choosing the next token from logits, on the host, from a seeded generator: candle's CPU
//! random numbers cannot be seeded, and the same seed must give the same text on any device.
//!
//! Order (as llama.cpp's default chain): repeat penalty, top-k, temperature, min-p, top-p, draw.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::params::SamplingParams;

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// (token, logit) scratch space, reused between steps.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: &SamplingParams, seed: u64) -> Sampler {
        Sampler {
            params: params.clone(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            candidates: Vec::new(),
        }
    }

    /// The next token. `recent` are the tokens the repeat penalty looks at (prompt and output).
    pub fn sample(&mut self, logits: &mut [f32], recent: &[u32]) -> u32 {
        let p = &self.params;
        if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 {
            let from = recent.len().saturating_sub(p.repeat_last_n as usize);
            let mut seen: Vec<u32> = recent[from..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    // As in llama.cpp and HF: shrink positive logits, push negative ones further.
                    *l = if *l > 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
            }
        }
        if p.temperature <= 0.0 {
            return argmax(logits);
        }

        let c = &mut self.candidates;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l)),
        );
        if c.is_empty() {
            return argmax(logits);
        }
        // Sorting by logit descending (ties by id) makes every later step deterministic.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = p.top_k as usize;
        if k > 0 && k < c.len() {
            c.select_nth_unstable_by(k - 1, by_logit);
            c.truncate(k);
        }
        c.sort_unstable_by(by_logit);

        // Softmax with temperature; c[0] holds the largest logit.
        let max = c[0].1;
        let mut sum = 0.0f64;
        let mut probs: Vec<f64> = c
            .iter()
            .map(|&(_, l)| {
                let e = (((l - max) / p.temperature) as f64).exp();
                sum += e;
                e
            })
            .collect();
        for q in probs.iter_mut() {
            *q /= sum;
        }
        let mut keep = probs.len();
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p as f64;
            keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut n = 0;
            for q in &probs[..keep] {
                acc += q;
                n += 1;
                if acc >= p.top_p as f64 {
                    break;
                }
            }
            keep = n.max(1);
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (i, q) in probs[..keep].iter().enumerate() {
            r -= q;
            if r <= 0.0 {
                return c[i].0;
            }
        }
        c[keep - 1].0
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || !logits[best].is_finite() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            repeat_penalty: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_the_largest() {
        let mut s = Sampler::new(&params(0.0), 1);
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_draws_other_seed_other_draws() {
        let logits = vec![1.0f32; 50];
        let draw = |seed| {
            let mut s = Sampler::new(&params(1.0), seed);
            (0..20)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_is_greedy_and_repeat_penalty_moves_the_choice() {
        let mut p = params(1.0);
        p.top_k = 1;
        let mut s = Sampler::new(&p, 3);
        assert_eq!(s.sample(&mut [0.0, 2.0, 1.9], &[]), 1);
        p.repeat_penalty = 2.0;
        p.repeat_last_n = 8;
        let mut s = Sampler::new(&p, 3);
        assert_eq!(s.sample(&mut [0.0, 2.0, 1.9], &[1]), 2);
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        let mut p = params(1.0);
        p.min_p = 0.5;
        let mut s = Sampler::new(&p, 9);
        for _ in 0..100 {
            let t = s.sample(&mut [5.0, 4.9, -10.0, -10.0], &[]);
            assert!(t < 2);
        }
        let mut p = params(1.0);
        p.top_p = 0.1;
        let mut s = Sampler::new(&p, 9);
        for _ in 0..100 {
            assert_eq!(s.sample(&mut [5.0, 1.0, 0.5], &[]), 0);
        }
    }
}
