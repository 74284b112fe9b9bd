//! Commit-ticket parking, the actor's "persist before relay" bookkeeping, as plain data.
//!
//! Every store command the actor queues takes the next ticket (`issue`). Anything that
//! reveals document state is parked behind the last ticket issued, and released, in order,
//! once the store acknowledges that ticket (`acknowledge`, then `pop_released`). With nothing
//! outstanding, `park` hands the item straight back: it may go out at once.
//!
//! No runtime, no IO, no store: the actor reads the store's acknowledgements and delivers
//! what is released; this module only decides what waits and for which ticket.

use std::collections::VecDeque;

#[derive(Debug)]
pub(crate) struct Parking<T> {
    /// Tickets issued: store commands queued.
    issued: u64,
    /// Tickets the store acknowledged, as last told.
    committed: u64,
    /// Items in ticket order, each with the ticket it waits for.
    parked: VecDeque<(u64, T)>,
}

impl<T> Default for Parking<T> {
    fn default() -> Self {
        Parking { issued: 0, committed: 0, parked: VecDeque::new() }
    }
}

impl<T> Parking<T> {
    /// The ticket the next store command will have.
    pub(crate) fn next_ticket(&self) -> u64 {
        self.issued + 1
    }

    /// Records that the command with `next_ticket()` was queued (or failed to be: the actor
    /// then fails the document, and nothing waits for it).
    pub(crate) fn issue(&mut self) -> u64 {
        self.issued += 1;
        self.issued
    }

    pub(crate) fn issued(&self) -> u64 {
        self.issued
    }

    pub(crate) fn committed(&self) -> u64 {
        self.committed
    }

    /// Whether a ticket issued is not acknowledged yet.
    pub(crate) fn outstanding(&self) -> bool {
        self.committed < self.issued
    }

    /// Nothing is parked.
    pub(crate) fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    /// Parks `item` behind every ticket issued so far, or hands it back when all of them
    /// are acknowledged (it may go out now).
    pub(crate) fn park(&mut self, item: T) -> Option<T> {
        if self.outstanding() {
            self.parked.push_back((self.issued, item));
            None
        } else {
            Some(item)
        }
    }

    /// The store acknowledged every ticket up to `ticket` (never beyond what was issued;
    /// an older acknowledgement changes nothing).
    pub(crate) fn acknowledge(&mut self, ticket: u64) {
        self.committed = self.committed.max(ticket.min(self.issued));
    }

    /// The next item whose ticket is acknowledged, in the order they were parked.
    pub(crate) fn pop_released(&mut self) -> Option<T> {
        if self.parked.front().is_some_and(|(t, _)| *t <= self.committed) {
            self.parked.pop_front().map(|(_, item)| item)
        } else {
            None
        }
    }

    /// The ticket whose acknowledgement the actor must be woken for: the first one something
    /// is parked behind; else the last one issued when `wants_all` (the document waits to
    /// unload or shut down); else none (`u64::MAX`: relays need no wakeup).
    pub(crate) fn wake_target(&self, wants_all: bool) -> u64 {
        match self.parked.front() {
            Some((ticket, _)) => *ticket,
            None if wants_all => self.issued,
            None => u64::MAX,
        }
    }

    /// A commit failed: nothing parked may go out. Drops it all and counts every ticket as
    /// settled; returns what was dropped.
    pub(crate) fn fail(&mut self) -> Vec<T> {
        self.committed = self.issued;
        self.parked.drain(..).map(|(_, item)| item).collect()
    }

    /// The parked items, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.parked.iter().map(|(_, item)| item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(p: &mut Parking<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| p.pop_released()).collect()
    }

    #[test]
    fn with_nothing_outstanding_an_item_goes_out_at_once() {
        let mut p = Parking::default();
        assert_eq!(p.park("a"), Some("a"));
        p.issue();
        p.acknowledge(1);
        assert_eq!(p.park("b"), Some("b"));
        assert!(p.is_empty());
    }

    #[test]
    fn items_wait_for_the_last_ticket_issued_before_them_and_leave_in_order() {
        let mut p = Parking::default();
        p.issue();
        assert_eq!(p.park("after 1"), None);
        p.issue();
        p.issue();
        assert_eq!(p.park("after 3"), None);
        assert_eq!(p.park("also after 3"), None);
        assert_eq!(p.wake_target(false), 1);
        p.acknowledge(2);
        assert_eq!(released(&mut p), ["after 1"]);
        assert_eq!(p.wake_target(false), 3);
        assert!(p.outstanding());
        p.acknowledge(3);
        assert_eq!(released(&mut p), ["after 3", "also after 3"]);
        assert!(!p.outstanding());
    }

    #[test]
    fn an_acknowledgement_never_runs_ahead_of_what_was_issued_or_back() {
        let mut p: Parking<&str> = Parking::default();
        p.issue();
        p.acknowledge(5);
        assert_eq!(p.committed(), 1);
        p.issue();
        p.issue();
        p.acknowledge(3);
        p.acknowledge(2);
        assert_eq!(p.committed(), 3);
    }

    #[test]
    fn the_actor_is_woken_for_the_first_parked_ticket_or_only_when_it_wants_all() {
        let mut p: Parking<&str> = Parking::default();
        p.issue();
        p.issue();
        assert_eq!(p.wake_target(false), u64::MAX);
        assert_eq!(p.wake_target(true), 2);
        p.park("x");
        assert_eq!(p.wake_target(false), 2);
        assert_eq!(p.next_ticket(), 3);
    }

    #[test]
    fn a_failed_commit_drops_everything_parked_and_settles_every_ticket() {
        let mut p: Parking<&str> = Parking::default();
        p.issue();
        p.park("a");
        p.issue();
        p.park("b");
        assert_eq!(p.iter().copied().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(p.fail(), ["a", "b"]);
        assert!(p.is_empty() && !p.outstanding());
        assert_eq!(p.pop_released(), None);
        assert_eq!(p.park("c"), Some("c"));
    }
}
