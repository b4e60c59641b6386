//! A fixed set of worker threads for one model's forward pass.
//!
//! A decode step of a small model is a few hundred matrix products of well under a millisecond
//! each; waking sleeping threads for every one (rayon, candle's own pool) costs as much as the
//! work. These workers spin briefly between jobs and sleep on a condition variable only after a
//! quiet spell, so back-to-back jobs start within a microsecond and an idle model costs no CPU.
//!
//! Jobs share their work through counters (any thread may do any part), so the caller never
//! waits for a worker that has not started: on a busy machine a descheduled worker would
//! otherwise stall every job for a scheduler time slice. A worker joins a job only while it is
//! open; the caller closes it once its own share is done and waits only for those that joined.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const CLOSED: u64 = 1 << 31;
const INSIDE: u64 = CLOSED - 1;

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job; workers run the job when they see it change.
    generation: AtomicUsize,
    /// The current job, valid while `run` waits (its lifetime is erased).
    job: UnsafeCell<Option<*const Job>>,
    /// `generation << 32 | CLOSED | workers inside the job`.
    state: AtomicU64,
    panicked: AtomicBool,
    stop: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by `run` before it publishes a new generation (release) and
// read by workers after they observe it (acquire); `run` does not return while any worker may
// still use it.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// A job panicked (a bug, reported as an error rather than taking the app down).
#[derive(Debug)]
pub struct JobPanicked;

impl Pool {
    /// A pool that runs jobs on `threads` threads: the caller's and `threads − 1` workers.
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            state: AtomicU64::new(CLOSED),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for index in 1..threads.max(1) {
            let s = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("atelier-text-{index}"))
                .spawn(move || worker(&s, index));
            match handle {
                Ok(h) => workers.push(h),
                Err(e) => {
                    // Stop the ones already started before reporting.
                    drop(Pool { shared, workers });
                    return Err(e);
                }
            }
        }
        Ok(Pool { shared, workers })
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `job(0)` on the calling thread and `job(i)` on every worker `i` that starts before
    /// the caller's own call returns, then waits for those. A job must therefore share its work
    /// through a counter (whoever comes takes the next part) rather than split it by index.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) -> Result<(), JobPanicked> {
        let s = &*self.shared;
        if self.workers.is_empty() {
            return catch_unwind(AssertUnwindSafe(|| job(0))).map_err(|_| JobPanicked);
        }
        // SAFETY: only the lifetime is erased; workers use the pointer only between the
        // generation bump below and their `finished` increment, and we wait for all of those.
        let ptr: *const Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(job) };
        // No worker holds the previous job: `run` waited for all that joined it, and a closed
        // job admits no one.
        unsafe { *s.job.get() = Some(ptr) };
        s.panicked.store(false, Ordering::Relaxed);
        let g = s.generation.load(Ordering::Relaxed).wrapping_add(1) & 0xFFFF_FFFF;
        s.state.store((g as u64) << 32, Ordering::Release);
        s.generation.store(g, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(|p| p.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        s.state.fetch_or(CLOSED, Ordering::AcqRel);
        let mut spins = 0u32;
        while s.state.load(Ordering::Acquire) & INSIDE != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        unsafe { *s.job.get() = None };
        if mine.is_err() || s.panicked.load(Ordering::Relaxed) {
            return Err(JobPanicked);
        }
        Ok(())
    }
}

/// Enters job `g` if it is still open.
fn join(s: &Shared, g: usize) -> bool {
    let mut cur = s.state.load(Ordering::Acquire);
    loop {
        if cur >> 32 != g as u64 || cur & CLOSED != 0 {
            return false;
        }
        match s
            .state
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

impl Pool {
    /// Runs `f(state, i)` for every `i` in `0..items`, each exactly once, on whichever threads
    /// join (the shape every job here must have, see [`Pool::run`]). `state()` makes one
    /// scratch value per participating thread.
    pub fn run_items<S>(
        &self,
        items: usize,
        state: impl Fn() -> S + Sync,
        f: impl Fn(&mut S, usize) + Sync,
    ) -> Result<(), JobPanicked> {
        let next = AtomicUsize::new(0);
        self.run(&|_| {
            let mut scratch = state();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items {
                    break;
                }
                f(&mut scratch, i);
            }
        })
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) || started.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            // Quiet for a while: sleep until the next job.
            let guard = s.lock.lock().unwrap_or_else(|p| p.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let guard =
                if s.generation.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::SeqCst) {
                    s.wake.wait(guard).unwrap_or_else(|p| p.into_inner())
                } else {
                    guard
                };
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
        }
        if !join(s, seen) {
            continue;
        }
        // SAFETY: see `Shared`: the job stays valid until we leave it.
        if let Some(job) = unsafe { *s.job.get() } {
            let job = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| job(index))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.state.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_items(pool: &Pool, items: usize, seen: &[AtomicUsize]) {
        pool.run_items(
            items,
            || (),
            |_, i| {
                seen[i].fetch_add(1, Ordering::Relaxed);
            },
        )
        .unwrap();
    }

    #[test]
    fn every_item_is_done_exactly_once() {
        let pool = Pool::new(3).unwrap();
        let seen: Vec<AtomicUsize> = (0..5000).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..200 {
            run_items(&pool, 5000, &seen);
        }
        assert!(seen.iter().all(|n| n.load(Ordering::Relaxed) == 200));
        // After sleeping, workers wake for the next job, and every item is still done once.
        std::thread::sleep(SPIN * 5);
        run_items(&pool, 5000, &seen);
        assert!(seen.iter().all(|n| n.load(Ordering::Relaxed) == 201));
    }

    #[test]
    fn a_panicking_job_is_an_error_and_the_pool_survives() {
        let pool = Pool::new(2).unwrap();
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = pool.run_items(
            100,
            || (),
            |_, i| {
                if i == 50 {
                    panic!("boom");
                }
            },
        );
        std::panic::set_hook(prev);
        assert!(r.is_err());
        let seen: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
        run_items(&pool, 100, &seen);
        assert!(seen.iter().all(|n| n.load(Ordering::Relaxed) == 1));
    }
}
