//! Events the forecaster is told about: campaigns, launches, seasons.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};

/// An event with a kind and an intensity over a span of time, for one customer or for all.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Event {
    /// The customer it concerns; `None` for a global event.
    pub customer: Option<u64>,
    /// A caller-defined kind (campaign, launch, season...), kept for the caller's bookkeeping.
    pub kind: u32,
    /// How strong: summed over the events active at a tick into the `event_customer` and
    /// `event_global` features. Finite; 1.0 is "a typical campaign".
    pub intensity: f32,
    /// Start, ns on the engine's clock (inclusive).
    pub start_ns: u64,
    /// End, ns (exclusive); after `start_ns`.
    pub end_ns: u64,
}

/// The events known to an engine, by id.
#[derive(Clone, Debug, Default)]
pub struct EventBook {
    events: BTreeMap<u64, Event>,
    next_id: u64,
}

impl EventBook {
    /// Most events held at once.
    pub const MAX_EVENTS: usize = 1 << 20;

    /// Adds an event and returns its id.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty span, a non-finite intensity, a full book, or no
    /// id left (the last one given was `u64::MAX`).
    pub fn add(&mut self, e: Event) -> Result<u64> {
        if e.end_ns <= e.start_ns {
            return Err(Error::invalid(format!(
                "event: end {} must be after start {}",
                e.end_ns, e.start_ns
            )));
        }
        if !e.intensity.is_finite() {
            return Err(Error::invalid("event: intensity must be finite"));
        }
        if self.events.len() >= Self::MAX_EVENTS {
            return Err(Error::invalid(format!(
                "event: at most {} events at once; remove old ones",
                Self::MAX_EVENTS
            )));
        }
        let id = self.next_id.checked_add(1).ok_or_else(|| {
            Error::invalid("event: no event id left (the last one given was u64::MAX)")
        })?;
        self.next_id = id;
        self.events.insert(id, e);
        Ok(id)
    }

    /// The id the last added event got (0: none yet).
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    pub(crate) fn set_next_id(&mut self, id: u64) {
        self.next_id = id;
    }

    /// Puts back an event under its id (loading a saved book), within [`Self::MAX_EVENTS`].
    pub(crate) fn insert(&mut self, id: u64, e: Event) -> Result<()> {
        if e.end_ns <= e.start_ns || !e.intensity.is_finite() {
            return Err(Error::invalid(format!(
                "event {id}: empty span or bad intensity"
            )));
        }
        if self.events.len() >= Self::MAX_EVENTS {
            return Err(Error::invalid(format!(
                "more than {} events",
                Self::MAX_EVENTS
            )));
        }
        if self.events.insert(id, e).is_some() {
            return Err(Error::invalid(format!("event {id} listed twice")));
        }
        Ok(())
    }

    /// Removes an event.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when no event has this id.
    pub fn remove(&mut self, id: u64) -> Result<Event> {
        self.events
            .remove(&id)
            .ok_or_else(|| Error::invalid(format!("event: no event with id {id}")))
    }

    /// Drops every event that ended at or before `now_ns`.
    pub fn expire(&mut self, now_ns: u64) {
        self.events.retain(|_, e| e.end_ns > now_ns);
    }

    /// The events held, by id.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Event)> {
        self.events.iter().map(|(k, v)| (*k, v))
    }

    /// Number of events held.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no events are held.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The summed intensity of global events active at `now_ns`, and of each customer's own.
    pub fn active_at(&self, now_ns: u64) -> (f32, HashMap<u64, f32>) {
        let mut global = 0.0;
        let mut per = HashMap::new();
        for e in self.events.values() {
            if e.start_ns <= now_ns && now_ns < e.end_ns {
                match e.customer {
                    None => global += e.intensity,
                    Some(c) => *per.entry(c).or_insert(0.0) += e.intensity,
                }
            }
        }
        (global, per)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_sums_and_bad_events() {
        let mut b = EventBook::default();
        let ev = |customer, s, e, i| Event {
            customer,
            kind: 1,
            intensity: i,
            start_ns: s,
            end_ns: e,
        };
        let a = b.add(ev(None, 10, 20, 1.0)).unwrap();
        b.add(ev(Some(7), 15, 30, 2.0)).unwrap();
        b.add(ev(Some(7), 0, 16, 0.5)).unwrap();
        let (g, per) = b.active_at(15);
        assert_eq!(g, 1.0);
        assert_eq!(per[&7], 2.5);
        let (g, per) = b.active_at(20);
        assert_eq!(g, 0.0);
        assert_eq!(per[&7], 2.0);
        assert!(b.add(ev(None, 5, 5, 1.0)).is_err());
        assert!(b.add(ev(None, 5, 6, f32::NAN)).is_err());
        b.remove(a).unwrap();
        assert!(b.remove(a).is_err());
        b.expire(30);
        assert!(b.is_empty());
    }
}
