//! The processes the daemon starts (Nix commands): their pipes are read
//! and written with deadlines, and a child is killed and reaped when it is
//! dropped, so that a hung Nix (a stopped nix-daemon, say) costs a request
//! a timeout, never a worker thread or a zombie.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{self, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Bytes read from a child's stdout at once into the buffer that small
/// reads (the serve protocol's numbers and strings) are served from.
const BUFFER: usize = 64 * 1024;

/// What a child said on stderr, at most, for error messages.
const STDERR_MAX: usize = 4096;

/// A running child with piped stdout and stderr (and stdin, if asked).
pub struct Child {
    process: process::Child,
    stdin: Option<process::ChildStdin>,
    stdout: process::ChildStdout,
    stderr: process::ChildStderr,
    /// What it is, for messages: `nix-store --serve`.
    what: String,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    reaped: bool,
}

impl Child {
    /// Starts `command` with its stdout and stderr piped to us, and its
    /// stdin too when `stdin` is true (else it reads nothing).
    pub fn spawn(mut command: Command, stdin: bool) -> io::Result<Child> {
        let what = describe(&command);
        command
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process = command
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {what}: {e}")))?;
        let (stdin, stdout, stderr) = (
            process.stdin.take(),
            process.stdout.take(),
            process.stderr.take(),
        );
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
            let _ = process.kill();
            let _ = process.wait();
            return Err(io::Error::other(format!("{what} has no pipes")));
        };
        set_nonblocking(&stdout)?;
        set_nonblocking(&stderr)?;
        widen_pipe(&stdout);
        if let Some(stdin) = &stdin {
            set_nonblocking(stdin)?;
        }
        Ok(Child {
            process,
            stdin,
            stdout,
            stderr,
            what,
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            reaped: false,
        })
    }

    /// What it is, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// Reads what stdout has, at most `out.len()` bytes, waiting for some
    /// until `deadline`; 0 at the end of the output.
    pub fn read_by(&mut self, out: &mut [u8], deadline: Instant) -> io::Result<usize> {
        if self.start < self.end {
            let n = out.len().min(self.end - self.start);
            out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            return Ok(n);
        }
        // Large reads (a NAR) go straight to the caller's buffer.
        read_by(&mut self.stdout, out, deadline, &self.what)
    }

    /// Fills `out` from stdout by `deadline`; an error if the output ends
    /// first.
    pub fn read_exact_by(&mut self, out: &mut [u8], deadline: Instant) -> io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            if self.start == self.end {
                let n = read_by(&mut self.stdout, &mut self.buf, deadline, &self.what)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} ended its output early", self.what),
                    ));
                }
                (self.start, self.end) = (0, n);
            }
            let n = (out.len() - done).min(self.end - self.start);
            out[done..done + n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            done += n;
        }
        Ok(())
    }

    /// Writes all of `data` to stdin by `deadline`.
    pub fn write_all_by(&mut self, mut data: &[u8], deadline: Instant) -> io::Result<()> {
        let what = &self.what;
        let stdin = (self.stdin.as_mut()).ok_or_else(|| io::Error::other("no stdin"))?;
        while !data.is_empty() {
            match stdin.write(data) {
                Ok(0) => return Err(io::Error::other(format!("{what} closed its input"))),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_for(stdin.as_raw_fd(), libc::POLLOUT, deadline, what)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// What the child has written to stderr so far (trimmed, at most a few
    /// KiB), without waiting.
    pub fn stderr_text(&mut self) -> String {
        let mut text = vec![0u8; STDERR_MAX];
        let mut len = 0;
        while len < text.len() {
            match self.stderr.read(&mut text[len..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
        }
        String::from_utf8_lossy(&text[..len]).trim().to_owned()
    }

    /// Waits for the child to exit, at most until `deadline` (then it is
    /// killed): its exit status.
    pub fn wait_by(&mut self, deadline: Instant) -> io::Result<ExitStatus> {
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.process.try_wait()? {
                self.reaped = true;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(timed_out(&self.what));
            }
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Kills and reaps the child (a no-op once it is reaped).
    pub fn kill(&mut self) {
        if !self.reaped {
            let _ = self.process.kill();
            let _ = self.process.wait();
            self.reaped = true;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The output of a one-shot command that must be done by `deadline`:
/// stdout, and an error naming the command with its stderr when it fails,
/// times out or cannot be started. The child is killed and reaped at the
/// deadline.
pub fn output_by(command: Command, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut child = Child::spawn(command, false)?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut chunk = vec![0u8; BUFFER];
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let mut fds = [
            poll_fd(&child.stdout, out_open),
            poll_fd(&child.stderr, err_open),
        ];
        poll(&mut fds, deadline, &child.what)?;
        if out_open && fds[0].revents != 0 {
            match child.stdout.read(&mut chunk) {
                Ok(0) => out_open = false,
                Ok(n) => stdout.extend_from_slice(&chunk[..n]),
                Err(e) if is_retry(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if err_open && fds[1].revents != 0 {
            match child.stderr.read(&mut chunk) {
                Ok(0) => err_open = false,
                Ok(n) if stderr.len() < STDERR_MAX => stderr.extend_from_slice(&chunk[..n]),
                Ok(_) => {}
                Err(e) if is_retry(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let status = child.wait_by(deadline)?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "{} failed ({status}): {}",
            child.what,
            String::from_utf8_lossy(&stderr).trim()
        )));
    }
    Ok(stdout)
}

/// `program arg…` of a command, for messages.
fn describe(command: &Command) -> String {
    let mut what = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args().take(2) {
        what.push(' ');
        what.push_str(&arg.to_string_lossy());
    }
    what
}

fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks for a 1 MiB stdout pipe (Linux; the default is 64 KiB), so that a
/// NAR is copied from it to a socket in large pieces. Failing that, the
/// default does, more slowly.
fn widen_pipe(pipe: &impl AsRawFd) {
    // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ takes an int.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} did not answer in time"),
    )
}

/// Reads from a non-blocking pipe, waiting for data until `deadline`.
fn read_by<R: Read + AsRawFd>(
    pipe: &mut R,
    out: &mut [u8],
    deadline: Instant,
    what: &str,
) -> io::Result<usize> {
    loop {
        match pipe.read(out) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_for(pipe.as_raw_fd(), libc::POLLIN, deadline, what)?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn poll_fd(fd: &impl AsRawFd, open: bool) -> libc::pollfd {
    libc::pollfd {
        // A negative descriptor is ignored by poll.
        fd: if open { fd.as_raw_fd() } else { -1 },
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Waits until `fd` is ready for `events` (or has hung up), or fails at
/// `deadline`.
fn wait_for(fd: RawFd, events: libc::c_short, deadline: Instant, what: &str) -> io::Result<()> {
    let mut fds = [libc::pollfd {
        fd,
        events,
        revents: 0,
    }];
    poll(&mut fds, deadline, what)
}

/// `poll(2)` until one of `fds` is ready, or fails at `deadline`.
fn poll(fds: &mut [libc::pollfd], deadline: Instant, what: &str) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(what));
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: `fds` is a valid slice of pollfd for its length.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        match rc {
            0 => continue,
            n if n > 0 => return Ok(()),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}
