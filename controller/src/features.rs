//! Get/Set Features values every controller kind keeps the same way (the
//! PCIe controller over vfio-user and the NVMe/TCP target's controllers).
//! Transport-specific features (queue counts, interrupt settings, keep
//! alive) stay with each controller; [`select`] applies Get Features' SEL
//! field to any of them.

use leapio_nvme::cmd::FeatureId;
use leapio_nvme::Status;

/// Composite temperature over-threshold at reset: 343 K (70 °C).
const DEFAULT_TEMP_THRESHOLD: u32 = 343;

/// The feature ID in a Get/Set Features command's CDW10.
pub fn fid(cdw10: u32) -> u8 {
    (cdw10 & 0xff) as u8
}

/// Whether a Set Features command asks to save the value (SV): nothing is
/// saveable here (Feature Identifier Not Saveable).
pub fn wants_save(cdw10: u32) -> bool {
    cdw10 & (1 << 31) != 0
}

/// Get Features' answer for `current` under the SEL field of `cdw10`:
/// current (0) and saved (2, the same: nothing is saved), default (1), or
/// supported capabilities (3: changeable, not saveable).
pub fn select(cdw10: u32, current: u32) -> Result<u32, Status> {
    match (cdw10 >> 8) & 0x7 {
        0 | 2 => Ok(current),
        1 => Ok(match fid(cdw10) {
            FeatureId::NUMBER_OF_QUEUES => current,
            FeatureId::TEMPERATURE_THRESHOLD => DEFAULT_TEMP_THRESHOLD,
            FeatureId::VOLATILE_WRITE_CACHE => 1,
            _ => 0,
        }),
        3 => Ok(1 << 2),
        _ => Err(Status::INVALID_FIELD),
    }
}

/// Set Features, Number of Queues: the (submission, completion) queue
/// counts CDW11 asks for (1-based), or Invalid Field for 65536 (NSQR or
/// NCQR of 0xFFFF).
pub fn queue_counts_requested(cdw11: u32) -> Result<(u32, u32), Status> {
    let (nsqr, ncqr) = (cdw11 & 0xffff, cdw11 >> 16);
    if nsqr == 0xffff || ncqr == 0xffff {
        return Err(Status::INVALID_FIELD);
    }
    Ok((nsqr + 1, ncqr + 1))
}

/// The feature values kept the same way by every controller.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CommonFeatures {
    arbitration: u32,
    power_state: u32,
    temp_threshold: u32,
    error_recovery: u32,
    /// What the host set: disabled, writes are made durable before they
    /// complete (FUA); enabled, the host sends flushes.
    volatile_write_cache: bool,
    write_atomicity: u32,
    async_event_config: u32,
}

impl Default for CommonFeatures {
    fn default() -> Self {
        CommonFeatures {
            arbitration: 0,
            power_state: 0,
            temp_threshold: DEFAULT_TEMP_THRESHOLD,
            error_recovery: 0,
            volatile_write_cache: true,
            write_atomicity: 0,
            async_event_config: 0,
        }
    }
}

impl CommonFeatures {
    /// The current value of `fid`, or `None` if it is not one of these.
    /// `vwc`: whether any namespace has a volatile write cache (without one
    /// the feature does not exist).
    pub fn get(&self, fid: u8, vwc: bool) -> Option<Result<u32, Status>> {
        Some(Ok(match fid {
            FeatureId::ARBITRATION => self.arbitration,
            FeatureId::POWER_MANAGEMENT => self.power_state,
            // Threshold select: only the composite sensor, over-temperature.
            FeatureId::TEMPERATURE_THRESHOLD => self.temp_threshold,
            FeatureId::ERROR_RECOVERY => self.error_recovery,
            FeatureId::VOLATILE_WRITE_CACHE if vwc => u32::from(self.volatile_write_cache),
            FeatureId::VOLATILE_WRITE_CACHE => return Some(Err(Status::INVALID_FIELD)),
            FeatureId::WRITE_ATOMICITY => self.write_atomicity,
            FeatureId::ASYNC_EVENT_CONFIG => self.async_event_config,
            _ => return None,
        }))
    }

    /// Set `fid` to CDW11 `v`; `None` if it is not one of these.
    pub fn set(&mut self, fid: u8, v: u32, vwc: bool) -> Option<Status> {
        match fid {
            FeatureId::ARBITRATION => self.arbitration = v,
            FeatureId::POWER_MANAGEMENT => {
                // Power state 0 is the only one (NPSS 0); WH bits are kept.
                if v & 0x1f != 0 {
                    return Some(Status::INVALID_FIELD);
                }
                self.power_state = v;
            }
            FeatureId::TEMPERATURE_THRESHOLD => self.temp_threshold = v & 0xffff,
            FeatureId::ERROR_RECOVERY => self.error_recovery = v,
            FeatureId::VOLATILE_WRITE_CACHE if vwc => self.volatile_write_cache = v & 1 != 0,
            FeatureId::VOLATILE_WRITE_CACHE => return Some(Status::INVALID_FIELD),
            FeatureId::WRITE_ATOMICITY => self.write_atomicity = v & 1,
            FeatureId::ASYNC_EVENT_CONFIG => self.async_event_config = v,
            _ => return None,
        }
        Some(Status::SUCCESS)
    }

    /// Volatile Write Cache: whether the host left it enabled. Disabled,
    /// every write must be durable when it completes.
    pub fn write_cache_enabled(&self) -> bool {
        self.volatile_write_cache
    }

    /// Asynchronous Event Configuration: which events the host wants.
    pub fn async_event_config(&self) -> u32 {
        self.async_event_config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_bad_ones_are_refused() {
        let mut f = CommonFeatures::default();
        assert_eq!(f.get(FeatureId::TEMPERATURE_THRESHOLD, true), Some(Ok(343)));
        assert_eq!(f.get(FeatureId::VOLATILE_WRITE_CACHE, true), Some(Ok(1)));
        assert_eq!(
            f.set(FeatureId::TEMPERATURE_THRESHOLD, 0xdead_0150, true),
            Some(Status::SUCCESS)
        );
        assert_eq!(
            f.get(FeatureId::TEMPERATURE_THRESHOLD, true),
            Some(Ok(0x150))
        );
        assert_eq!(
            f.set(FeatureId::VOLATILE_WRITE_CACHE, 0, true),
            Some(Status::SUCCESS)
        );
        assert_eq!(f.get(FeatureId::VOLATILE_WRITE_CACHE, true), Some(Ok(0)));
        // No namespace with a volatile cache: the feature does not exist.
        assert_eq!(
            f.get(FeatureId::VOLATILE_WRITE_CACHE, false),
            Some(Err(Status::INVALID_FIELD))
        );
        assert_eq!(
            f.set(FeatureId::VOLATILE_WRITE_CACHE, 1, false),
            Some(Status::INVALID_FIELD)
        );
        // Only power state 0 exists.
        assert_eq!(
            f.set(FeatureId::POWER_MANAGEMENT, 1, true),
            Some(Status::INVALID_FIELD)
        );
        assert_eq!(f.get(FeatureId::POWER_MANAGEMENT, true), Some(Ok(0)));
        assert_eq!(
            f.set(FeatureId::ASYNC_EVENT_CONFIG, 0x1ff, true),
            Some(Status::SUCCESS)
        );
        assert_eq!(f.async_event_config(), 0x1ff);
        // Not ours: the controller decides.
        assert_eq!(f.get(FeatureId::NUMBER_OF_QUEUES, true), None);
        assert_eq!(f.set(FeatureId::KEEP_ALIVE_TIMER, 5, true), None);
    }

    #[test]
    fn sel_picks_current_default_or_capabilities() {
        let tt = u32::from(FeatureId::TEMPERATURE_THRESHOLD);
        assert_eq!(select(tt, 0x150), Ok(0x150));
        assert_eq!(select(tt | (2 << 8), 0x150), Ok(0x150));
        assert_eq!(select(tt | (1 << 8), 0x150), Ok(343));
        assert_eq!(select(tt | (3 << 8), 0x150), Ok(1 << 2));
        assert_eq!(select(tt | (4 << 8), 0x150), Err(Status::INVALID_FIELD));
        let nq = u32::from(FeatureId::NUMBER_OF_QUEUES);
        assert_eq!(select(nq | (1 << 8), 0x0003_0003), Ok(0x0003_0003));
        assert!(wants_save(1 << 31) && !wants_save(0xff));
        assert_eq!(queue_counts_requested(0x0003_0001), Ok((2, 4)));
        assert_eq!(
            queue_counts_requested(0xffff_0000),
            Err(Status::INVALID_FIELD)
        );
        assert_eq!(
            queue_counts_requested(0x0000_ffff),
            Err(Status::INVALID_FIELD)
        );
        assert_eq!(fid(0x8000_0107), 7);
    }
}
