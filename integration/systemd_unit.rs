//! The plain systemd unit for machines with Nix but without NixOS,
//! `integration/dist/peerix.service`, followed as README.md's "As a service
//! without NixOS" (under "Run it") says, in a test host with a multi-user
//! Nix.
//!
//! There is no systemd to run it here (not PID 1, and test hosts are only
//! network and mount namespaces), so systemd's part is played by the test,
//! from the unit file as installed: the command line (`%d`, `$PEERIX_ARGS`
//! from the `EnvironmentFile`), `User`, `Group` with the user's
//! supplementary groups, `Environment`, `LoadCredential` (a copy of each
//! file in `/run/credentials/peerix.service`, the service's, 0400),
//! `RuntimeDirectory`, `UMask` and `LimitNOFILE`. The sandboxing directives
//! are not applied (`systemd-analyze verify`, run by
//! integration/support/unit-verify, checks them). Everything else is real:
//! the user made by `useradd`, the key by `nix-store
//! --generate-binary-cache-key`, nix.conf read by the nix-daemon and by the
//! node, the node reaching the store through the nix-daemon's socket as
//! that user.
//!
//! The host's system directories are its own: `/etc`, `/var` and
//! `/usr/local` are overlays whose changes go into the host's directory
//! (writable while the README's steps run, read-only once the services
//! run), `/run` is a directory of the host's. The machine's own are never
//! changed, nor is its `/etc/nix` read.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{generate_key, Daemon, Host, Net, NIX_CONF};

/// The unit as the repository has it.
const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/integration/dist/peerix.service"
);

/// A directive of the unit: its section, name and value, in file order.
struct Directive {
    section: String,
    key: String,
    value: String,
}

/// The directives of a unit file (comments and blank lines left out).
fn parse_unit(text: &str) -> Vec<Directive> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a directive: {line}"));
        out.push(Directive {
            section: section.clone(),
            key: key.trim().to_string(),
            value: value.trim().to_string(),
        });
    }
    out
}

/// The values of `key` in `[Service]`, in order.
fn service<'a>(unit: &'a [Directive], key: &str) -> Vec<&'a str> {
    unit.iter()
        .filter(|d| d.section == "Service" && d.key == key)
        .map(|d| d.value.as_str())
        .collect()
}

/// The one value of `key` in `[Service]`.
fn service_one<'a>(unit: &'a [Directive], key: &str) -> &'a str {
    match service(unit, key)[..] {
        [v] => v,
        ref vs => panic!("{key}= appears {} times in the unit", vs.len()),
    }
}

/// Words as systemd splits a command line or an `Environment=` value: at
/// white space, with double quotes around words that contain it.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut any) = (false, false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quotes in {s:?}");
    if any {
        out.push(word);
    }
    out
}

/// `NAME=VALUE` assignments of an environment file (`#` comments, values
/// optionally in double quotes).
fn environment_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.split_once('=').expect("NAME=VALUE");
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            (name.trim().to_string(), value.to_string())
        })
        .collect()
}

/// ExecStart as systemd expands it: `%d` is the credentials directory, a
/// word `$NAME` becomes the variable's words (none when it is unset or
/// empty), `${NAME}` within a word its value.
fn expand_exec(line: &str, env: &BTreeMap<String, String>, creds: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in words(line) {
        let word = word.replace("%d", creds).replace("%%", "%");
        if let Some(name) = word.strip_prefix('$').filter(|n| !n.starts_with('{')) {
            out.extend(env.get(name).map(|v| words(v)).unwrap_or_default());
            continue;
        }
        let mut expanded = word.clone();
        for (name, value) in env {
            expanded = expanded.replace(&format!("${{{name}}}"), value);
        }
        out.push(expanded);
    }
    out
}

/// A test host seen as a machine of its own: its `/etc`, `/var` and
/// `/usr/local` are overlays on the machine's, with the changes kept in
/// the host's directory, and `/run` is a directory of the host's.
struct System<'a> {
    host: &'a Host,
    dir: PathBuf,
}

const OVERLAID: [&str; 3] = ["/etc", "/var", "/usr/local"];

impl<'a> System<'a> {
    fn new(host: &'a Host) -> System<'a> {
        let dir = host.dir.join("system");
        for d in OVERLAID {
            let name = d.trim_start_matches('/').replace('/', "-");
            fs::create_dir_all(dir.join(format!("{name}-changes"))).unwrap();
            fs::create_dir_all(dir.join(format!("{name}-work"))).unwrap();
        }
        fs::create_dir_all(dir.join("run")).unwrap();
        System { host, dir }
    }

    /// `program args…` in the host as root, on the host's system
    /// directories: writable ones for installing, read-only ones (the
    /// installed system) once services run. Nix reads `/etc/nix/nix.conf`,
    /// the host's.
    fn cmd(&self, writable: bool, program: &str, args: &[&str]) -> Command {
        let mut script = String::new();
        for d in OVERLAID {
            let name = d.trim_start_matches('/').replace('/', "-");
            let changes = self.dir.join(format!("{name}-changes"));
            let options = if writable {
                let work = self.dir.join(format!("{name}-work"));
                format!(
                    "lowerdir={d},upperdir={},workdir={}",
                    changes.display(),
                    work.display()
                )
            } else {
                format!("ro,lowerdir={}:{d}", changes.display())
            };
            script += &format!("mount -t overlay overlay -o {options} {d} && ");
        }
        script += &format!(
            "mount --bind {} /run && exec \"$@\"",
            self.dir.join("run").display()
        );
        let mut argv = vec!["-c", script.as_str(), "sh", program];
        argv.extend_from_slice(args);
        let mut cmd = self.host.cmd("sh", &argv);
        cmd.env_remove("NIX_CONF_DIR");
        cmd
    }

    /// Runs a shell script as root on the writable system directories;
    /// its trimmed stdout. Panics with its output if it fails.
    fn install(&self, script: &str) -> String {
        self.run(true, script)
    }

    /// Runs a shell script as root on the installed (read-only) system.
    fn run(&self, writable: bool, script: &str) -> String {
        let out = support::output_within(
            self.cmd(writable, "sh", &["-ec", script]),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|| panic!("`{script}` timed out"));
        assert!(
            out.status.success(),
            "`{script}` failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A file of the installed system, read from the host's changes (or the
    /// machine's file beneath them).
    fn read(&self, path: &str) -> Option<String> {
        let dir = OVERLAID
            .iter()
            .find(|d| path.starts_with(&format!("{d}/")))
            .expect("a path under an overlaid directory");
        let name = dir.trim_start_matches('/').replace('/', "-");
        let changed = self
            .dir
            .join(format!("{name}-changes"))
            .join(&path[dir.len() + 1..]);
        fs::read_to_string(changed)
            .or_else(|_| fs::read_to_string(path))
            .ok()
    }
}

/// What systemd would start for the unit installed in `system`: the
/// environment, the credentials and runtime directories, the limits, the
/// user; the node's command line and environment as the process gets them.
fn start_unit(system: &System) -> (Daemon, Vec<String>, BTreeMap<String, String>) {
    let text = system
        .read("/etc/systemd/system/peerix.service")
        .expect("the unit is installed");
    let unit = parse_unit(&text);
    let user = service_one(&unit, "User");
    let group = service_one(&unit, "Group");

    let mut env = BTreeMap::new();
    for value in service(&unit, "Environment") {
        for assignment in words(value) {
            let (name, value) = assignment.split_once('=').expect("NAME=VALUE");
            env.insert(name.to_string(), value.to_string());
        }
    }
    for file in service(&unit, "EnvironmentFile") {
        let (optional, path) = match file.strip_prefix('-') {
            Some(p) => (true, p),
            None => (false, file),
        };
        match system.read(path) {
            Some(text) => env.extend(environment_file(&text)),
            None => assert!(optional, "EnvironmentFile {path} is missing"),
        }
    }
    let creds = "/run/credentials/peerix.service";
    env.insert("CREDENTIALS_DIRECTORY".into(), creds.into());

    // The directories systemd makes before it starts the service.
    let mut setup = format!("mkdir -p -m 0755 /run/credentials && mkdir -m 0500 {creds}\n");
    for credential in service(&unit, "LoadCredential") {
        let (id, path) = credential.split_once(':').expect("ID:PATH");
        setup += &format!("cp {path} {creds}/{id} && chmod 0400 {creds}/{id}\n");
    }
    setup += &format!("chown -R {user}:{group} {creds}\n");
    for dir in service(&unit, "RuntimeDirectory") {
        let mode = service(&unit, "RuntimeDirectoryMode")
            .pop()
            .unwrap_or("0755");
        setup += &format!("mkdir -m {mode} /run/{dir} && chown {user}:{group} /run/{dir}\n");
    }
    system.run(false, &setup);

    let exec = expand_exec(service_one(&unit, "ExecStart"), &env, creds);
    let nofile = open_files_limit(service_one(&unit, "LimitNOFILE"));
    let umask = service_one(&unit, "UMask");
    let mut argv: Vec<String> = vec![
        format!("--nofile={nofile}:{nofile}"),
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        "cd / && umask \"$0\" && exec \"$@\"".into(),
        umask.into(),
        "/usr/bin/env".into(),
        "-i".into(),
    ];
    argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.extend(
        [
            "/usr/bin/setpriv",
            &format!("--reuid={user}"),
            &format!("--regid={group}"),
            "--init-groups",
            "--",
        ]
        .map(String::from),
    );
    argv.extend(exec.iter().cloned());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let daemon = system
        .host
        .spawn_daemon(system.cmd(false, "/usr/bin/prlimit", &argv), "peerix-unit");
    (daemon, exec, env)
}

/// The unit's LimitNOFILE, or the highest this test may set: raising the
/// hard limit needs CAP_SYS_RESOURCE, which systemd has and root on some
/// machines (containers, sandboxed VMs) has not.
fn open_files_limit(unit: &str) -> String {
    let wanted: u64 = unit.parse().expect("LimitNOFILE=N");
    let hard = hard_open_files(std::process::id());
    if hard >= wanted {
        return unit.to_string();
    }
    eprintln!("LimitNOFILE={wanted}: this machine lets the test raise it to {hard} only (no CAP_SYS_RESOURCE)");
    hard.to_string()
}

/// The hard limit on open files of process `pid`.
fn hard_open_files(pid: u32) -> u64 {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let hard = line.split_whitespace().nth(4).expect("a hard limit");
    hard.parse().unwrap_or(u64::MAX)
}

/// The fields `Uid`, `Gid`, `Groups`… of /proc/PID/status.
fn proc_status(pid: u32, field: &str) -> Vec<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("the node's status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().map(String::from).collect()
}

fn hash_part(path: &str) -> &str {
    &Path::new(path).file_name().unwrap().to_str().unwrap()[..32]
}

/// README.md's steps for a machine without NixOS, in a test host with a
/// multi-user Nix set up as Debian's `nix-setup-systemd` does: the service
/// runs with the unit's command line, user, groups, environment, key and
/// limits; peers get this machine's paths signed with the key made by the
/// README's command, through the nix-daemon as user peerix; and the local
/// Nix, configured by the README's nix.conf lines, substitutes a peer's
/// path through the node.
#[test]
fn readme_unit_runs_the_node_as_its_own_user_through_the_nix_daemon() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let system = System::new(h1);

    // A peer with a path of its own.
    let peer_key = generate_key(h2, "peer-h2");
    let peer_path = h2.run(&format!(
        "echo from the peer > {0}/peer-file && nix-store --add {0}/peer-file",
        h2.dir.display()
    ));
    let _peer = h2.spawn_peerix(&["--private-key", peer_key.secret.to_str().unwrap()]);

    // A multi-user Nix as Debian's nix-setup-systemd installs it: the
    // nix-users group, a nix.conf (the harness's settings), the daemon's
    // socket directory for root and nix-users only. The group is there
    // already where the machine itself has nix-setup-systemd (apt installs
    // it with nix-bin unless told not to).
    system.install(&format!(
        "getent group nix-users >/dev/null || groupadd --system nix-users\n\
         rm -rf /etc/nix && mkdir /etc/nix && printf '%s' '{NIX_CONF}' > /etc/nix/nix.conf\n\
         chmod 755 /nix /nix/var /nix/var/nix\n\
         install -d -m 0770 -o root -g nix-users /nix/var/nix/daemon-socket"
    ));
    let local_path = h1.run(&format!(
        "echo from this machine > {0}/local-file && nix-store --add {0}/local-file",
        h1.dir.display()
    ));

    // README: install the binary (`cargo install --root /usr/local`; here
    // the binary this test was built with), the user, the key, nix.conf,
    // flags in /etc/default/peerix, the unit.
    let bin = env!("CARGO_BIN_EXE_peerix");
    system.install(&format!(
        "install -D -m 0755 {bin} /usr/local/bin/peerix\n\
         useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin peerix\n\
         usermod -aG nix-users peerix\n\
         mkdir -p -m 0700 /var/lib/peerix\n\
         nix-store --generate-binary-cache-key \"$(hostname)-peerix-1\" /var/lib/peerix/private /var/lib/peerix/public\n\
         printf 'extra-substituters = http://127.0.0.1:12304\\nextra-trusted-public-keys = %s %s\\n' \"$(cat /var/lib/peerix/public)\" '{peer}' >> /etc/nix/nix.conf\n\
         echo 'PEERIX_ARGS=\"--priority 30\"' > /etc/default/peerix\n\
         install -D -m 0644 {UNIT} /etc/systemd/system/peerix.service",
        peer = peer_key.public,
    ));
    let own_public = system.read("/var/lib/peerix/public").unwrap();
    let own_key_name = own_public.split(':').next().unwrap().to_string();

    // The nix-daemon, (re)started after nix.conf changed, then the unit.
    let nix_daemon = h1.spawn_daemon(system.cmd(false, "nix-daemon", &[]), "nix-daemon");
    let socket = h1.outside("/nix/var/nix/daemon-socket/socket");
    assert!(
        support::wait_until(Duration::from_secs(10), || socket.exists()),
        "no nix-daemon socket: {}",
        nix_daemon.log()
    );
    let (node, exec, env) = start_unit(&system);
    let answered = support::wait_until(Duration::from_secs(15), || {
        h1.curl(&["http://127.0.0.1:12304/nix-cache-info"]).status == 200
    });
    assert!(answered, "the node does not answer:\n{}", node.log());

    // The unit's command line, flags from /etc/default/peerix included.
    assert_eq!(
        exec,
        [
            "/usr/local/bin/peerix",
            "--private-key",
            "/run/credentials/peerix.service/peerix-private-key",
            "--priority",
            "30"
        ]
    );
    let cmdline = fs::read(format!("/proc/{}/cmdline", node.pid())).unwrap();
    let cmdline: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(cmdline, exec, "the process is not the unit's command");
    let info = h1.curl(&["http://127.0.0.1:12304/nix-cache-info"]).text();
    assert!(info.contains("Priority: 30"), "{info}");

    // Its own user and group, nix-users beside them, the unit's limit and
    // environment (PATH, NIX_REMOTE=daemon, a home in /run/peerix).
    let ids = system.run(
        false,
        "id -u peerix; id -g peerix; getent group nix-users | cut -d: -f3",
    );
    let ids: Vec<&str> = ids.lines().collect();
    let (uid, gid, nix_users) = (ids[0], ids[1], ids[2]);
    assert!(proc_status(node.pid(), "Uid").iter().all(|u| u == uid));
    assert!(proc_status(node.pid(), "Gid").iter().all(|g| g == gid));
    let groups = proc_status(node.pid(), "Groups");
    assert!(
        groups.iter().any(|g| g == nix_users),
        "not in nix-users: {groups:?}"
    );
    assert_eq!(
        hard_open_files(node.pid()).to_string(),
        open_files_limit("65536"),
        "LimitNOFILE"
    );
    let environ = fs::read(format!("/proc/{}/environ", node.pid())).unwrap();
    let environ: BTreeMap<String, String> = environ
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .filter_map(|a| {
            let a = String::from_utf8_lossy(a);
            a.split_once('=').map(|(k, v)| (k.into(), v.into()))
        })
        .collect();
    assert_eq!(environ, env, "the process's environment is not the unit's");
    assert_eq!(environ["NIX_REMOTE"], "daemon");
    assert_eq!(environ["HOME"], "/run/peerix");

    // A peer gets this machine's path, signed with the README's key: the
    // key came through the credential, the store through the nix-daemon.
    let narinfo = h2.curl(&[&format!(
        "http://{}:12304/peer/{}.narinfo",
        h1.addr4,
        hash_part(&local_path)
    )]);
    assert_eq!(narinfo.status, 200, "{narinfo:?}\n{}", node.log());
    let narinfo = narinfo.text();
    assert!(
        narinfo.contains(&format!("Sig: {own_key_name}:")),
        "not signed with the README's key {own_key_name}:\n{narinfo}"
    );
    assert!(
        nix_daemon.log().contains("user peerix"),
        "the node did not reach the store through the nix-daemon as peerix:\n{}",
        nix_daemon.log()
    );

    // The local Nix, through its nix-daemon and the README's nix.conf
    // lines, substitutes the peer's path through the node.
    let mut nix = system.cmd(false, "nix-store", &["-r", &peer_path]);
    nix.env("NIX_REMOTE", "daemon");
    let out = support::output_within(nix, Duration::from_secs(60)).expect("nix-store -r hangs");
    assert!(
        out.status.success(),
        "nix-store -r {peer_path} through the node failed: {}\nnode:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    assert!(
        h1.outside(&peer_path).exists(),
        "{peer_path} is not in the store"
    );
    let fetched = h1.run(&format!("cat {peer_path}"));
    assert_eq!(fetched, "from the peer");
}
