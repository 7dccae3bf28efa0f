//! nfcapd (Debian `nfdump`) as a collector under test, and nfdump over everything it wrote.
//!
//! nfcapd rotates its file every `-t` seconds, aligned to the clock: a run that crosses the
//! boundary leaves two files, one of them possibly empty. [`nfdump`] therefore reads the
//! whole directory (`-R`), never a single file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::net::{self, PortTaken, UdpSocketInfo};
use crate::tools::require_program;
use crate::wait::{poll_until, POLL};

/// How long nfcapd may take to bind its socket, or to read what is queued on it.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A running nfcapd bound to 127.0.0.1 on its own port.
#[derive(Debug)]
pub struct Nfcapd {
    child: Option<Child>,
    port: u16,
    data: PathBuf,
    log: PathBuf,
}

/// What a stopped nfcapd left.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    /// The directory holding its files, for [`nfdump`].
    pub data: PathBuf,
    /// Its stdout and stderr.
    pub log: String,
}

impl Nfcapd {
    /// Starts nfcapd writing into `dir/data` (created), its messages in `dir/nfcapd-PORT.log`,
    /// inside network namespace `netns` when given (`ip netns exec` execs in place, so the
    /// child's pid is nfcapd's), with `extra` arguments (e.g. `-B 8000000`). The port is
    /// fresh, and another one is tried when nfcapd finds it taken. Returns once nfcapd owns a
    /// socket bound to it.
    pub fn start(dir: &Path, netns: Option<&str>, extra: &[&str]) -> Nfcapd {
        let nfcapd = require_program("nfcapd");
        let data = dir.join("data");
        std::fs::create_dir_all(&data)
            .unwrap_or_else(|e| panic!("creating {}: {e}", data.display()));
        net::with_fresh_port("nfcapd", |port| {
            let log = dir.join(format!("nfcapd-{port}.log"));
            let mut cmd = match netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns]).arg(&nfcapd);
                    c
                }
                None => Command::new(&nfcapd),
            };
            let out = std::fs::File::create(&log)
                .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
            let err = out.try_clone().expect("dup log file");
            let child = cmd
                .arg("-w")
                .arg(&data)
                .args(["-b", "127.0.0.1", "-p", &port.to_string(), "-t", "3600"])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("spawning nfcapd: {e}"));
            let mut d = Nfcapd {
                child: Some(child),
                port,
                data: data.clone(),
                log,
            };
            d.wait_bound()?;
            Ok(d)
        })
    }

    /// nfcapd's process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits until nfcapd owns its socket; [`PortTaken`] when it exited saying so.
    fn wait_bound(&mut self) -> Result<(), PortTaken> {
        let (pid, port) = (self.pid(), self.port);
        let mut exited = None;
        let child = self.child.as_mut().expect("running");
        let bound = poll_until(READY_TIMEOUT, || {
            if net::udp_socket_of(pid, port).is_some() {
                return true;
            }
            exited = child.try_wait().ok().flatten();
            exited.is_some()
        });
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        match exited {
            Some(_) if net::says_addr_in_use(&log) => {
                self.child = None;
                Err(PortTaken(log))
            }
            Some(st) => panic!("nfcapd exited ({st}) before binding port {port}:\n{log}"),
            None if !bound => {
                panic!("nfcapd did not bind port {port} in {READY_TIMEOUT:?}:\n{log}")
            }
            None => Ok(()),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its socket as the kernel lists it.
    pub fn socket(&self) -> Option<UdpSocketInfo> {
        net::udp_socket_of(self.pid(), self.port)
    }

    /// Waits until nfcapd has read and processed every datagram queued on its socket (sent
    /// datagrams are queued when `send` returns on loopback): the queue is empty and nfcapd
    /// waits for more. Fails when the kernel dropped any.
    pub fn wait_drained(&self) {
        let mut last = None;
        let drained = poll_until(READY_TIMEOUT, || {
            last = self.socket();
            last.is_some_and(|s| s.rx_queue == 0) && net::waiting_for_input(self.pid())
        });
        assert!(drained, "nfcapd did not read its socket: {last:?}");
        let drops = last.map_or(0, |s| s.drops);
        assert_eq!(drops, 0, "the kernel dropped {drops} datagrams for nfcapd");
    }

    /// SIGTERM (repeated until it exits, bounded): nfcapd closes and renames its file.
    pub fn stop(mut self) -> Stopped {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + READY_TIMEOUT;
        let status = loop {
            // The pid of a child not yet reaped cannot be reused.
            crate::tools::signal(child.id(), rustix::process::Signal::TERM);
            let exited = poll_until(Duration::from_millis(500), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if exited {
                break child.wait().expect("reap nfcapd");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nfcapd did not stop on SIGTERM within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(POLL);
        };
        Stopped {
            status,
            data: self.data.clone(),
            log: std::fs::read_to_string(&self.log).unwrap_or_default(),
        }
    }
}

impl Drop for Nfcapd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Stopped {
    /// `nfdump -R DATA ARGS` over every file nfcapd wrote; fails when nfcapd did not exit
    /// cleanly, wrote no file, or nfdump fails.
    pub fn nfdump(&self, args: &[&str]) -> String {
        assert!(
            self.status.success(),
            "nfcapd: {}\n{}",
            self.status,
            self.log
        );
        let files = std::fs::read_dir(&self.data)
            .map(|d| d.filter_map(Result::ok).count())
            .unwrap_or(0);
        assert!(
            files > 0,
            "nfcapd wrote no file in {}; it said:\n{}",
            self.data.display(),
            self.log
        );
        nfdump(&self.data, args)
    }
}

/// `nfdump -R DIR ARGS`: every file in `dir`; its stdout.
pub fn nfdump(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(require_program("nfdump"))
        .arg("-R")
        .arg(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running nfdump: {e}"));
    assert!(
        out.status.success(),
        "nfdump -R {} {args:?}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
