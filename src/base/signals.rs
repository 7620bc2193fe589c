//! SIGINT and SIGTERM, taken synchronously: they are blocked in every
//! thread and one thread waits for them, so no code runs in a signal
//! handler.

/// The blocked termination signals, to wait for.
pub struct Termination {
    set: libc::sigset_t,
}

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it
/// starts from now on. Call before starting threads.
pub fn block_termination() -> Termination {
    // SAFETY: plain libc calls on a sigset_t we own; sigemptyset initialises it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        Termination { set }
    }
}

impl Termination {
    /// Waits until SIGINT or SIGTERM arrives; returns its name.
    pub fn wait(&self) -> &'static str {
        let mut signal: libc::c_int = 0;
        // SAFETY: sigwait reads the initialised set and writes one int.
        let rc = unsafe { libc::sigwait(&self.set, &mut signal) };
        match (rc, signal) {
            (0, libc::SIGINT) => "SIGINT",
            (0, libc::SIGTERM) => "SIGTERM",
            _ => "a signal",
        }
    }
}
