//! Deadlines: a binary min-heap of timers with back-pointers, so that a request that
//! completes early removes its timer in O(log n) instead of leaving a tombstone that
//! grows the heap under load (read_timeout on every message would otherwise keep
//! one dead entry per message until its deadline passes).

use std::time::Instant;

use crate::req::{Direction, EXPIRED};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Expired {
    pub id: u32,
    pub slot: u32,
    pub generation: u32,
    pub dir: Direction,
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    slot: u32,
    generation: u32,
    dir: Direction,
    /// Index in `heap`, or `u32::MAX` while the entry is on the free list.
    pos: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Timers {
    entries: Vec<Entry>,
    free: Vec<u32>,
    heap: Vec<u32>,
}

impl Timers {
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn insert(&mut self, at: Instant, slot: u32, generation: u32, dir: Direction) -> u32 {
        let pos = self.heap.len() as u32;
        let entry = Entry {
            at,
            slot,
            generation,
            dir,
            pos,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = entry;
                id
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        assert!(id < EXPIRED, "over 2^28 - 2 deadlines armed at once");
        self.heap.push(id);
        self.sift_up(pos as usize);
        id
    }

    pub fn remove(&mut self, id: u32) {
        let pos = self.entries[id as usize].pos as usize;
        debug_assert!(self.heap[pos] == id);
        self.remove_at(pos);
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<Instant> {
        self.heap.first().map(|&id| self.entries[id as usize].at)
    }

    /// Removes and returns the earliest timer if it is due at `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<Expired> {
        let &id = self.heap.first()?;
        let e = &self.entries[id as usize];
        if e.at > now {
            return None;
        }
        let out = Expired {
            id,
            slot: e.slot,
            generation: e.generation,
            dir: e.dir,
        };
        self.remove_at(0);
        Some(out)
    }

    fn remove_at(&mut self, pos: usize) {
        let id = self.heap.swap_remove(pos);
        self.entries[id as usize].pos = u32::MAX;
        self.free.push(id);
        if pos < self.heap.len() {
            self.entries[self.heap[pos] as usize].pos = pos as u32;
            let pos = self.sift_up(pos);
            self.sift_down(pos);
        }
    }

    fn at(&self, pos: usize) -> Instant {
        self.entries[self.heap[pos] as usize].at
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.entries[self.heap[a] as usize].pos = a as u32;
        self.entries[self.heap[b] as usize].pos = b as u32;
    }

    fn sift_up(&mut self, mut pos: usize) -> usize {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.at(pos) >= self.at(parent) {
                break;
            }
            self.swap(pos, parent);
            pos = parent;
        }
        pos
    }

    fn sift_down(&mut self, mut pos: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * pos + 1;
            if l >= n {
                return;
            }
            let r = l + 1;
            let child = if r < n && self.at(r) < self.at(l) {
                r
            } else {
                l
            };
            if self.at(child) >= self.at(pos) {
                return;
            }
            self.swap(pos, child);
            pos = child;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_and_removes_from_the_middle() {
        let base = Instant::now();
        let mut t = Timers::default();
        let mut ids = Vec::new();
        // A scrambled order of 1..=200 ms.
        for i in 0..200u64 {
            let ms = (i * 73) % 200 + 1;
            ids.push((
                ms,
                t.insert(
                    base + Duration::from_millis(ms),
                    i as u32,
                    0,
                    Direction::Read,
                ),
            ));
        }
        // Remove every third timer.
        let mut kept: Vec<u64> = Vec::new();
        for (k, &(ms, id)) in ids.iter().enumerate() {
            if k % 3 == 0 {
                t.remove(id);
            } else {
                kept.push(ms);
            }
        }
        kept.sort();
        assert_eq!(t.len(), kept.len());
        assert!(
            t.pop_expired(base).is_none(),
            "nothing is due before its deadline"
        );
        let mut got = Vec::new();
        while let Some(e) = t.pop_expired(base + Duration::from_secs(1)) {
            got.push(e.slot);
        }
        let got_ms: Vec<u64> = got.iter().map(|&s| (s as u64 * 73) % 200 + 1).collect();
        assert_eq!(got_ms, kept);
        // Ids are reused, and the heap still works after.
        let a = t.insert(base + Duration::from_millis(5), 1, 1, Direction::Write);
        let b = t.insert(base + Duration::from_millis(3), 2, 1, Direction::Write);
        assert_eq!(t.next(), Some(base + Duration::from_millis(3)));
        t.remove(b);
        assert_eq!(t.pop_expired(base + Duration::from_secs(1)).unwrap().id, a);
        assert_eq!(t.len(), 0);
    }
}
