"""Checks Atelier's multistep samplers against diffusers' schedulers on a problem with a known
answer, and prints the numbers the engine's test `multistep_samplers_land_where_diffusers_does`
compares with.

The data are Gaussian, N(MU, S^2) per element, so the exact denoiser is
D(x, sigma) = (S^2 x + sigma^2 MU) / (S^2 + sigma^2) and the probability-flow ODE has a closed
form. Both sides walk the same sigmas (SD 1.5's Karras ladder, 8 steps, then 0) from the same
start; diffusers runs in its VP form (x / sqrt(1 + sigma^2)) with `prediction_type="sample"`, so
the model output is the clean estimate itself.

    ~/.cache/atelier/bench-venv-torch/bin/python bench/samplers_vs_diffusers.py
"""

import math

import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

MU, S = 0.3, 0.5
STARTS = [1.0, -2.0, 0.25]
STEPS = 8


def sd_sigmas():
    """SD's scaled-linear training sigmas, as the engine's NoiseSchedule computes them."""
    a, b, n = math.sqrt(0.00085), math.sqrt(0.012), 1000
    acp, out = 1.0, []
    for i in range(n):
        beta = (a + (b - a) * i / (n - 1)) ** 2
        acp *= 1.0 - beta
        out.append(math.sqrt((1.0 - acp) / acp))
    return out


def karras(lo, hi, n, rho=7.0):
    lo_inv, hi_inv = lo ** (1 / rho), hi ** (1 / rho)
    return [(hi_inv + i / (n - 1) * (lo_inv - hi_inv)) ** rho for i in range(n)] + [0.0]


def denoise(x, sigma):
    return (S * S * x + sigma * sigma * MU) / (S * S + sigma * sigma)


def exact(x_t, sigma_t):
    return MU + (x_t - MU) * S / math.sqrt(S * S + sigma_t * sigma_t)


def run(scheduler, sigmas):
    scheduler.set_timesteps(STEPS)
    scheduler.sigmas = torch.tensor(sigmas, dtype=torch.float64)
    # (batch, channels, pixel): the shape diffusers' solvers expect.
    x0 = torch.tensor(STARTS, dtype=torch.float64).reshape(1, 3, 1) * sigmas[0]
    sample = x0 / math.sqrt(1 + sigmas[0] ** 2)
    for i, t in enumerate(scheduler.timesteps):
        sigma = sigmas[i]
        x_k = sample * math.sqrt(1 + sigma**2)
        sample = scheduler.step(denoise(x_k, sigma), t, sample).prev_sample
    return sample.flatten().tolist()  # the last sigma is 0, where VP and k-diffusion forms agree


def main():
    train = sd_sigmas()
    sigmas = karras(train[0], train[-1], STEPS)
    starts = [s * sigmas[0] for s in STARTS]
    print("sigmas", ", ".join(f"{s:.6f}" for s in sigmas))
    print("exact ", ", ".join(f"{exact(x, sigmas[0]):.9f}" for x in starts))
    common = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="sample",
        final_sigmas_type="zero",
    )
    unipc = UniPCMultistepScheduler(solver_order=2, solver_type="bh2", **common)
    dpm = DPMSolverMultistepScheduler(
        solver_order=2, algorithm_type="dpmsolver++", lower_order_final=True, **common
    )
    for name, sched in [("unipc", unipc), ("dpmpp_2m", dpm)]:
        print(f"{name:6}", ", ".join(f"{v:.9f}" for v in run(sched, sigmas)))


if __name__ == "__main__":
    main()
