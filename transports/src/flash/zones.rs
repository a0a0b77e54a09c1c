//! The zone state machine of a zoned namespace (the NVMe Zoned Namespace
//! Command Set's, without Read Only and Offline): write pointers, states,
//! the open and active resources, and which statuses refuse what. It knows
//! nothing of the media: the backend asks it first, then programs, pads or
//! erases what it says.
//!
//! Zone-relative block numbers throughout (`0..capacity`).

use crate::{ZoneAction, ZoneError, ZoneState};

/// One zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Zone {
    /// Next block to write, relative to the zone's start.
    pub wp: u64,
    /// State.
    pub state: ZoneState,
    /// Made full by the backend (recovery), not by writes or Finish.
    pub finished_by_backend: bool,
}

impl Zone {
    const EMPTY: Zone = Zone {
        wp: 0,
        state: ZoneState::Empty,
        finished_by_backend: false,
    };

    fn is_open(&self) -> bool {
        matches!(
            self.state,
            ZoneState::ImplicitlyOpen | ZoneState::ExplicitlyOpen
        )
    }

    fn is_active(&self) -> bool {
        self.is_open() || self.state == ZoneState::Closed
    }
}

/// What the media must do after an action on one zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Only the state changed.
    None,
    /// Program blocks `from..capacity` (Finish of a partly written zone).
    Pad {
        /// Zone index.
        zone: u64,
        /// The write pointer before the finish.
        from: u64,
    },
    /// Erase the zone (Reset of a written zone).
    Erase {
        /// Zone index.
        zone: u64,
    },
}

/// Every zone of a namespace and the resources in use.
#[derive(Clone, Debug)]
pub struct Zones {
    capacity: u64,
    max_open: u32,
    max_active: u32,
    zones: Vec<Zone>,
    open: u32,
    active: u32,
}

impl Zones {
    /// `count` empty zones of `capacity` blocks; at most `max_open` open
    /// and `max_active` active (open or closed) at once.
    pub fn new(count: u64, capacity: u64, max_open: u32, max_active: u32) -> Zones {
        Zones {
            capacity,
            max_open,
            max_active,
            zones: vec![Zone::EMPTY; usize::try_from(count).unwrap_or(0)],
            open: 0,
            active: 0,
        }
    }

    /// Zones found on the media after a restart: `wp` is each zone's write
    /// pointer, `None` when the media is inconsistent (that zone becomes
    /// full, finished by the backend). Partly written zones come back
    /// closed, as after a power cycle; they count as active even beyond
    /// the limit (the host has to finish or reset some before opening more).
    pub fn recovered(wps: &[Option<u64>], capacity: u64, max_open: u32, max_active: u32) -> Zones {
        let mut z = Zones::new(0, capacity, max_open, max_active);
        for wp in wps {
            let zone = match *wp {
                Some(0) => Zone::EMPTY,
                Some(wp) if wp < capacity => {
                    z.active += 1;
                    Zone {
                        wp,
                        state: ZoneState::Closed,
                        finished_by_backend: false,
                    }
                }
                Some(_) => Zone {
                    wp: capacity,
                    state: ZoneState::Full,
                    finished_by_backend: false,
                },
                None => Zone {
                    wp: capacity,
                    state: ZoneState::Full,
                    finished_by_backend: true,
                },
            };
            z.zones.push(zone);
        }
        z
    }

    /// Number of zones.
    pub fn count(&self) -> u64 {
        self.zones.len() as u64
    }

    /// Writable blocks per zone.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Zone `i` (`None` past the end).
    pub fn get(&self, i: u64) -> Option<Zone> {
        self.zones.get(usize::try_from(i).ok()?).copied()
    }

    /// Zones open and active now.
    pub fn in_use(&self) -> (u32, u32) {
        (self.open, self.active)
    }

    fn zone_mut(&mut self, i: u64) -> Option<&mut Zone> {
        self.zones.get_mut(usize::try_from(i).ok()?)
    }

    /// Can zone `i` become open (and active, when empty)?
    fn can_open(&self, z: &Zone) -> Result<(), ZoneError> {
        if z.is_open() {
            return Ok(());
        }
        if z.state == ZoneState::Empty && self.active >= self.max_active {
            return Err(ZoneError::TooManyActive);
        }
        if self.open >= self.max_open {
            return Err(ZoneError::TooManyOpen);
        }
        Ok(())
    }

    /// Move zone `i` to `to`, keeping the counts right.
    fn set(&mut self, i: u64, to: ZoneState, wp: u64) {
        let Some(z) = self.get(i) else { return };
        let (was_open, was_active) = (z.is_open(), z.is_active());
        let next = Zone {
            wp,
            state: to,
            finished_by_backend: false,
        };
        let (open, active) = (next.is_open(), next.is_active());
        // (The counts always include the zone's old state: no underflow.)
        self.open = (self.open + u32::from(open)).saturating_sub(u32::from(was_open));
        self.active = (self.active + u32::from(active)).saturating_sub(u32::from(was_active));
        if let Some(slot) = self.zone_mut(i) {
            *slot = next;
        }
    }

    /// A write of `n` blocks to zone `i` at zone-relative block `at`
    /// (`None`: a Zone Append, at the write pointer). Checks it, opens the
    /// zone implicitly when needed, and moves the write pointer; returns
    /// where the data goes (zone-relative).
    pub fn write(&mut self, i: u64, at: Option<u64>, n: u64) -> Result<u64, ZoneError> {
        let z = self.get(i).ok_or(ZoneError::NotZoneStart)?;
        if z.state == ZoneState::Full {
            return Err(ZoneError::Full);
        }
        if at.is_some_and(|at| at != z.wp) {
            return Err(ZoneError::InvalidWrite);
        }
        if z.wp.checked_add(n).is_none_or(|end| end > self.capacity) {
            return Err(ZoneError::Boundary);
        }
        if n == 0 {
            return Ok(z.wp);
        }
        self.can_open(&z)?;
        let wp = z.wp + n;
        let state = if wp == self.capacity {
            ZoneState::Full
        } else if z.state == ZoneState::ExplicitlyOpen {
            ZoneState::ExplicitlyOpen
        } else {
            ZoneState::ImplicitlyOpen
        };
        self.set(i, state, wp);
        Ok(z.wp)
    }

    /// A zone action on zone `i`; returns what the media must do.
    pub fn action(&mut self, i: u64, action: ZoneAction) -> Result<Effect, ZoneError> {
        let z = self.get(i).ok_or(ZoneError::NotZoneStart)?;
        use ZoneState::*;
        match action {
            ZoneAction::Open => match z.state {
                ExplicitlyOpen => Ok(Effect::None),
                Empty | ImplicitlyOpen | Closed => {
                    self.can_open(&z)?;
                    self.set(i, ExplicitlyOpen, z.wp);
                    Ok(Effect::None)
                }
                Full => Err(ZoneError::InvalidTransition),
            },
            ZoneAction::Close => match z.state {
                Closed => Ok(Effect::None),
                ImplicitlyOpen | ExplicitlyOpen => {
                    // An open zone with nothing written becomes empty.
                    let to = if z.wp == 0 { Empty } else { Closed };
                    self.set(i, to, z.wp);
                    Ok(Effect::None)
                }
                Empty | Full => Err(ZoneError::InvalidTransition),
            },
            ZoneAction::Finish => match z.state {
                Full => Ok(Effect::None),
                Empty | ImplicitlyOpen | ExplicitlyOpen | Closed => {
                    self.set(i, Full, self.capacity);
                    Ok(Effect::Pad {
                        zone: i,
                        from: z.wp,
                    })
                }
            },
            ZoneAction::Reset => {
                self.set(i, Empty, 0);
                Ok(if z.wp == 0 {
                    Effect::None
                } else {
                    Effect::Erase { zone: i }
                })
            }
        }
    }

    /// The zones a Select All action applies to: Open: closed zones;
    /// Close: open ones; Finish: open and closed; Reset: open, closed, full.
    pub fn select_all(&self, action: ZoneAction) -> Vec<u64> {
        use ZoneState::*;
        let applies = |s: ZoneState| match action {
            ZoneAction::Open => s == Closed,
            ZoneAction::Close => matches!(s, ImplicitlyOpen | ExplicitlyOpen),
            ZoneAction::Finish => matches!(s, ImplicitlyOpen | ExplicitlyOpen | Closed),
            ZoneAction::Reset => s != Empty,
        };
        (0..self.count())
            .filter(|&i| self.get(i).is_some_and(|z| applies(z.state)))
            .collect()
    }

    /// Open every closed zone, or none if they do not all fit
    /// (Too Many Open Zones).
    pub fn open_all(&mut self) -> Result<(), ZoneError> {
        let closed = self.select_all(ZoneAction::Open);
        let wanted = u32::try_from(closed.len()).unwrap_or(u32::MAX);
        if self.open.saturating_add(wanted) > self.max_open {
            return Err(ZoneError::TooManyOpen);
        }
        for i in closed {
            self.action(i, ZoneAction::Open)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ZoneState::*;

    fn zones() -> Zones {
        // 8 zones of 16 blocks, 2 open and 3 active at most.
        Zones::new(8, 16, 2, 3)
    }

    fn state(z: &Zones, i: u64) -> ZoneState {
        z.get(i).unwrap().state
    }

    #[test]
    fn writes_follow_the_write_pointer() {
        let mut z = zones();
        assert_eq!(z.write(0, Some(1), 1), Err(ZoneError::InvalidWrite));
        assert_eq!(state(&z, 0), Empty);
        assert_eq!(z.write(0, Some(0), 4), Ok(0));
        assert_eq!((state(&z, 0), z.get(0).unwrap().wp), (ImplicitlyOpen, 4));
        assert_eq!(z.write(0, Some(0), 1), Err(ZoneError::InvalidWrite));
        assert_eq!(z.write(0, Some(4), 13), Err(ZoneError::Boundary));
        assert_eq!(z.write(0, None, 2), Ok(4), "append returns where it wrote");
        assert_eq!(z.write(0, Some(6), 10), Ok(6));
        assert_eq!(state(&z, 0), Full);
        assert_eq!(z.in_use(), (0, 0), "a full zone holds no resources");
        assert_eq!(z.write(0, None, 1), Err(ZoneError::Full));
        assert_eq!(z.write(0, Some(16), 1), Err(ZoneError::Full));
        assert_eq!(z.write(99, Some(0), 1), Err(ZoneError::NotZoneStart));
    }

    #[test]
    fn open_and_active_limits() {
        let mut z = zones();
        z.write(0, Some(0), 1).unwrap();
        z.action(1, ZoneAction::Open).unwrap();
        assert_eq!(z.in_use(), (2, 2));
        assert_eq!(z.write(2, Some(0), 1), Err(ZoneError::TooManyOpen));
        assert_eq!(z.action(2, ZoneAction::Open), Err(ZoneError::TooManyOpen));
        // Closing one frees an open resource, not an active one.
        z.action(0, ZoneAction::Close).unwrap();
        assert_eq!((state(&z, 0), z.in_use()), (Closed, (1, 1 + 1)));
        z.write(2, Some(0), 1).unwrap();
        assert_eq!(z.in_use(), (2, 3));
        z.action(2, ZoneAction::Close).unwrap();
        // Three active: a fourth zone cannot even be opened.
        assert_eq!(z.action(3, ZoneAction::Open), Err(ZoneError::TooManyActive));
        assert_eq!(z.write(3, Some(0), 1), Err(ZoneError::TooManyActive));
        // A closed zone can be written again (opened implicitly).
        z.write(0, Some(1), 1).unwrap();
        assert_eq!((state(&z, 0), z.in_use()), (ImplicitlyOpen, (2, 3)));
        // Open all closed zones: zone 2 does not fit.
        z.action(1, ZoneAction::Close).unwrap();
        assert_eq!(
            state(&z, 1),
            Empty,
            "an open zone with no data closes empty"
        );
        assert_eq!(z.open_all(), Ok(()));
        assert_eq!(state(&z, 2), ExplicitlyOpen);
    }

    #[test]
    fn transitions() {
        let mut z = zones();
        assert_eq!(
            z.action(0, ZoneAction::Close),
            Err(ZoneError::InvalidTransition)
        );
        assert_eq!(z.action(0, ZoneAction::Reset), Ok(Effect::None));
        z.write(0, Some(0), 3).unwrap();
        assert_eq!(
            z.action(0, ZoneAction::Finish),
            Ok(Effect::Pad { zone: 0, from: 3 })
        );
        assert_eq!((state(&z, 0), z.get(0).unwrap().wp), (Full, 16));
        assert_eq!(z.action(0, ZoneAction::Finish), Ok(Effect::None));
        assert_eq!(
            z.action(0, ZoneAction::Open),
            Err(ZoneError::InvalidTransition)
        );
        assert_eq!(
            z.action(0, ZoneAction::Close),
            Err(ZoneError::InvalidTransition)
        );
        assert_eq!(
            z.action(0, ZoneAction::Reset),
            Ok(Effect::Erase { zone: 0 })
        );
        assert_eq!((state(&z, 0), z.in_use()), (Empty, (0, 0)));
        // Explicitly open stays explicitly open across writes.
        z.write(3, Some(0), 16).unwrap();
        z.action(1, ZoneAction::Open).unwrap();
        z.write(1, Some(0), 2).unwrap();
        assert_eq!(state(&z, 1), ExplicitlyOpen);
        z.write(2, Some(0), 2).unwrap();
        assert_eq!(z.select_all(ZoneAction::Close), vec![1, 2]);
        assert_eq!(z.select_all(ZoneAction::Reset), vec![1, 2, 3]);
        assert_eq!(z.select_all(ZoneAction::Finish), vec![1, 2]);
        assert_eq!(z.select_all(ZoneAction::Open), Vec::<u64>::new());
    }

    #[test]
    fn recovery_closes_partly_written_zones() {
        let z = Zones::recovered(&[Some(0), Some(5), Some(16), None], 16, 2, 3);
        assert_eq!(
            [state(&z, 0), state(&z, 1), state(&z, 2), state(&z, 3)],
            [Empty, Closed, Full, Full]
        );
        assert!(z.get(3).unwrap().finished_by_backend);
        assert_eq!(z.get(3).unwrap().wp, 16);
        assert_eq!(z.in_use(), (0, 1));
    }
}
