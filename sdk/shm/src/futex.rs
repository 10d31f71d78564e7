//! Process-shared futex wait and wake on a 32-bit word in shared memory.
//!
//! The word usually lives in a `MAP_SHARED` mapping of a memfd that other
//! processes map at other addresses, so these wrappers never pass
//! `FUTEX_PRIVATE_FLAG`: a private futex is keyed by (address space, virtual
//! address) and would never meet a waker in another process, while a shared
//! one is keyed by the backing page and offset. Timeouts are relative and
//! measured on `CLOCK_MONOTONIC` (no `FUTEX_CLOCK_REALTIME`), like
//! [`std::time::Instant`].
//!
//! The word is `std`'s [`AtomicU32`], not the `sync` facade's:
//! the kernel reads it, which no model checker can follow anyway.
//!
//! # References
//! - [futex(2)](https://man7.org/linux/man-pages/man2/futex.2.html)
//! - [futex(7)](https://man7.org/linux/man-pages/man7/futex.7.html)

use std::io;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::thread::futex::{self, Flags, Timespec};

/// How a [`wait`] ended without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wait {
    /// A wake arrived (or, rarely, the kernel woke the thread spuriously):
    /// re-check the condition.
    Woken,
    /// The word did not hold the expected value, so the thread never slept.
    ValueChanged,
    /// The timeout elapsed.
    TimedOut,
    /// A signal handler ran; the wait may be resumed.
    Interrupted,
}

/// Why a [`wait`] failed: only a bad word address (`EFAULT`), a kernel or
/// sandbox without futexes (`ENOSYS`, `EPERM` from seccomp) or a word a peer
/// uses as a priority-inheritance futex (`EINVAL`) gets here.
#[derive(Debug, thiserror::Error)]
pub enum FutexError {
    /// `futex(FUTEX_WAIT)` failed.
    #[error("futex wait failed")]
    Wait(#[source] io::Error),
}

/// Sleeps while `word` holds `expected`, for at most `timeout` (`None`:
/// until woken).
///
/// The kernel compares the word and queues the thread atomically with respect
/// to [`wake`], so a waker that changes the word and then calls [`wake`]
/// cannot be missed. Timeouts too long for a `timespec` are clamped (the
/// kernel treats them as infinite anyway).
///
/// # Errors
/// [`FutexError::Wait`] only in the cases its type describes; the outcomes a
/// caller must handle in its loop are the [`Wait`] variants.
pub fn wait(
    word: &AtomicU32,
    expected: u32,
    timeout: Option<Duration>,
) -> Result<Wait, FutexError> {
    let timeout = timeout.map(|timeout| Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    });
    match futex::wait(word, Flags::empty(), expected, timeout.as_ref()) {
        Ok(()) => Ok(Wait::Woken),
        Err(Errno::AGAIN) => Ok(Wait::ValueChanged),
        Err(Errno::TIMEDOUT) => Ok(Wait::TimedOut),
        Err(Errno::INTR) => Ok(Wait::Interrupted),
        Err(err) => Err(FutexError::Wait(err.into())),
    }
}

/// [`wait`] with an absolute deadline on the monotonic clock (`None`: no
/// deadline), so a loop that waits again after a wake, a signal or a
/// changed value does not restart its timeout. A deadline already passed
/// returns [`Wait::TimedOut`] without a system call.
///
/// # Errors
/// As for [`wait`].
pub fn wait_until(
    word: &AtomicU32,
    expected: u32,
    deadline: Option<Instant>,
) -> Result<Wait, FutexError> {
    let timeout = match deadline {
        None => None,
        Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
            Some(remaining) if !remaining.is_zero() => Some(remaining),
            _ => return Ok(Wait::TimedOut),
        },
    };
    wait(word, expected, timeout)
}

/// Wakes up to `count` threads, of any process, sleeping in [`wait`] on
/// `word`; returns how many woke.
///
/// `count` is clamped to `i32::MAX` (the kernel reads it as an `int`, and a
/// negative count would wake only one), and 0 wakes nobody without a system
/// call (the kernel would wake one). A failure counts as nobody woken: it can
/// only come from a peer misusing the word as a priority-inheritance futex
/// (`EINVAL`), and there is nothing better for the waker to do.
pub fn wake(word: &AtomicU32, count: u32) -> usize {
    if count == 0 {
        return 0;
    }
    let count = count.min(i32::MAX.unsigned_abs());
    futex::wake(word, Flags::empty(), count).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread;

    use super::*;

    /// Whether thread `tid` of this process is asleep (state `S`).
    fn is_sleeping(tid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // The state follows the command name, which is in parentheses and may
        // itself contain spaces or parentheses.
        let after_comm = &stat[stat.rfind(')').unwrap() + 1..];
        after_comm.split_whitespace().next() == Some("S")
    }

    #[test]
    fn wait_returns_value_changed_when_the_word_differs() {
        let word = AtomicU32::new(1);
        assert_eq!(wait(&word, 0, None).unwrap(), Wait::ValueChanged);
    }

    #[test]
    fn wait_times_out() {
        let word = AtomicU32::new(0);
        let start = Instant::now();
        let timeout = Duration::from_millis(20);
        assert_eq!(wait(&word, 0, Some(timeout)).unwrap(), Wait::TimedOut);
        assert!(start.elapsed() >= timeout);
        assert_eq!(
            wait(&word, 0, Some(Duration::ZERO)).unwrap(),
            Wait::TimedOut
        );
    }

    #[test]
    fn wait_until_a_past_deadline_times_out_at_once() {
        let word = AtomicU32::new(0);
        assert_eq!(
            wait_until(&word, 0, Some(Instant::now())).unwrap(),
            Wait::TimedOut
        );
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            wait_until(&word, 0, Some(deadline)).unwrap(),
            Wait::TimedOut
        );
        assert!(Instant::now() >= deadline);
        assert_eq!(wait_until(&word, 1, None).unwrap(), Wait::ValueChanged);
    }

    #[test]
    fn huge_timeout_is_accepted() {
        // Would fail with EINVAL if the seconds wrapped to a negative value.
        let word = AtomicU32::new(1);
        assert_eq!(
            wait(&word, 0, Some(Duration::MAX)).unwrap(),
            Wait::ValueChanged
        );
    }

    #[test]
    fn wake_without_sleepers_wakes_nobody() {
        let word = AtomicU32::new(0);
        assert_eq!(wake(&word, 1), 0);
        assert_eq!(wake(&word, 0), 0);
        assert_eq!(wake(&word, u32::MAX), 0);
    }

    #[test]
    fn wake_reaches_a_sleeper_in_another_thread() {
        let word = AtomicU32::new(0);
        thread::scope(|s| {
            let sleeper = s.spawn(|| wait(&word, 0, Some(Duration::from_secs(10))).unwrap());
            while wake(&word, 1) == 0 {
                thread::yield_now();
            }
            assert_eq!(sleeper.join().unwrap(), Wait::Woken);
        });
    }

    #[test]
    fn wake_with_huge_count_wakes_every_sleeper() {
        let word = AtomicU32::new(0);
        let (tids, tid) = mpsc::channel();
        thread::scope(|s| {
            let sleepers: Vec<_> = (0..3)
                .map(|_| {
                    let tids = tids.clone();
                    let word = &word;
                    s.spawn(move || {
                        tids.send(rustix::thread::gettid().as_raw_nonzero().get())
                            .unwrap();
                        wait(word, 0, Some(Duration::from_secs(10))).unwrap()
                    })
                })
                .collect();
            for tid in tid.iter().take(3) {
                // After sending its tid a sleeper's only blocking call is the
                // futex wait.
                while !is_sleeping(tid) {
                    thread::yield_now();
                }
            }
            // One call: a count read as a negative `int` would wake only one.
            assert_eq!(wake(&word, u32::MAX), 3);
            for sleeper in sleepers {
                assert_eq!(sleeper.join().unwrap(), Wait::Woken);
            }
        });
    }
}
