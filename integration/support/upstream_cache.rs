//! A stand-in for an upstream binary cache (cache.nixos.org) on a test
//! host: caches made with `nix copy --to file://DIR?compression=…`, signed
//! with the upstream's key, served over HTTPS with a certificate of a test
//! CA by `upstream_cache.py` beside this file, which logs every answer with the
//! bytes it sent.

use std::collections::BTreeMap;
use std::path::PathBuf;

use std::time::Duration;

use super::{generate_key, wait_until, Daemon, Host, Key, LOCAL};

/// The port the stand-in listens on.
pub const PORT: u16 = 8443;

pub struct UpstreamCache {
    /// `https://ADDR:PORT`: each cache is a directory under it.
    pub base: String,
    /// The test CA's certificate, to give nodes as `SSL_CERT_FILE`.
    pub ca: PathBuf,
    /// Where the caches are, outside the hosts.
    root: PathBuf,
    log: PathBuf,
    host_dir: PathBuf,
    _server: Daemon,
}

impl UpstreamCache {
    /// A test CA, a certificate for `host`'s address signed by it, and the
    /// server over `host`'s directory of caches (empty at first).
    pub fn start(host: &Host) -> UpstreamCache {
        let dir = host.dir.join("upstream-tls");
        let root = host.dir.join("upstream-caches");
        std::fs::create_dir_all(&dir).expect("make the TLS directory");
        std::fs::create_dir_all(&root).expect("make the caches' directory");
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        host.run(&format!(
            "set -e; cd {dir}; \
             openssl req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=peerix-test-ca 2>/dev/null; \
             openssl req {ec} -keyout server.key -out server.csr -subj /CN=upstream 2>/dev/null; \
             printf 'subjectAltName=IP:{ip}\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext; \
             openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext 2>/dev/null",
            dir = dir.display(),
            ip = host.addr4
        ));
        let log = host.dir.join("upstream-sent.log");
        let script = super::stand_in("upstream_cache.py");
        let port = PORT.to_string();
        let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
        let args = [
            script.as_str(),
            "--dir",
            root.to_str().unwrap(),
            "--port",
            &port,
            "--log",
            log.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ];
        let server = host.spawn_daemon(host.cmd("/usr/bin/python3", &args), "upstream-cache");
        let base = format!("https://{}:{PORT}", host.addr4);
        let ca = dir.join("ca.pem");
        let up = super::wait_until(std::time::Duration::from_secs(10), || {
            host.try_run(&format!(
                "curl -sf --cacert {} {base}/nope -o /dev/null -w '%{{http_code}}' | grep -q 404",
                ca.display()
            ))
            .status
            .success()
        });
        assert!(up, "the upstream stand-in never answered: {}", server.log());
        UpstreamCache {
            base,
            ca,
            root,
            log,
            host_dir: host.dir.clone(),
            _server: server,
        }
    }

    /// Publishes `paths` with their closures from `host`'s store (the
    /// upstream's host) as the cache `name`, NARs compressed with
    /// `compression`, narinfo signed with `key`; its URL.
    pub fn publish(
        &self,
        host: &Host,
        name: &str,
        compression: &str,
        key: &Key,
        paths: &[&str],
    ) -> String {
        assert_eq!(host.dir, self.host_dir, "publish on the upstream's host");
        let dir = self.root.join(name);
        host.run(&format!(
            "nix copy --to 'file://{}?compression={compression}&secret-key={}' {}",
            dir.display(),
            key.secret.display(),
            paths.join(" ")
        ));
        format!("{}/{name}", self.base)
    }

    /// How often each NAR file was sent whole (200 with every byte), and
    /// the bytes sent for it in all, by file.
    pub fn nar_sends(&self) -> BTreeMap<String, (usize, u64)> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut sends: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        for line in log.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let [path, status, bytes] = fields[..] else {
                continue;
            };
            if !path.contains("/nar/") {
                continue;
            }
            let entry = sends.entry(path.to_string()).or_default();
            let bytes: u64 = bytes.parse().unwrap_or(0);
            let whole = status == "200"
                && std::fs::metadata(self.root.join(path.trim_start_matches('/')))
                    .is_ok_and(|m| m.len() == bytes);
            entry.0 += usize::from(whole);
            entry.1 += bytes;
        }
        sends
    }

    /// The bytes of NAR files sent so far, in all.
    pub fn nar_sends_total(&self) -> u64 {
        self.nar_sends().values().map(|(_, bytes)| bytes).sum()
    }

    /// The bytes of the NAR files of cache `name`, in all.
    pub fn nar_bytes(&self, name: &str) -> u64 {
        let dir = self.root.join(name).join("nar");
        (std::fs::read_dir(dir).into_iter().flatten().flatten())
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// The log of answers, for messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many narinfo requests the stand-in answered (any status).
    pub fn narinfo_requests(&self) -> usize {
        (self.log().lines())
            .filter(|l| l.split(' ').next().is_some_and(|p| p.ends_with(".narinfo")))
            .count()
    }

    /// The narinfo of `path` in cache `name`, as the stand-in serves it.
    pub fn narinfo(&self, name: &str, path: &str) -> String {
        let file = (self.root.join(name)).join(format!("{}.narinfo", super::hash_of(path)));
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    }

    /// Makes the stand-in send the NAR of `path` in cache `name` once with
    /// its middle byte flipped (one bad answer, then good ones again).
    pub fn corrupt_once(&self, name: &str, path: &str) {
        let narinfo = self.narinfo(name, path);
        let url = (narinfo.lines())
            .find_map(|l| l.strip_prefix("URL: "))
            .expect("a URL in the narinfo");
        let marker = self.root.join(name).join(format!("{url}.corrupt-once"));
        std::fs::write(&marker, b"").expect("write the marker");
    }

    /// A node on `host` pulling through `urls` of this stand-in, trusting
    /// `upstream`'s key, with the test CA in `ca_variable` (`SSL_CERT_FILE`
    /// or `NIX_SSL_CERT_FILE`), and `extra` arguments.
    pub fn node(
        &self,
        host: &Host,
        ca_variable: &str,
        urls: &[&str],
        upstream: &Key,
        extra: &[&str],
    ) -> Daemon {
        self.node_wrapped(host, &[], ca_variable, urls, upstream, extra)
    }

    /// Like [`UpstreamCache::node`], with `wrapper` put before the peerix
    /// binary (see [`Host::spawn_peerix_with`]).
    pub fn node_wrapped(
        &self,
        host: &Host,
        wrapper: &[&str],
        ca_variable: &str,
        urls: &[&str],
        upstream: &Key,
        extra: &[&str],
    ) -> Daemon {
        let key = generate_key(host, &format!("{}-1", host.name));
        let state = host.dir.join("state");
        let mut args = vec![
            "--private-key",
            key.secret.to_str().unwrap(),
            "--trusted-key",
            &upstream.public,
            "--state-dir",
            state.to_str().unwrap(),
        ];
        for url in urls {
            args.extend(["--upstream", url]);
        }
        args.extend(extra);
        // NIX_SSL_CERT_FILE comes first, as for Nix: empty, SSL_CERT_FILE counts.
        let env = [
            ("NIX_SSL_CERT_FILE", ""),
            ("SSL_CERT_FILE", ""),
            (ca_variable, self.ca.to_str().unwrap()),
        ];
        host.spawn_peerix_with(wrapper, &env, &args)
    }
}

/// Waits until the node of each of `hosts` knows the others as peers that
/// pull (a node says so with every hello, every 30 s, and to each new
/// peer); on failure, what each node's discovery logged.
pub fn wait_pullers(hosts: &[&Host], nodes: &[Daemon]) {
    for host in hosts {
        let mut status = String::new();
        let known = wait_until(Duration::from_secs(70), || {
            status = host.curl(&[&format!("{LOCAL}/status")]).text();
            status.matches("pulls from upstreams").count() == hosts.len() - 1
        });
        if !known {
            let logs: Vec<String> = (hosts.iter().zip(nodes))
                .map(|(h, n)| {
                    let log = n.log();
                    let lines: Vec<&str> = (log.lines())
                        .filter(|l| {
                            l.contains("peer") || l.contains("discovery") || l.contains("panic")
                        })
                        .take(40)
                        .collect();
                    format!("--- {}:\n{}", h.name, lines.join("\n"))
                })
                .collect();
            panic!(
                "{} never heard the other pulling nodes:\n{status}\n{}",
                host.name,
                logs.join("\n")
            );
        }
    }
}
