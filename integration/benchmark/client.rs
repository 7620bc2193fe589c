//! The load client, run inside a test host: this binary re-executed there
//! with `--client …`, so no process start is inside a measured interval.
//!
//! `bench --client http ADDR PATHS_FILE THREADS`: GETs each path of the file
//! from `ADDR` over `THREADS` keep-alive connections, all opened before the
//! first request. Prints one line per path, in order: `i status ttfb_us
//! total_us bytes`, or `i ERR total_us message`.
//!
//! `bench --client udp ADDR COUNT WINDOW`: sends COUNT v2 queries for random
//! hashes to a node. WINDOW 1: one at a time, printing each round trip in
//! µs (`lost` when none came within 1 s). Otherwise up to WINDOW queries in
//! flight; prints `sent N answered M seconds S`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use crate::support::Xorshift;

pub fn main(args: &[String]) -> ExitCode {
    let result = match args.first().map(String::as_str) {
        Some("http") if args.len() == 4 => http(&args[1], &args[2], &args[3]),
        Some("udp") if args.len() == 4 => udp(&args[1], &args[2], &args[3]),
        Some("time") if args.len() == 2 => time(&args[1]),
        _ => Err(
            "usage: --client http ADDR FILE THREADS | udp ADDR COUNT WINDOW | time SCRIPT".into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn http(addr: &str, file: &str, threads: &str) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let paths: Vec<&str> = text.lines().collect();
    let threads: usize = threads.parse().map_err(|_| "THREADS is a number")?;
    let next = AtomicUsize::new(0);
    let barrier = Barrier::new(threads);
    let results = Mutex::new(vec![String::new(); paths.len()]);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut conn = Conn {
                    addr,
                    stream: None,
                    buf: vec![0; 1 << 16],
                };
                let _ = conn.connect();
                barrier.wait();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(path) = paths.get(i) else { break };
                    let start = Instant::now();
                    let line = match conn.get(path) {
                        Ok(r) => format!("{i} {} {} {} {}", r.0, r.1, r.2, r.3),
                        Err(e) => format!("{i} ERR {} {e}", start.elapsed().as_micros()),
                    };
                    results.lock().unwrap()[i] = line;
                }
            });
        }
    });
    for line in results.into_inner().unwrap() {
        println!("{line}");
    }
    Ok(())
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn connect(&mut self) -> Result<(), String> {
        let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        s.set_write_timeout(Some(Duration::from_secs(60))).ok();
        s.set_nodelay(true).ok();
        self.stream = Some(s);
        Ok(())
    }

    /// GETs `path`: (status, ttfb µs, total µs, body bytes). Retries once
    /// on a fresh connection when a kept-alive one was closed meanwhile.
    fn get(&mut self, path: &str) -> Result<(u16, u128, u128, u64), String> {
        let reused = self.stream.is_some();
        match self.try_get(path) {
            Err((false, _)) if reused => {
                self.stream = None;
                self.try_get(path).map_err(|e| e.1)
            }
            r => r.map_err(|e| e.1),
        }
    }

    /// Errors say whether any byte of the response came.
    fn try_get(&mut self, path: &str) -> Result<(u16, u128, u128, u64), (bool, String)> {
        let start = Instant::now();
        if self.stream.is_none() {
            self.connect().map_err(|e| (true, e))?;
        }
        let stream = self.stream.as_mut().unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        stream
            .write_all(request.as_bytes())
            .map_err(|e| (false, format!("write: {e}")))?;
        let mut head: Vec<u8> = Vec::new();
        let mut ttfb = None;
        let end = loop {
            let n = stream
                .read(&mut self.buf)
                .map_err(|e| (!head.is_empty(), format!("read: {e}")))?;
            if n == 0 {
                return Err((!head.is_empty(), "closed before the headers".into()));
            }
            ttfb.get_or_insert_with(|| start.elapsed().as_micros());
            head.extend_from_slice(&self.buf[..n]);
            if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if head.len() > 1 << 16 {
                return Err((true, "headers too long".into()));
            }
        };
        let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or((true, "no status".to_string()))?;
        let header = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        };
        let close = header("connection").is_some_and(|v| v == "close");
        let mut got = (head.len() - end) as u64;
        match header("content-length").and_then(|v| v.parse::<u64>().ok()) {
            Some(len) => {
                while got < len {
                    let n = stream
                        .read(&mut self.buf)
                        .map_err(|e| (true, format!("body: {e}")))?;
                    if n == 0 {
                        return Err((true, format!("short body: {got} of {len}")));
                    }
                    got += n as u64;
                }
                if got > len {
                    return Err((true, "more bytes than Content-Length".into()));
                }
            }
            None if header("transfer-encoding").is_some() => {
                return Err((true, "chunked replies are not expected".into()))
            }
            None => loop {
                let n = stream
                    .read(&mut self.buf)
                    .map_err(|e| (true, format!("body: {e}")))?;
                if n == 0 {
                    self.stream = None;
                    break;
                }
                got += n as u64;
            },
        }
        let total = start.elapsed().as_micros();
        if close {
            self.stream = None;
        }
        Ok((status, ttfb.unwrap_or(total), total, got))
    }
}

/// Runs `bash -c SCRIPT` (with pipefail, stdout discarded) and prints
/// its wall and CPU seconds (user + system of it and its children).
fn time(script: &str) -> Result<(), String> {
    let start = Instant::now();
    let out = std::process::Command::new("bash")
        .args(["-c", &format!("set -o pipefail; {script}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| format!("bash: {e}"))?;
    let real = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "`{script}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // SAFETY: getrusage writes into the struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    println!(
        "{real:.6} {:.6}",
        secs(usage.ru_utime) + secs(usage.ru_stime)
    );
    Ok(())
}

/// A v2 query datagram (see src/discovery/wire.rs).
fn query(node: u64, id: u32, hash: &str) -> Vec<u8> {
    let mut d = Vec::with_capacity(48);
    d.extend_from_slice(b"PX");
    d.extend_from_slice(&[2, 1]);
    d.extend_from_slice(&node.to_be_bytes());
    d.extend_from_slice(&id.to_be_bytes());
    d.extend_from_slice(hash.as_bytes());
    d
}

/// The request id of a v2 answer (have or not here).
fn answer_id(d: &[u8]) -> Option<u32> {
    (d.len() >= 48 && &d[..3] == b"PX\x02" && matches!(d[3], 2 | 3))
        .then(|| u32::from_be_bytes(d[12..16].try_into().unwrap()))
}

fn udp(addr: &str, count: &str, window: &str) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let count: u32 = count.parse().map_err(|_| "COUNT is a number")?;
    let window: u32 = window.parse().map_err(|_| "WINDOW is a number")?;
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    socket.connect(addr).map_err(|e| e.to_string())?;
    let mut rng = Xorshift::new();
    let node = rng.next();
    let hashes: Vec<String> = (0..count.min(4096)).map(|_| rng.hash()).collect();
    let hash = |i: u32| &hashes[i as usize % hashes.len()];
    let mut buf = [0u8; 2048];
    if window <= 1 {
        socket.set_read_timeout(Some(Duration::from_secs(1))).ok();
        for id in 0..count {
            let start = Instant::now();
            socket
                .send(&query(node, id, hash(id)))
                .map_err(|e| e.to_string())?;
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) if answer_id(&buf[..n]) == Some(id) => {
                        println!("{:.1}", start.elapsed().as_secs_f64() * 1e6);
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        println!("lost");
                        break;
                    }
                }
            }
        }
        return Ok(());
    }
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .ok();
    let deadline = Instant::now() + Duration::from_secs(120);
    let start = Instant::now();
    let (mut sent, mut answered, mut in_flight) = (0u32, 0u32, 0u32);
    let mut last = Duration::ZERO;
    while (sent < count || in_flight > 0) && Instant::now() < deadline {
        while sent < count && in_flight < window {
            socket
                .send(&query(node, sent, hash(sent)))
                .map_err(|e| e.to_string())?;
            sent += 1;
            in_flight += 1;
        }
        match socket.recv(&mut buf) {
            Ok(n) if answer_id(&buf[..n]).is_some() => {
                answered += 1;
                in_flight -= 1;
                last = start.elapsed();
            }
            Ok(_) => {}
            Err(_) => in_flight = 0, // the rest are lost
        }
    }
    let secs = last.as_secs_f64();
    println!("sent {sent} answered {answered} seconds {secs:.6}");
    Ok(())
}
