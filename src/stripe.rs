//! Stripes of threads: what every core's requests write (a counter, a reference count) is
//! split into a few copies, each on a cache line of its own, and each thread keeps to one,
//! so that cores serving requests at once do not pass one line back and forth.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Stripes per striped value: as many cores as share one line's traffic, at most.
pub(crate) const STRIPES: usize = 8;

/// This thread's stripe, in `0..STRIPES`: threads take them in turn as they first ask.
pub(crate) fn this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    // While the thread's locals are torn down: any stripe is correct, only slower.
    MINE.try_with(|i| *i).unwrap_or(0)
}
