//! Test harness for "remote" workers on this one machine: [`RemoteHost`] owns one Linux
//! network namespace plus the veth pair that links it to the root namespace (where the
//! daemon runs), and builds [`Command`]s that run a program inside that namespace with
//! chosen folders (the daemon's state and data folders) hidden behind empty read-only
//! tmpfs mounts in a private mount namespace. It owns the namespace and the veth, and
//! nothing else: dropping a `RemoteHost` deletes both, and never kills the processes that
//! callers started with [`RemoteHost::command`] (kill and wait for them yourself).
//!
//! Needs root (`CAP_SYS_ADMIN` and `CAP_NET_ADMIN`) and the `ip` tool of iproute2;
//! [`can_make_namespaces`] says whether this machine allows it.
//!
//! # Names and subnets
//! The namespace is `cnnd-<pid>-<n>` and its root-side veth `cnv<pid>x<n>` (at most 15
//! characters), where `<pid>` is this test process and `<n>` a per-process counter, so
//! test binaries running at once never collide. Inside, the veth is called `eth0`.
//! Each host gets a /30 out of 10.213.0.0/16: block `b` is `10.213.(b / 64).(b % 64 * 4)`,
//! with the root side `.1` ([`RemoteHost::host_addr`]) and the namespace side `.2`
//! ([`RemoteHost::addr`]). Blocks are chosen under an exclusive `flock` on
//! `/tmp/cnnd-netns.lock`, skipping every block that overlaps an IPv4 address already
//! assigned in the root namespace, and the lock is held until the new root-side address
//! is assigned: so concurrent tests, threads or processes, never get the same subnet.
//! The namespace has no default route: from inside, only the `10.213.x.y/30` link is
//! reachable (its `.1` is the root namespace, so a daemon listening on `0.0.0.0` or on
//! `host_addr()` answers there); `127.0.0.1` inside is the namespace's own loopback.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The /16 that the hosts' /30s are carved from (10.213.0.0/16: 16384 blocks).
const NET_A: u8 = 10;
const NET_B: u8 = 213;
const BLOCKS: u32 = 1 << 14;
/// Serializes subnet choice across every process on this machine.
const LOCK_PATH: &str = "/tmp/cnnd-netns.lock";
/// Interface names are at most 15 bytes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One simulated remote machine: a network namespace linked to the root namespace by a
/// veth pair on its own /30. See the module docs for names and addresses.
#[derive(Debug)]
pub struct RemoteHost {
    name: String,
    veth: String,
    host_addr: Ipv4Addr,
    addr: Ipv4Addr,
    ip: PathBuf,
    /// Set once `ip netns add` succeeded (so Drop knows what to delete).
    made_netns: bool,
    made_veth: bool,
}

impl RemoteHost {
    /// Creates the namespace, the veth pair, their addresses, and brings up `lo` and
    /// both veth ends. On failure, returns the failing command with its exit status and
    /// stderr (e.g. "Operation not permitted" when not root), having removed what it had
    /// made so far.
    pub fn new() -> Result<RemoteHost, String> {
        let ip = ip_binary()?;
        let pid = std::process::id();
        // A namespace left by a crashed test process with the same pid may still exist:
        // skip its names.
        let mut tries = 0;
        let mut host = loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("cnnd-{pid}-{n}");
            let veth = format!("cnv{pid}x{n}");
            if veth.len() > IFNAME_MAX {
                return Err(format!(
                    "interface name {veth} is longer than {IFNAME_MAX} bytes (too many hosts)"
                ));
            }
            let host = RemoteHost {
                name,
                veth,
                host_addr: Ipv4Addr::UNSPECIFIED,
                addr: Ipv4Addr::UNSPECIFIED,
                ip: ip.clone(),
                made_netns: false,
                made_veth: false,
            };
            let exists = Path::new("/run/netns").join(&host.name).exists()
                || Path::new("/sys/class/net").join(&host.veth).exists();
            if exists && tries < 100 {
                tries += 1;
                continue;
            }
            break host;
        };
        host.ip_run(&["netns", "add", &host.name])?;
        host.made_netns = true;
        host.ip_run(&[
            "link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns", &host.name,
        ])?;
        host.made_veth = true;

        let (host_addr, addr) = {
            let _lock = lock_allocation()?;
            let used = host.assigned_addresses()?;
            let start = (pid.wrapping_mul(64) ^ COUNTER.load(Ordering::Relaxed)) % BLOCKS;
            let block = (0..BLOCKS)
                .map(|i| (start + i) % BLOCKS)
                .find(|&b| {
                    !used
                        .iter()
                        .any(|&(a, len)| overlaps(block_net(b), 30, a, len))
                })
                .ok_or_else(|| "no free /30 left in 10.213.0.0/16".to_string())?;
            let net = block_net(block);
            let host_addr = Ipv4Addr::from(u32::from(net) + 1);
            let addr = Ipv4Addr::from(u32::from(net) + 2);
            host.ip_run(&["addr", "add", &format!("{host_addr}/30"), "dev", &host.veth])?;
            (host_addr, addr)
        };
        host.host_addr = host_addr;
        host.addr = addr;
        let ns = host.name.clone();
        host.ip_run(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            "eth0",
        ])?;
        host.ip_run(&["-n", &ns, "link", "set", "lo", "up"])?;
        host.ip_run(&["-n", &ns, "link", "set", "eth0", "up"])?;
        host.ip_run(&["link", "set", &host.veth, "up"])?;
        Ok(host)
    }

    /// The root-namespace end of the link (`10.213.x.y+1`): a daemon listening on
    /// `0.0.0.0` or on this address is reachable from inside at this address.
    pub fn host_addr(&self) -> Ipv4Addr {
        self.host_addr
    }

    /// The namespace end of the link (`10.213.x.y+2`): where the root namespace reaches
    /// a program listening inside.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The namespace's name (`cnnd-<pid>-<n>`, as `ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root-namespace veth interface (`cnv<pid>x<n>`).
    pub fn host_veth(&self) -> &str {
        &self.veth
    }

    /// A [`Command`] that runs `program` inside this namespace, with each folder of
    /// `hidden` covered by an empty read-only tmpfs; add args, env, cwd and stdio to it
    /// as usual.
    ///
    /// How: no wrapper process. In a `pre_exec` hook (the forked child, just before
    /// `execve`) the child `setns`es into the network namespace (`/run/netns/<name>`,
    /// opened here with `O_CLOEXEC`), `unshare(CLONE_NEWNS)`s into a private mount
    /// namespace, makes every mount private (`MS_REC | MS_PRIVATE` on `/`, so nothing
    /// propagates back), mounts an empty `tmpfs` (`ro,nosuid,nodev,noexec`, mode 0555)
    /// over each hidden folder, and re-enters its working directory by path (so a cwd
    /// inside a hidden folder sees the empty tmpfs too). Then it execs `program`, so
    /// `Child::id()` is the program's own pid: signals sent to it reach the program, and
    /// its exit status or killing signal is what `wait` reports. Other mounts (`/sys`
    /// included) are the root namespace's; `/etc/netns/<name>` is not applied.
    ///
    /// If a step fails, `spawn` fails with that step's errno (Rust passes back only
    /// the errno from a forked child), e.g. `ENOENT` when the working directory was
    /// below a hidden folder. Hiding a folder that holds `program` makes the exec fail.
    ///
    /// Panics if a hidden folder does not exist or is not a directory (hidden paths are
    /// resolved against this process's working directory, symlinks followed).
    pub fn command(&self, program: &Path, hidden: &[&Path]) -> Command {
        let netns = File::open(Path::new("/run/netns").join(&self.name))
            .unwrap_or_else(|e| panic!("open /run/netns/{}: {e}", self.name));
        let hidden: Vec<CString> = hidden
            .iter()
            .map(|p| {
                let abs = std::fs::canonicalize(p)
                    .unwrap_or_else(|e| panic!("hidden folder {}: {e}", p.display()));
                assert!(abs.is_dir(), "hidden {} is not a folder", abs.display());
                CString::new(abs.as_os_str().as_bytes()).expect("path without NUL")
            })
            .collect();
        // Allocated now: the hook runs after fork and must not allocate.
        let mut cwd = vec![0u8; libc::PATH_MAX as usize + 1];
        let mut cmd = Command::new(program);
        // SAFETY: the hook only makes raw syscalls (setns, unshare, mount, getcwd,
        // chdir) on memory allocated before the fork: async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                check(libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET))?;
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for dir in &hidden {
                    check(libc::mount(
                        c"tmpfs".as_ptr(),
                        dir.as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        c"size=4k,mode=0555".as_ptr().cast(),
                    ))?;
                }
                if !hidden.is_empty() {
                    if libc::getcwd(cwd.as_mut_ptr().cast(), cwd.len()).is_null() {
                        return Err(io::Error::last_os_error());
                    }
                    check(libc::chdir(cwd.as_ptr().cast()))?;
                }
                Ok(())
            });
        }
        cmd
    }

    /// A network partition: takes the veth down at its namespace end (`eth0` inside).
    /// From inside, the link's route goes away, so connecting out fails at once
    /// (`ENETUNREACH`) and established connections stall; from the root namespace, the
    /// veth loses carrier but keeps its route, so packets to [`addr`](Self::addr) are
    /// dropped (connects time out, or fail with `EHOSTUNREACH` once ARP gave up).
    /// The root end stays up on purpose: taking it down would drop the root's route to
    /// the /30, and traffic to `addr()` would leave by the default route instead.
    /// Panics with the command's stderr on failure.
    pub fn link_down(&self) {
        if let Err(e) = self.ip_run(&["-n", &self.name, "link", "set", "eth0", "down"]) {
            panic!("link_down: {e}");
        }
    }

    /// Ends the partition: brings the namespace end back up (the routes come back with
    /// it; connections that have not timed out carry on). Panics with the command's
    /// stderr on failure.
    pub fn link_up(&self) {
        if let Err(e) = self.ip_run(&["-n", &self.name, "link", "set", "eth0", "up"]) {
            panic!("link_up: {e}");
        }
    }

    fn ip_run(&self, args: &[&str]) -> Result<String, String> {
        run_ip(&self.ip, args)
    }

    /// IPv4 addresses (with prefix lengths) assigned in the root namespace.
    fn assigned_addresses(&self) -> Result<Vec<(Ipv4Addr, u8)>, String> {
        let out = self.ip_run(&["-4", "-o", "addr", "show"])?;
        let mut found = Vec::new();
        for line in out.lines() {
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                if w != "inet" {
                    continue;
                }
                if let Some((a, len)) = words.next().and_then(|cidr| cidr.split_once('/')) {
                    if let (Ok(a), Ok(len)) = (a.parse(), len.parse()) {
                        found.push((a, len));
                    }
                }
            }
        }
        Ok(found)
    }
}

impl Drop for RemoteHost {
    /// Deletes the veth pair (synchronously: deleting a namespace tears its interfaces
    /// down later, and not at all while a process still lives in it), then the
    /// namespace's name. Best effort, never panics; processes inside are left alone.
    fn drop(&mut self) {
        if self.made_veth {
            let _ = run_ip(&self.ip, &["link", "del", &self.veth]);
        }
        if self.made_netns {
            let _ = run_ip(&self.ip, &["netns", "del", &self.name]);
        }
    }
}

/// Whether this machine lets tests make namespaces: effective uid 0 with
/// `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`, and a working `ip` (iproute2). The `Err` says
/// what is missing.
pub fn can_make_namespaces() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(format!("network namespaces need root (euid is {euid})"));
    }
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("read /proc/self/status: {e}"))?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or("no CapEff line in /proc/self/status")?;
    for (bit, cap) in [(21, "CAP_SYS_ADMIN"), (12, "CAP_NET_ADMIN")] {
        if cap_eff & (1 << bit) == 0 {
            return Err(format!("root without {cap} (CapEff {cap_eff:#x})"));
        }
    }
    let ip = ip_binary()?;
    run_ip(&ip, &["-V"]).map(|_| ())
}

/// `ip` from PATH, else from the sbin folders PATH may lack.
fn ip_binary() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join("ip"))
        .find(|p| p.is_file())
        .ok_or_else(|| "`ip` (iproute2) not found in PATH or /usr/sbin, /sbin".to_string())
}

/// Runs `ip ARGS`; Err holds the exact command, its status and its stderr.
fn run_ip(ip: &Path, args: &[&str]) -> Result<String, String> {
    let shown = format!("{} {}", ip.display(), args.join(" "));
    let out = Command::new(ip)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{shown}` did not start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Holds an exclusive flock on [`LOCK_PATH`] until dropped.
fn lock_allocation() -> Result<File, String> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .map_err(|e| format!("open {LOCK_PATH}: {e}"))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!("flock {LOCK_PATH}: {}", io::Error::last_os_error()));
    }
    Ok(file)
}

fn block_net(block: u32) -> Ipv4Addr {
    Ipv4Addr::new(NET_A, NET_B, (block / 64) as u8, (block % 64 * 4) as u8)
}

/// Whether the prefixes `a/alen` and `b/blen` share any address.
fn overlaps(a: Ipv4Addr, alen: u8, b: Ipv4Addr, blen: u8) -> bool {
    let len = alen.min(blen).min(32) as u32;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a) & mask == u32::from(b) & mask
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
