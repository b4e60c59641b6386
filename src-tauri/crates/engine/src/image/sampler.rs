//! Noise schedules and samplers, written in the sigma ("k-diffusion") form: the latent `x` lives
//! at noise level `sigma`, a denoiser returns its estimate of the clean latent, and each sampler
//! is a few lines over that. Every random number comes from the caller's seeded host RNG, so a
//! seed reproduces an image on any device (candle cannot seed its CPU RNG, and its
//! Euler-ancestral draws unseeded noise inside `step()`).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::params::Scheduler;

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    Epsilon,
    VPrediction,
}

/// How inference timesteps are spread over the training ones (diffusers' `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spacing {
    Linspace,
    Leading,
    Trailing,
}

/// The training noise schedule of a model (diffusers' `scheduler_config.json`).
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    /// `log(sigma)` of each training timestep, increasing with `t`.
    log_sigmas: Vec<f64>,
    pub prediction: Prediction,
    pub spacing: Spacing,
    pub steps_offset: usize,
    /// DDIM's last step lands on `alpha = 1` (true) or on the first training alpha (false).
    pub set_alpha_to_one: bool,
}

impl NoiseSchedule {
    /// Stable Diffusion's "scaled linear" betas.
    pub fn scaled_linear(
        beta_start: f64,
        beta_end: f64,
        train_steps: usize,
        prediction: Prediction,
        spacing: Spacing,
    ) -> NoiseSchedule {
        let n = train_steps.max(2);
        let (a, b) = (beta_start.sqrt(), beta_end.sqrt());
        let mut alpha_cumprod = 1.0;
        let log_sigmas = (0..n)
            .map(|i| {
                let beta = (a + (b - a) * i as f64 / (n - 1) as f64).powi(2);
                alpha_cumprod *= 1.0 - beta;
                (((1.0 - alpha_cumprod) / alpha_cumprod).sqrt()).ln()
            })
            .collect();
        NoiseSchedule {
            log_sigmas,
            prediction,
            spacing,
            steps_offset: 1,
            set_alpha_to_one: false,
        }
    }

    /// SD 1.x / 2.x defaults.
    pub fn stable_diffusion(prediction: Prediction) -> NoiseSchedule {
        Self::scaled_linear(0.00085, 0.012, 1000, prediction, Spacing::Leading)
    }

    fn train_steps(&self) -> usize {
        self.log_sigmas.len()
    }

    pub fn sigma_min(&self) -> f64 {
        self.log_sigmas[0].exp()
    }

    pub fn sigma_max(&self) -> f64 {
        self.log_sigmas[self.train_steps() - 1].exp()
    }

    /// The (fractional) training timestep of a noise level, by interpolating `log(sigma)`.
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        let ls = &self.log_sigmas;
        let log_sigma = sigma.max(1e-10).ln();
        let last = ls.len() - 2;
        let low = ls
            .iter()
            .rposition(|&l| l <= log_sigma)
            .unwrap_or(0)
            .min(last);
        let (lo, hi) = (ls[low], ls[low + 1]);
        let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
        low as f64 + w
    }

    pub fn t_to_sigma(&self, t: f64) -> f64 {
        let t = t.clamp(0.0, (self.train_steps() - 1) as f64);
        let (low, high) = (t.floor() as usize, t.ceil() as usize);
        let w = t - t.floor();
        ((1.0 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()
    }

    /// The training timesteps an `n`-step run visits, first (noisiest) to last.
    fn timesteps(&self, n: usize, spacing: Spacing) -> Vec<f64> {
        let max_t = (self.train_steps() - 1) as f64;
        match spacing {
            Spacing::Linspace => (0..n)
                .map(|i| {
                    if n == 1 {
                        max_t
                    } else {
                        max_t * (1.0 - i as f64 / (n - 1) as f64)
                    }
                })
                .collect(),
            Spacing::Leading => {
                let ratio = self.train_steps() / n;
                (0..n)
                    .rev()
                    .map(|i| ((i * ratio + self.steps_offset) as f64).min(max_t))
                    .collect()
            }
            Spacing::Trailing => {
                let ratio = self.train_steps() as f64 / n as f64;
                (0..n)
                    .map(|i| {
                        ((self.train_steps() as f64 - i as f64 * ratio).round() - 1.0).max(0.0)
                    })
                    .collect()
            }
        }
    }

    /// The `n + 1` noise levels a sampler walks, ending at 0 (or, for DDIM without
    /// `set_alpha_to_one`, at the first training level, as diffusers does).
    pub fn sigmas(&self, scheduler: Scheduler, n: usize) -> Vec<f64> {
        let n = n.max(1);
        let mut sigmas: Vec<f64> = match scheduler {
            Scheduler::DpmPp2mKarras => {
                // Karras et al. (2022), rho = 7, over the model's own range.
                let rho = 7.0;
                let (min_inv, max_inv) = (
                    self.sigma_min().powf(1.0 / rho),
                    self.sigma_max().powf(1.0 / rho),
                );
                (0..n)
                    .map(|i| {
                        let ramp = if n == 1 {
                            0.0
                        } else {
                            i as f64 / (n - 1) as f64
                        };
                        (max_inv + ramp * (min_inv - max_inv)).powf(rho)
                    })
                    .collect()
            }
            Scheduler::Ddim => {
                let spacing = match self.spacing {
                    Spacing::Trailing => Spacing::Trailing,
                    _ => Spacing::Leading,
                };
                self.timesteps(n, spacing)
                    .into_iter()
                    .map(|t| self.t_to_sigma(t))
                    .collect()
            }
            _ => {
                let spacing = match self.spacing {
                    Spacing::Trailing => Spacing::Trailing,
                    _ => Spacing::Linspace,
                };
                self.timesteps(n, spacing)
                    .into_iter()
                    .map(|t| self.t_to_sigma(t))
                    .collect()
            }
        };
        let last = if scheduler == Scheduler::Ddim && !self.set_alpha_to_one {
            self.sigma_min()
        } else {
            0.0
        };
        sigmas.push(last);
        sigmas
    }
}

/// The first noise level and the levels to walk for img2img at `strength` (A1111's rule: the
/// last `strength × steps` steps of an ordinary `steps`-step run).
pub fn img2img_sigmas(full: &[f64], strength: f64) -> Vec<f64> {
    let steps = full.len() - 1;
    let t_enc = ((strength.min(0.999) * steps as f64) as usize).min(steps.saturating_sub(1));
    full[steps - t_enc - 1..].to_vec()
}

/// Turns `x` at `sigmas[0]` into a clean latent. `denoise(x, sigma, step)` returns the
/// model's clean estimate; `noise()` draws a standard-normal tensor shaped like `x` from the
/// seeded host RNG; `on_step(step, denoised)` sees each estimate (previews) and may stop the
/// run by returning an error (cancellation).
pub fn sample(
    scheduler: Scheduler,
    sigmas: &[f64],
    mut x: Tensor,
    denoise: &mut dyn FnMut(&Tensor, f64, usize) -> candle_core::Result<Tensor>,
    noise: &mut dyn FnMut() -> candle_core::Result<Tensor>,
    on_step: &mut dyn FnMut(usize, &Tensor) -> candle_core::Result<()>,
) -> candle_core::Result<Tensor> {
    let mut old_denoised: Option<Tensor> = None;
    for i in 0..sigmas.len().saturating_sub(1) {
        let (sigma, next) = (sigmas[i], sigmas[i + 1]);
        let denoised = denoise(&x, sigma, i)?;
        on_step(i, &denoised)?;
        x = match scheduler {
            // DDIM with eta = 0 is the Euler step of the same ODE; only its timesteps differ.
            Scheduler::Euler | Scheduler::Ddim => euler(&x, &denoised, sigma, next)?,
            Scheduler::EulerAncestral => {
                let (down, up) = ancestral_split(sigma, next);
                let x = euler(&x, &denoised, sigma, down)?;
                if next > 0.0 {
                    (x + noise()?.affine(up, 0.0)?)?
                } else {
                    x
                }
            }
            Scheduler::DpmPp2m | Scheduler::DpmPp2mKarras => {
                let x = if next == 0.0 {
                    denoised.clone()
                } else {
                    let t = |s: f64| -s.ln();
                    let h = t(next) - t(sigma);
                    let target = match (&old_denoised, i) {
                        (Some(old), i) if i > 0 => {
                            let r = (t(sigma) - t(sigmas[i - 1])) / h;
                            (denoised.affine(1.0 + 1.0 / (2.0 * r), 0.0)?
                                - old.affine(1.0 / (2.0 * r), 0.0)?)?
                        }
                        _ => denoised.clone(),
                    };
                    (x.affine(next / sigma, 0.0)? - target.affine((-h).exp_m1(), 0.0)?)?
                };
                old_denoised = Some(denoised);
                x
            }
            Scheduler::Lcm => {
                if next > 0.0 {
                    (&denoised + noise()?.affine(next, 0.0)?)?
                } else {
                    denoised
                }
            }
        };
    }
    Ok(x)
}

fn euler(x: &Tensor, denoised: &Tensor, sigma: f64, next: f64) -> candle_core::Result<Tensor> {
    // d = (x - denoised) / sigma;  x' = x + d (next - sigma)
    let d = (x - denoised)?.affine(1.0 / sigma, 0.0)?;
    x + d.affine(next - sigma, 0.0)?
}

/// `(sigma_down, sigma_up)` of an ancestral step with eta = 1.
fn ancestral_split(sigma: f64, next: f64) -> (f64, f64) {
    if next == 0.0 {
        return (0.0, 0.0);
    }
    let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma))
        .max(0.0)
        .sqrt()
        .min(next);
    ((next * next - up * up).max(0.0).sqrt(), up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn sd() -> NoiseSchedule {
        NoiseSchedule::stable_diffusion(Prediction::Epsilon)
    }

    #[test]
    fn training_sigmas_match_stable_diffusion() {
        let s = sd();
        // Known values of SD's schedule: sigma_min ~0.0292, sigma_max ~14.61.
        assert!((s.sigma_min() - 0.0292).abs() < 1e-3, "{}", s.sigma_min());
        assert!((s.sigma_max() - 14.6146).abs() < 1e-3, "{}", s.sigma_max());
        for t in [0.0, 1.0, 250.5, 998.0, 999.0] {
            let back = s.sigma_to_t(s.t_to_sigma(t));
            assert!((back - t).abs() < 1e-6, "{t} -> {back}");
        }
    }

    #[test]
    fn schedules_walk_down_to_their_end() {
        let s = sd();
        for sched in Scheduler::ALL {
            for n in [1, 4, 20] {
                let sig = s.sigmas(sched, n);
                assert_eq!(sig.len(), n + 1, "{sched:?}");
                assert!(sig.windows(2).all(|w| w[0] > w[1]), "{sched:?} {sig:?}");
                let end = *sig.last().unwrap();
                if sched == Scheduler::Ddim {
                    assert!((end - s.sigma_min()).abs() < 1e-12);
                } else {
                    assert_eq!(end, 0.0);
                }
            }
        }
        // DDIM's leading spacing with an offset of 1: 20 steps visit 951, 901, ... 1.
        let ddim = s.sigmas(Scheduler::Ddim, 20);
        assert!((ddim[0] - s.t_to_sigma(951.0)).abs() < 1e-12);
        assert!((ddim[19] - s.t_to_sigma(1.0)).abs() < 1e-12);
        // Trailing (SD-Turbo): one step starts at the last training timestep.
        let mut turbo = sd();
        turbo.spacing = Spacing::Trailing;
        assert!((turbo.sigmas(Scheduler::Euler, 1)[0] - s.sigma_max()).abs() < 1e-9);
        assert_eq!(
            turbo.timesteps(4, Spacing::Trailing),
            vec![999.0, 749.0, 499.0, 249.0]
        );
    }

    #[test]
    fn img2img_runs_the_tail_of_the_schedule() {
        let full = sd().sigmas(Scheduler::Euler, 20);
        let tail = img2img_sigmas(&full, 0.5);
        assert_eq!(tail.len(), 12); // 11 steps, as A1111 runs for strength 0.5 of 20
        assert_eq!(tail.last(), full.last());
        assert_eq!(img2img_sigmas(&full, 1.0).len(), 21);
    }

    /// With a perfect denoiser (it always answers the true clean latent) every sampler must
    /// land on that latent: a check of the update formulas that needs no model.
    #[test]
    fn every_sampler_recovers_the_clean_latent_from_an_oracle() {
        let dev = Device::Cpu;
        let clean = Tensor::new(&[0.5f32, -1.0, 2.0, 0.0], &dev).unwrap();
        let s = sd();
        for sched in Scheduler::ALL {
            let sigmas = s.sigmas(sched, 8);
            let start = Tensor::new(&[1.0f32, 1.0, -1.0, 0.5], &dev).unwrap();
            let x0 = (&clean + start.affine(sigmas[0], 0.0).unwrap()).unwrap();
            let mut calls = 0;
            let out = sample(
                sched,
                &sigmas,
                x0,
                &mut |_, _, _| {
                    calls += 1;
                    Ok(clean.clone())
                },
                &mut || Tensor::new(&[0.3f32, -0.2, 0.1, 0.0], &dev),
                &mut |_, _| Ok(()),
            )
            .unwrap();
            assert_eq!(calls, 8);
            let err: f32 = (&out - &clean)
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            // DDIM stops at sigma_min (not 0), so some of the starting noise remains.
            let tol = if sched == Scheduler::Ddim { 0.1 } else { 1e-4 };
            assert!(err < tol, "{sched:?}: off by {err}");
        }
    }
}
