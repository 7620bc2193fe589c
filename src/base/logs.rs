//! Log lines that strangers can cause (refused connections, forged or
//! stale datagrams, unknown peers) go out at most once a second per kind,
//! so that no flood can fill the journal. The line that goes out says how
//! many like it were left out before it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One kind of log line, throttled to one a second.
pub struct Throttle {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            state: Mutex::new((None, 0)),
        }
    }

    /// Logs the line `message` makes at `level`, unless a line of this
    /// kind went out less than a second ago (then it is only counted).
    pub fn log(&self, level: log::Level, message: impl FnOnce() -> String) {
        if !log::log_enabled!(level) {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let (last, left_out) = &mut *state;
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            *left_out += 1;
            return;
        }
        *last = Some(Instant::now());
        let left_out = std::mem::take(left_out);
        drop(state);
        match left_out {
            0 => log::log!(level, "{}", message()),
            n => log::log!(level, "{} ({n} more like it left out)", message()),
        }
    }
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::new()
    }
}
