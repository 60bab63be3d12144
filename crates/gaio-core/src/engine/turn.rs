//! One turn of the engine (what `wait_io` runs), the park handshake, and the
//! work set: the connections that have something to try this turn.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::table::ConnState;
use super::{Core, Done, Engine, Trim};
use crate::Result;
use crate::driver::Swap;

/// Connections with work outside an event: requests (or a `free`) not tried
/// yet, and swap-buffer reads waiting for swap space. Each connection is on a
/// list at most once (its `dirty` / `swap_wait` flag says so).
#[derive(Debug, Default)]
pub(crate) struct WorkSet {
    dirty: Vec<u32>,
    swap_waiters: Vec<u32>,
}

impl WorkSet {
    /// `c` has requests to try at the next turn.
    #[inline]
    pub fn mark_dirty<C>(&mut self, c: &mut ConnState<C>, slot: u32) {
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(slot);
        }
    }

    /// `c`'s swap-buffer read waits for swap space.
    pub fn wait_for_swap<C>(&mut self, c: &mut ConnState<C>, slot: u32) {
        if !c.swap_wait {
            c.swap_wait = true;
            self.swap_waiters.push(slot);
        }
    }

    pub fn has_swap_waiters(&self) -> bool {
        !self.swap_waiters.is_empty()
    }

    /// The dirty list, to go through; hand it back with [`put_back`] so its
    /// capacity stays.
    ///
    /// [`put_back`]: Self::put_back
    pub fn take_dirty(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.dirty)
    }

    pub fn take_swap_waiters(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.swap_waiters)
    }

    /// Gives a taken list back, empty, keeping what was added meanwhile.
    pub fn put_back(list: &mut Vec<u32>, mut taken: Vec<u32>) {
        taken.clear();
        taken.append(list);
        *list = taken;
    }

    pub fn dirty_mut(&mut self) -> &mut Vec<u32> {
        &mut self.dirty
    }

    pub fn swap_waiters_mut(&mut self) -> &mut Vec<u32> {
        &mut self.swap_waiters
    }

    pub fn clear(&mut self) {
        self.dirty.clear();
        self.swap_waiters.clear();
    }
}

/// What the engine keeps from one turn to the next.
#[derive(Debug)]
pub(crate) struct TurnState {
    /// Before blocking, spin on non-blocking polls for this long.
    busy_poll: Option<Duration>,
    /// The last turn returned completions without polling.
    skipped_poll: bool,
    /// Burst trims of the working vectors.
    dirty: Trim,
    done: Trim,
}

impl TurnState {
    pub fn new(busy_poll: Option<Duration>) -> TurnState {
        TurnState {
            busy_poll,
            skipped_poll: false,
            dirty: Trim::default(),
            done: Trim::default(),
        }
    }

    /// The engine's completions went out as a batch of `used`; `done` is the
    /// (now empty) vector the next turn fills.
    pub fn handed_out<C>(&mut self, done: &mut Vec<Done<C>>, used: usize) {
        self.done.after(done, used);
    }
}

impl<C> Engine<C> {
    /// One turn: applies other threads' commands, tries the connections with
    /// work, expires deadlines, and — if that completed nothing — waits for the
    /// driver (until `until`, the nearest deadline, or a wake) and handles what
    /// it reports. Returns with completions in `done`, after a wake, or at
    /// `until`.
    pub fn turn(
        &mut self,
        swap: &mut Swap,
        until: Option<Instant>,
        st: &mut TurnState,
    ) -> Result<()> {
        // The previous batch's borrow of the swap space has ended. Completions
        // made since (a `free` between batches) may refer to it too: then it
        // waits for the next turn.
        if self.done.is_empty() {
            self.driver.recycle(swap);
        }
        self.retry_swap_waiters(swap);
        loop {
            self.tick();
            if self.remote_pending() {
                self.run_remote();
            }
            self.run_dirty(swap);
            self.expire(swap);
            self.retry_backoff(swap);
            if std::mem::take(&mut self.woken) && self.done.is_empty() {
                break;
            }
            if !self.done.is_empty() {
                // Completions already: return them without a poll, but poll
                // (without blocking) every other batch so readiness cannot
                // starve, and whenever operations wait to be submitted (a
                // completion driver), so they run while the application handles
                // this batch.
                let submit = self.driver.has_unsubmitted();
                if (st.skipped_poll || submit) && self.poll_driver(Some(Duration::ZERO))? {
                    self.dispatch(swap);
                }
                st.skipped_poll = !st.skipped_poll;
                break;
            }
            // Poll at least once per call, even when `until` has passed
            // (`wait_io_timeout(ZERO)` is a non-blocking check, not a no-op).
            let mut timeout = until.map(|u| u.saturating_duration_since(self.now()));
            if let Some(next) = self.next_deadline() {
                let d = next.saturating_duration_since(self.now());
                timeout = Some(timeout.map_or(d, |t| t.min(d)));
            }
            // Nothing of this batch refers to swap space yet (`done` is
            // empty): reads that found none need not wait for the next call.
            if self.driver.recycle(swap) | self.work.has_swap_waiters() {
                self.retry_swap_waiters(swap);
                if !self.done.is_empty() {
                    continue;
                }
            }
            if self.core.park(st, timeout)? {
                self.dispatch(swap);
            }
            st.skipped_poll = false;
            self.tick();
            self.expire(swap);
            self.retry_backoff(swap);
            if !self.done.is_empty() || until.is_some_and(|u| self.now() >= u) {
                break;
            }
        }
        // Accepted connections are live before the batch announces them;
        // connections closed this turn are closed before it goes out.
        self.install_accepted();
        self.driver.flush();
        Ok(())
    }
}

impl<C> Core<C> {
    /// Polls, spinning first if busy-polling, parking in the driver otherwise;
    /// returns whether connections reported something.
    fn park(&mut self, st: &mut TurnState, timeout: Option<Duration>) -> Result<bool> {
        if timeout == Some(Duration::ZERO) {
            return Ok(self.poll_driver(timeout)?);
        }
        if let Some(spin) = st.busy_poll {
            let spin = timeout.map_or(spin, |t| t.min(spin));
            let start = Instant::now();
            loop {
                if self.poll_driver(Some(Duration::ZERO))? {
                    return Ok(true);
                }
                if self.remote_pending() {
                    return Ok(false);
                }
                if start.elapsed() >= spin {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        // Going idle: give back the memory of a burst.
        st.dirty.at_park(self.work.dirty_mut());
        st.done.at_park(&mut self.done);
        self.shared.publish(&self.stats());
        // The watcher's half of the park handshake (see queue.rs): a submitter
        // either sees `parked` and wakes us, or we see its command and do not block.
        self.shared.parked.store(true, Ordering::SeqCst);
        if self.remote_pending() {
            self.shared.parked.store(false, Ordering::Relaxed);
            return Ok(false);
        }
        let res = self.poll_driver(timeout);
        self.shared.parked.store(false, Ordering::Relaxed);
        Ok(res?)
    }
}
