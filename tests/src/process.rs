//! Built binaries of the workspace, and daemons run inside the lab (the probe, nfcapd).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::lab::{Lab, Role};
use crate::netns::{self, io};
use crate::LabError;

/// Finds a binary built in the same target directory as the running executable
/// (`target/debug/deps/test-xxxx` or `target/debug/labelflow-lab` -> `target/debug/NAME`).
/// `LABELFLOW_BIN` (the variable the example scripts read) overrides the directory;
/// `LABELFLOW_BIN_DIR` is accepted as an older name of it.
pub fn find_binary(name: &str) -> Result<PathBuf, LabError> {
    let mut dirs = Vec::new();
    for var in ["LABELFLOW_BIN", "LABELFLOW_BIN_DIR"] {
        if let Some(dir) = std::env::var_os(var).filter(|d| !d.is_empty()) {
            dirs.push(PathBuf::from(dir));
        }
    }
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(Path::to_path_buf);
        if dir.as_ref().is_some_and(|d| d.ends_with("deps")) {
            dir = dir.and_then(|d| d.parent().map(Path::to_path_buf));
        }
        dirs.extend(dir);
    }
    for d in &dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(LabError::MissingBinary {
        name: name.to_owned(),
        searched: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// NFLOG groups bound by some listener in the namespace
/// (`/proc/net/netfilter/nfnetlink_log`, first column).
pub fn bound_nflog_groups(lab: &Lab) -> Result<Vec<u16>, LabError> {
    let out = lab.exec(Role::Gw, "cat", &["/proc/net/netfilter/nfnetlink_log"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect())
}

/// A daemon started inside a lab namespace, stopped with a signal.
///
/// Its stdout and stderr go to files (a pipe nobody reads would stall a chatty daemon).
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

/// What a stopped daemon left.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Daemon {
    /// Starts `prog ARGS` inside the role's namespace, stdout and stderr captured.
    pub fn start(lab: &Lab, role: Role, prog: &Path, args: &[String]) -> Result<Daemon, LabError> {
        Daemon::start_in(&lab.ns(role), prog, args)
    }

    /// Starts `prog ARGS` inside the namespace `ns`, stdout and stderr captured.
    pub fn start_in(ns: &str, prog: &Path, args: &[String]) -> Result<Daemon, LabError> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let name = prog
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let n = DAEMONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("{ns}-{name}-{n}"));
        let stdout_path = base.with_extension("out");
        let stderr_path = base.with_extension("err");
        let file = |p: &Path| {
            std::fs::File::create(p).map_err(|e| io(&format!("create {}", p.display()), e))
        };
        let child = netns::command(ns, &prog.to_string_lossy(), &args)
            .stdin(std::process::Stdio::null())
            .stdout(file(&stdout_path)?)
            .stderr(file(&stderr_path)?)
            .spawn()
            .map_err(|e| io(&format!("spawn {}", prog.display()), e))?;
        Ok(Daemon {
            name,
            child: Some(child),
            stdout_path,
            stderr_path,
        })
    }

    /// Lets the daemon run on after this value is gone; it ends with its namespace. Returns
    /// its stdout and stderr files, which stay (the caller removes them).
    pub fn detach(mut self) -> (PathBuf, PathBuf) {
        // Dropping a `Child` neither kills nor waits for it.
        self.child = None;
        (
            std::mem::take(&mut self.stdout_path),
            std::mem::take(&mut self.stderr_path),
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits (bounded) until `ready` holds, failing early if the daemon exits.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> Result<bool, LabError>,
    ) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready()? {
                return Ok(());
            }
            if !self.alive() {
                let out = self.collect(None)?;
                return Err(LabError::Daemon {
                    name: self.name.clone(),
                    detail: format!(
                        "exited ({}) before {what}; stderr:\n{}",
                        out.status, out.stderr
                    ),
                });
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout(timeout, format!("{} {what}", self.name)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for the daemon to exit by itself; kills it and fails after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<Stopped, LabError> {
        self.collect(Some(timeout))
    }

    /// Sends `signal`, waits (bounded) for the exit, and returns status and output.
    pub fn stop(&mut self, signal: i32, timeout: Duration) -> Result<Stopped, LabError> {
        if let Some(pid) = self.pid() {
            if self.alive() {
                // The child this value started: its pid cannot be reused before it is reaped.
                if let Some(sig) = rustix::process::Signal::from_named_raw(signal) {
                    labelflow_testkit::tools::signal(pid, sig);
                }
            }
        }
        self.collect(Some(timeout))
    }

    fn collect(&mut self, timeout: Option<Duration>) -> Result<Stopped, LabError> {
        let mut child = self.child.take().ok_or_else(|| LabError::Daemon {
            name: self.name.clone(),
            detail: "already stopped".into(),
        })?;
        let deadline = Instant::now() + timeout.unwrap_or(Duration::ZERO);
        let status = loop {
            if let Some(st) = child.try_wait().map_err(|e| io("wait", e))? {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let st = child.wait().map_err(|e| io("wait", e))?;
                let err = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
                return Err(LabError::Daemon {
                    name: self.name.clone(),
                    detail: format!(
                        "did not exit within {timeout:?} (killed: {st}); stderr:\n{err}"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = std::fs::read_to_string(&self.stdout_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        Ok(Stopped {
            status,
            stdout,
            stderr,
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.stdout_path);
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

static DAEMONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Starts `labelflow-probe` inside the gateway with the lab's groups and `extra` arguments,
/// and waits until it has bound every group.
pub fn start_probe(lab: &Lab, extra: &[String]) -> Result<Daemon, LabError> {
    let bin = find_binary("labelflow-probe")?;
    let mut args = Vec::new();
    for (g, label) in crate::rules::GROUPS {
        args.push("--group".to_owned());
        args.push(format!("{g}={label}"));
    }
    args.extend_from_slice(extra);
    let mut d = Daemon::start(lab, Role::Gw, &bin, &args)?;
    d.wait_until("binding its NFLOG groups", Duration::from_secs(10), || {
        let bound = bound_nflog_groups(lab)?;
        Ok(crate::rules::GROUPS.iter().all(|(g, _)| bound.contains(g)))
    })?;
    Ok(d)
}

/// Starts `labelflow-collector` inside the gateway on 127.0.0.1 (a port free there), its
/// store in `db`, and waits until its UDP socket is bound: what the probe sends from then on
/// is queued for it.
pub fn start_collector(lab: &Lab, db: &Path) -> Result<(Daemon, SocketAddr), LabError> {
    start_collector_with(lab, db, None)
}

/// [`start_collector`] with a configuration file (`--listen` and `--db` override its own).
pub fn start_collector_with(
    lab: &Lab,
    db: &Path,
    config: Option<&Path>,
) -> Result<(Daemon, SocketAddr), LabError> {
    let bin = find_binary("labelflow-collector")?;
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let port = netns::udp_socket(&lab.gw(), any, None)?
        .local_addr()
        .map_err(|e| io("local address", e))?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut args = vec![
        "--listen".to_owned(),
        addr.to_string(),
        "--db".to_owned(),
        db.display().to_string(),
    ];
    if let Some(c) = config {
        args.extend(["--config".to_owned(), c.display().to_string()]);
    }
    let mut d = Daemon::start(lab, Role::Gw, &bin, &args)?;
    let filter = format!("sport = :{port}");
    d.wait_until("binding its UDP socket", Duration::from_secs(10), || {
        let out = lab.exec(Role::Gw, "ss", &["-Hlun", &filter])?;
        Ok(!String::from_utf8_lossy(&out.stdout).trim().is_empty())
    })?;
    Ok((d, addr))
}

/// `labelflow-collector report --format json --by BY` over all time in day buckets.
pub fn collector_report(db: &Path, by: &str) -> Result<serde_json::Value, LabError> {
    let bin = find_binary("labelflow-collector")?;
    let db = db.display().to_string();
    let args = [
        "report",
        "--db",
        &db,
        "--by",
        by,
        "--from",
        "0",
        "--to",
        "4102444800",
        "--bucket",
        "1d",
        "--format",
        "json",
    ];
    let out = netns::run(None, &bin.to_string_lossy(), &args, None)?;
    serde_json::from_slice(&out.stdout).map_err(|e| LabError::Parse {
        what: "collector report",
        detail: e.to_string(),
    })
}

/// Reads every datagram queued on a (collector) socket without blocking.
pub fn drain_datagrams(sock: &UdpSocket) -> Result<Vec<Vec<u8>>, LabError> {
    sock.set_nonblocking(true)
        .map_err(|e| io("nonblocking", e))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => out.push(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(out),
            Err(e) => return Err(io("recv export", e)),
        }
    }
}

/// A UDP collector socket inside the gateway on 127.0.0.1 (ephemeral port), with a 16 MB
/// receive buffer so nothing the probe sends during a test is dropped.
pub fn collector_socket(lab: &Lab) -> Result<(UdpSocket, SocketAddr), LabError> {
    let sock = netns::udp_socket(
        &lab.gw(),
        "127.0.0.1:0".parse().expect("literal"),
        Some(16 << 20),
    )?;
    let addr = sock.local_addr().map_err(|e| io("local_addr", e))?;
    Ok((sock, addr))
}

/// Kernel state of one NFLOG group in the gateway (`/proc/net/netfilter/nfnetlink_log`)
/// plus the receive queue of the listener's netlink socket (`/proc/net/netlink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NflogGroupState {
    pub group: u16,
    pub portid: u32,
    /// Packets waiting in the kernel's batch for this group.
    pub queued: u32,
    /// Bytes queued on the listener's socket, not yet read.
    pub socket_rmem: u64,
    /// Drops on the listener's socket (whole batches).
    pub socket_drops: u64,
}

/// The state of `group`, if a listener binds it.
pub fn nflog_group_state(lab: &Lab, group: u16) -> Result<Option<NflogGroupState>, LabError> {
    let inst = lab.exec(Role::Gw, "cat", &["/proc/net/netfilter/nfnetlink_log"])?;
    let inst = String::from_utf8_lossy(&inst.stdout).into_owned();
    // group portid qlen copy_mode copy_range flush_timeout use
    let Some((portid, queued)) = inst.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first()?.parse::<u16>().ok()? == group)
            .then(|| Some((f.get(1)?.parse().ok()?, f.get(2)?.parse().ok()?)))?
    }) else {
        return Ok(None);
    };
    let nl = lab.exec(Role::Gw, "cat", &["/proc/net/netlink"])?;
    // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode; Eth 12 = NETLINK_NETFILTER.
    let (socket_rmem, socket_drops) = String::from_utf8_lossy(&nl.stdout)
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"12") && f.get(2)?.parse::<u32>().ok()? == portid)
                .then(|| Some((f.get(4)?.parse().ok()?, f.get(8)?.parse().ok()?)))?
        })
        .unwrap_or((0, 0));
    Ok(Some(NflogGroupState {
        group,
        portid,
        queued,
        socket_rmem,
        socket_drops,
    }))
}

/// Waits (bounded) until the group's kernel batch and the listener's socket queue are empty:
/// everything logged so far has been read by the listener (or dropped).
pub fn wait_nflog_drained(lab: &Lab, group: u16, timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        match nflog_group_state(lab, group)? {
            Some(s) if s.queued == 0 && s.socket_rmem == 0 => return Ok(()),
            None => return Ok(()),
            Some(_) if Instant::now() >= deadline => {
                return Err(LabError::Timeout(
                    timeout,
                    format!("NFLOG group {group} to drain"),
                ))
            }
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
