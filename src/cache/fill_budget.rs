//! A bound on the bodies being collected for storage.
//!
//! A miss collects its whole body before the response is stored, so without a bound a burst of
//! concurrent misses holds many bodies at once on top of the cache: with a 4 MiB cache, a
//! hundred 1 MiB misses in flight hold 100 MiB. The [`FillBudget`] caps the bytes all fills hold
//! together (the cache's own size by default). A fill that would go past it stops collecting:
//! its client still gets the whole response, streamed through, but it is not stored.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes that fills in flight may hold together.
#[derive(Debug)]
pub struct FillBudget {
    limit: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
}

impl FillBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> FillBudget {
        FillBudget {
            limit,
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Takes `bytes` from the budget for `reservation`; `false` (nothing taken) when they would
    /// not fit.
    pub fn take(&'static self, reservation: &mut Reservation, bytes: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            });
        let Ok(before) = taken else { return false };
        self.peak.fetch_max(before + bytes, Ordering::Relaxed);
        reservation.budget = Some(self);
        reservation.bytes += bytes;
        true
    }

    /// Bytes held by fills now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The most bytes fills held at once, since start.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

/// Bytes one fill holds; given back when it is dropped (stored, abandoned or failed).
#[derive(Debug, Default)]
pub struct Reservation {
    budget: Option<&'static FillBudget>,
    bytes: usize,
}

impl Reservation {
    /// Gives the bytes back now.
    pub fn release(&mut self) {
        if let Some(budget) = self.budget {
            budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
        self.bytes = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_share_the_budget_and_give_it_back() {
        let budget: &'static FillBudget = Box::leak(Box::new(FillBudget::new(100)));
        let mut first = Reservation::default();
        let mut second = Reservation::default();
        assert!(budget.take(&mut first, 60));
        assert!(!budget.take(&mut second, 50), "over the budget");
        assert!(budget.take(&mut second, 40));
        assert_eq!(budget.used(), 100);
        drop(first);
        assert_eq!(budget.used(), 40);
        second.release();
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.peak(), 100);
    }
}
