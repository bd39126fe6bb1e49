//! Time as the kernel sees it: nanoseconds on a clock the caller owns.
//!
//! relayd maps a monotonic `Instant` onto it; netsim passes virtual time. The
//! kernel never reads a clock itself.

/// A point in time, in nanoseconds since an epoch chosen by the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    /// From milliseconds.
    pub const fn from_millis(ms: u64) -> Time {
        Time(ms * 1_000_000)
    }
    /// From seconds.
    pub const fn from_secs(s: u64) -> Time {
        Time(s * 1_000_000_000)
    }
    /// Nanoseconds since the epoch.
    pub const fn nanos(self) -> u64 {
        self.0
    }
    /// This time plus a duration in nanoseconds (saturating).
    pub const fn plus_nanos(self, ns: u64) -> Time {
        Time(self.0.saturating_add(ns))
    }
    /// Nanoseconds from `earlier` to `self` (zero if `earlier` is later).
    pub const fn since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}
