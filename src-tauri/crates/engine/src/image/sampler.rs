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
    let mut unipc = UniPc::default();
    let steps = sigmas.len().saturating_sub(1);
    for i in 0..steps {
        let (sigma, next) = (sigmas[i], sigmas[i + 1]);
        let denoised = denoise(&x, sigma, i)?;
        on_step(i, &denoised)?;
        x = match scheduler {
            Scheduler::UniPc => unipc.step(sigmas, i, x, denoised)?,
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

/// UniPC (Zhao et al., 2023) as diffusers runs it by default: data prediction, the `bh2`
/// weighting, order 2, the first step and the last at order 1. Each step first corrects the
/// previous step's result with the new model output (UniC, which costs no extra call), then
/// predicts the next point from the last two outputs (UniP). In the sigma form used here,
/// `lambda = -ln(sigma)`, and the update is the one diffusers makes in its VP form divided
/// through by `alpha_t`.
#[derive(Default)]
struct UniPc {
    /// Model outputs (clean estimates) of the last two steps, newest last. The corrector does
    /// not replace them: the next predictor uses what the model said, as diffusers does.
    outputs: Vec<Tensor>,
    /// The sample the last predictor started from, and the order it ran at.
    last: Option<(Tensor, usize)>,
}

impl UniPc {
    const ORDER: usize = 2;

    fn step(
        &mut self,
        sigmas: &[f64],
        i: usize,
        x: Tensor,
        denoised: Tensor,
    ) -> candle_core::Result<Tensor> {
        let lambda = |s: f64| -s.ln();
        let steps = sigmas.len() - 1;
        // UniC: `x` came from the predictor at step i - 1; `denoised` is the model at `x`.
        let x = match self.last.take() {
            Some((last_x, order)) if i > 0 => {
                let (s0, t) = (sigmas[i - 1], sigmas[i]);
                let h = lambda(t) - lambda(s0);
                let m0 = &self.outputs[self.outputs.len() - 1];
                let (b, bh) = Self::b(h, order);
                let base = (last_x.affine(t / s0, 0.0)? - m0.affine((-h).exp_m1(), 0.0)?)?;
                let d1_t = (&denoised - m0)?;
                let res = if order == 1 {
                    d1_t.affine(0.5, 0.0)?
                } else {
                    // Two history points: solve [[1, 1], [rk, 1]] rho = b for (rho_0, rho_t).
                    let m1 = &self.outputs[self.outputs.len() - 2];
                    let rk = (lambda(sigmas[i - 2]) - lambda(s0)) / h;
                    let rho0 = (b[0] - b[1]) / (1.0 - rk);
                    let rho_t = b[0] - rho0;
                    let d1 = (m1 - m0)?.affine(1.0 / rk, 0.0)?;
                    (d1.affine(rho0, 0.0)? + d1_t.affine(rho_t, 0.0)?)?
                };
                (base - res.affine(bh, 0.0)?)?
            }
            _ => x,
        };
        self.outputs.push(denoised);
        if self.outputs.len() > Self::ORDER {
            self.outputs.remove(0);
        }
        // UniP: order 1 to start (one output known) and for the last step (diffusers'
        // `lower_order_final`, which also keeps the step to sigma = 0 finite).
        let order = Self::ORDER.min(steps - i).min(self.outputs.len());
        let (s0, t) = (sigmas[i], sigmas[i + 1]);
        let m0 = &self.outputs[self.outputs.len() - 1];
        let next = if t == 0.0 {
            m0.clone()
        } else {
            let h = lambda(t) - lambda(s0);
            let (_, bh) = Self::b(h, order);
            let base = (x.affine(t / s0, 0.0)? - m0.affine((-h).exp_m1(), 0.0)?)?;
            if order == 1 {
                base
            } else {
                let m1 = &self.outputs[self.outputs.len() - 2];
                let rk = (lambda(sigmas[i - 1]) - lambda(s0)) / h;
                // With one history point UniP's weight is 1/2 whatever the step sizes.
                let d1 = (m1 - m0)?.affine(1.0 / rk, 0.0)?;
                (base - d1.affine(0.5 * bh, 0.0)?)?
            }
        };
        self.last = Some((x, order));
        Ok(next)
    }

    /// The right-hand side `b` of UniPC's order conditions for a step of `h` in lambda, and
    /// `B(h)`, the `bh2` scaling `e^-h - 1`.
    fn b(h: f64, order: usize) -> (Vec<f64>, f64) {
        let hh = -h;
        let bh = hh.exp_m1();
        let mut phi = bh / hh - 1.0;
        let mut factorial = 1.0;
        let mut b = Vec::with_capacity(order);
        for k in 1..=order {
            b.push(phi * factorial / bh);
            factorial *= (k + 1) as f64;
            phi = phi / hh - 1.0 / factorial;
        }
        (b, bh)
    }
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

    /// Gaussian data, N(MU, S^2) per element, have an exact denoiser and a closed-form ODE
    /// solution, so a deterministic sampler's error can be measured, not just its shape.
    const MU: f64 = 0.3;
    const S: f64 = 0.5;

    fn gaussian_run(sched: Scheduler, sigmas: &[f64], starts: &[f64]) -> Vec<f64> {
        let dev = Device::Cpu;
        let x0: Vec<f64> = starts.iter().map(|s| s * sigmas[0]).collect();
        let x0 = Tensor::new(x0.as_slice(), &dev).unwrap();
        let out = sample(
            sched,
            sigmas,
            x0,
            &mut |x, sigma, _| {
                let v = S * S + sigma * sigma;
                x.affine(S * S / v, sigma * sigma * MU / v)
            },
            &mut || unreachable!("deterministic samplers draw no noise"),
            &mut |_, _| Ok(()),
        )
        .unwrap();
        out.to_vec1::<f64>().unwrap()
    }

    fn gaussian_exact(x_t: f64, sigma_t: f64, sigma_end: f64) -> f64 {
        MU + (x_t - MU) * (S * S + sigma_end * sigma_end).sqrt()
            / (S * S + sigma_t * sigma_t).sqrt()
    }

    fn gaussian_error(sched: Scheduler, steps: usize) -> f64 {
        // One ladder for all (Karras'): the comparison is of the update rules, not of spacings.
        let sigmas = sd().sigmas(Scheduler::DpmPp2mKarras, steps);
        let starts = [1.0, -2.0, 0.25];
        let got = gaussian_run(sched, &sigmas, &starts);
        let end = *sigmas.last().unwrap();
        starts
            .iter()
            .zip(&got)
            .map(|(s, g)| (g - gaussian_exact(s * sigmas[0], sigmas[0], end)).abs())
            .fold(0.0, f64::max)
    }

    /// The multistep samplers are second order: their error shrinks much faster with steps
    /// than Euler's, and at 20 steps they are several times closer to the true answer.
    #[test]
    fn multistep_samplers_are_more_accurate_than_euler_on_a_known_ode() {
        for sched in [Scheduler::Euler, Scheduler::DpmPp2m, Scheduler::UniPc] {
            let e: Vec<f64> = [5, 10, 20, 40, 80]
                .map(|n| gaussian_error(sched, n))
                .to_vec();
            eprintln!(
                "{sched:?}: {:?}",
                e.iter().map(|x| format!("{x:.2e}")).collect::<Vec<_>>()
            );
            assert!(
                e[4] < e[2] && e[2] < e[1],
                "{sched:?} does not converge: {e:?}"
            );
        }
        let euler = gaussian_error(Scheduler::Euler, 20);
        for sched in [Scheduler::DpmPp2m, Scheduler::UniPc] {
            let e = gaussian_error(sched, 20);
            assert!(
                e * 4.0 < euler,
                "{sched:?}: {e:.2e} against Euler's {euler:.2e}"
            );
        }
    }

    /// The same problem on the same sigmas in diffusers (UniPCMultistepScheduler, bh2, order 2;
    /// DPMSolverMultistepScheduler, dpmsolver++, order 2): `bench/samplers_vs_diffusers.py`
    /// prints these numbers. UniPC agrees to 1e-9; DPM++ to 4e-8 (diffusers keeps some of its
    /// lambdas in f32).
    #[test]
    fn multistep_samplers_land_where_diffusers_does() {
        let sigmas = sd().sigmas(Scheduler::DpmPp2mKarras, 8);
        let starts = [1.0, -2.0, 0.25];
        for (sched, want) in [
            (Scheduler::UniPc, DIFFUSERS_UNIPC),
            (Scheduler::DpmPp2m, DIFFUSERS_DPMPP_2M),
        ] {
            let got = gaussian_run(sched, &sigmas, &starts);
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (g - w).abs() < 1e-7,
                    "{sched:?}: {got:?} against diffusers' {want:?}"
                );
            }
        }
    }
    const DIFFUSERS_UNIPC: [f64; 3] = [0.830662865, -0.794689932, 0.424324666];
    const DIFFUSERS_DPMPP_2M: [f64; 3] = [0.819888364, -0.772463417, 0.421800391];
}
