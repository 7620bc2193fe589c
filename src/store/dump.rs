//! The NAR of a store path: a `nix-store --dump` child whose stdout is read
//! as it comes. The child is killed and reaped when the reader is dropped,
//! and a dump that exits non-zero is an error, never a quiet end of stream.
//! (The HTTP reply checks the length against the NAR size.)

use std::io::{self, Read};
use std::process::{Child, ChildStdout, Command, Stdio};

use crate::narinfo::STORE_DIR;

pub struct Dump {
    child: Child,
    stdout: ChildStdout,
    path: String,
    read: u64,
    reaped: bool,
}

impl Dump {
    /// Starts `nix-store --dump` for the basename `path`.
    pub fn start(path: &str) -> io::Result<Dump> {
        let full = format!("{STORE_DIR}/{path}");
        let mut child = Command::new("nix-store")
            .arg("--dump")
            .arg(&full)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("nix-store --dump has no stdout"))?;
        widen_pipe(&stdout);
        log::debug!("dump {full}: started pid {}", child.id());
        Ok(Dump {
            child,
            stdout,
            path: full,
            read: 0,
            reaped: false,
        })
    }

    /// Waits for the child after its stdout ended; an error unless it
    /// exited 0.
    fn finish(&mut self) -> io::Result<()> {
        let mut stderr = String::new();
        if let Some(e) = self.child.stderr.take() {
            let _ = e.take(4096).read_to_string(&mut stderr);
        }
        let status = self.child.wait()?;
        self.reaped = true;
        if !status.success() {
            return Err(io::Error::other(format!(
                "nix-store --dump {} failed ({status}): {}",
                self.path,
                stderr.trim()
            )));
        }
        Ok(())
    }
}

/// Asks for a 1 MiB pipe (Linux; the default is 64 KiB), so that the dump
/// and the socket are copied in large pieces. Failing that, the default
/// does, more slowly.
fn widen_pipe(pipe: &ChildStdout) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ takes an int.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
}

impl Read for Dump {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.reaped {
            return Ok(0);
        }
        let n = self.stdout.read(buf)?;
        self.read += n as u64;
        if n == 0 {
            self.finish()?;
        }
        Ok(n)
    }
}

impl Drop for Dump {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            log::debug!("dump {}: stopped after {} bytes", self.path, self.read);
        }
    }
}
