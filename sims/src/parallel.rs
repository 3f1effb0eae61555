//! Seeds on several threads, results in seed order.
//!
//! A seed's run depends on nothing but the seed (no wall clock, no shared
//! RNG, and crashes that do not let tokio's process-wide task IDs reach the
//! trace — see `faults::driver`), so seeds can run on any thread in any
//! order; `scenarios::determinism` checks it. What a sweep reports must not
//! depend on the threads either: results come back in seed order, and the
//! first seed that fails (in seed order, not in finishing order) is the one
//! reported, exactly as a sequential sweep would.

use std::{
    num::NonZeroUsize,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

/// Threads a sweep uses: `SIM_THREADS`, or one per core.
///
/// # Panics
/// When `SIM_THREADS` is set but is not a positive whole number.
pub fn threads() -> usize {
    match std::env::var("SIM_THREADS") {
        Ok(text) => match text.trim().parse::<NonZeroUsize>() {
            Ok(n) => n.get(),
            Err(_) => panic!("SIM_THREADS={text:?} is not a positive whole number"),
        },
        Err(_) => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
    }
}

/// Runs `run` for each of `seeds` on up to `threads` threads and returns
/// the results in seed order, up to and including the first (in seed
/// order) for which `stop` is true — or all of them.
///
/// A seed after a stopping seed is not started once the stop is known;
/// every seed before it always runs, so the answer is the one a sequential
/// loop would give. Worker threads carry the calling thread's name (libtest
/// names it after the test, which replay commands use).
pub fn in_seed_order<T: Send>(
    seeds: &[u64],
    threads: usize,
    run: impl Fn(u64) -> T + Sync,
    stop: impl Fn(&T) -> bool + Sync,
) -> Vec<(u64, T)> {
    let threads = threads.clamp(1, seeds.len().max(1));
    let next = AtomicUsize::new(0);
    // Index of the first stopping seed found so far (`usize::MAX`: none).
    let first_stop = AtomicUsize::new(usize::MAX);
    let results: Mutex<Vec<Option<T>>> = Mutex::new(seeds.iter().map(|_| None).collect());
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= seeds.len() || i > first_stop.load(Ordering::Relaxed) {
                return;
            }
            let result = run(seeds[i]);
            if stop(&result) {
                first_stop.fetch_min(i, Ordering::Relaxed);
            }
            results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(result);
        }
    };
    if threads == 1 {
        work();
    } else {
        let name = std::thread::current().name().map(str::to_owned);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let mut builder = std::thread::Builder::new();
                    if let Some(name) = &name {
                        builder = builder.name(name.clone());
                    }
                    builder
                        .spawn_scoped(scope, work)
                        .expect("the OS starts a sweep thread")
                })
                .collect();
            for w in workers {
                if let Err(panic) = w.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        });
    }
    let end = first_stop
        .load(Ordering::Relaxed)
        .saturating_add(1)
        .min(seeds.len());
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    seeds[..end]
        .iter()
        .zip(results)
        .map(|(seed, r)| (*seed, r.expect("every seed before the first stop ran")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_in_seed_order_and_stop_at_the_first_stopping_seed() {
        let seeds: Vec<u64> = (0..50).collect();
        for threads in [1, 2, 7] {
            let all = in_seed_order(&seeds, threads, |s| s * 10, |_| false);
            assert_eq!(all, seeds.iter().map(|s| (*s, s * 10)).collect::<Vec<_>>());
            // Seeds 13 and 31 both stop; 13 is first in seed order, whatever
            // thread finishes first.
            let upto = in_seed_order(&seeds, threads, |s| s, |s| *s == 13 || *s == 31);
            assert_eq!(upto.len(), 14);
            assert_eq!(upto.last(), Some(&(13, 13)));
        }
        assert!(in_seed_order(&[], 4, |s| s, |_| false).is_empty());
    }
}
