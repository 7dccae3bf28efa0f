//! Bounded waits for real conditions (never a fixed sleep in place of a readiness check).

use std::time::{Duration, Instant};

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `ready` until it holds or `timeout` passes; true when it held.
pub fn poll_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `ready` until it holds; fails the test naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, ready: impl FnMut() -> bool) {
    assert!(
        poll_until(timeout, ready),
        "timed out after {timeout:?} waiting for {what}"
    );
}
