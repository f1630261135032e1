//! Telling systemd how the daemon is doing (the unit is `Type=notify`): READY=1 once the store
//! is open and the probes attached, STATUS= lines, and WATCHDOG=1 from the main loop, so a
//! daemon stuck in a blocking read is restarted (and the restart restores). Outside systemd (no
//! NOTIFY_SOCKET) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

/// The daemon's line to systemd.
pub struct Systemd {
    watchdog: Option<Duration>,
}

impl Systemd {
    /// Reads what systemd asked for (`WatchdogSec=` arrives as WATCHDOG_USEC).
    pub fn new() -> Self {
        let mut usec = 0;
        let watchdog =
            sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec));
        Self { watchdog }
    }

    /// How often to feed the watchdog: twice per period, as sd_watchdog_enabled(3) advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|period| period / 2)
    }

    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        send(&[NotifyState::Status(status)]);
    }

    /// The main loop went round: keep the watchdog from firing.
    pub fn alive(&self) {
        send(&[NotifyState::Watchdog]);
    }

    pub fn stopping(&self) {
        send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: restoring and flushing"),
        ]);
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!("sd_notify: {e}");
    }
}
