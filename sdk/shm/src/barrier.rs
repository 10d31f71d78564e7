//! Asymmetric fences between processes, for wake-ups that cost the fast path
//! nothing.
//!
//! A sleeper and a publisher each store a word and then load the other's (the
//! sleeper its "I am parked" flag then the data, the publisher the data then
//! the flag). Without a full fence on both sides each may miss the other's
//! store. Instead of a fence on every publish, publishers register once for
//! `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` and keep only a compiler
//! fence; the rare sleeper calls `membarrier`, which runs a full barrier on
//! every CPU running a registered process, so either the publisher sees the
//! flag or the sleeper sees the data. Where the kernel refuses membarrier,
//! both sides fall back to `SeqCst` fences.
//!
//! # References
//! - [membarrier(2)](https://man7.org/linux/man-pages/man2/membarrier.2.html)

use std::sync::OnceLock;
use std::sync::atomic::{Ordering, compiler_fence, fence};

use rustix::thread::{MembarrierCommand, membarrier};

/// Whether this process is registered for global expedited barriers.
static REGISTERED: OnceLock<bool> = OnceLock::new();

/// Registers this process (once) so that [`sleeper`] fences on other
/// processes reach it; returns whether that worked. Every endpoint calls it
/// before its first publish, and every publish asks again (inlined: a load
/// and a branch once registered).
#[inline]
pub(crate) fn register() -> bool {
    *REGISTERED.get_or_init(|| membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok())
}

/// The publisher's side: after storing the data, before loading the flag.
#[inline]
pub(crate) fn publisher() {
    if register() {
        // ORDERING: SeqCst compiler fence; the hardware fence is the
        // membarrier in `sleeper` (its partner), which runs one on this CPU.
        compiler_fence(Ordering::SeqCst);
    } else {
        // ORDERING: SeqCst fence; pairs with the one in `sleeper` (no
        // membarrier here), ordering our data store before our flag load.
        fence(Ordering::SeqCst);
    }
}

/// The sleeper's side: after storing the flag, before loading the data.
/// Returns `false` if only a local fence was possible, in which case a
/// registered publisher might miss the flag and the sleeper must not sleep
/// long.
pub(crate) fn sleeper() -> bool {
    // ORDERING: SeqCst fence; pairs with the publisher's fence when neither
    // side has membarrier.
    fence(Ordering::SeqCst);
    // Needs no registration of our own: it reaches the registered publishers.
    membarrier(MembarrierCommand::GlobalExpedited).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_is_remembered_and_sleeper_barrier_works_here() {
        let first = register();
        assert_eq!(register(), first);
        // This kernel supports membarrier; if it ever does not, the fallback
        // is exercised instead and the test says so.
        if first {
            assert!(sleeper());
        } else {
            eprintln!("membarrier unavailable: testing the fence fallback");
            assert!(!sleeper());
        }
        publisher();
    }
}
