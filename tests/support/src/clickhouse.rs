//! ClickHouse servers (Debian `clickhouse-server`) under test: plain processes with a
//! configuration of their own (loopback, fresh HTTP, TCP and interserver ports, a data
//! directory under the test's), never the system service. Ready when `GET /ping` answers
//! `Ok.`; killed on drop.
//!
//! [`ClickHouse::cluster`] starts several servers that all know each other as the shards
//! of the `remote_servers` cluster [`CLUSTER`], for `Distributed` tables.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net::{self, PortTaken};
use crate::tools::require_program;
use crate::wait::poll_until;

/// How long a server may take to answer `/ping` after it was started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Name of the cluster of [`ClickHouse::cluster`].
pub const CLUSTER: &str = "labelflow_shards";

/// A running server.
#[derive(Debug)]
pub struct ClickHouse {
    child: Option<Child>,
    dir: PathBuf,
    pub http: u16,
    pub tcp: u16,
    log: PathBuf,
}

fn config(dir: &Path, http: u16, tcp: u16, inter: u16, shards: &[u16]) -> String {
    let remote = if shards.is_empty() {
        String::new()
    } else {
        let s: String = shards
            .iter()
            .map(|p| {
                format!("<shard><replica><host>127.0.0.1</host><port>{p}</port></replica></shard>")
            })
            .collect();
        format!("<remote_servers><{CLUSTER}>{s}</{CLUSTER}></remote_servers>")
    };
    let d = dir.display();
    format!(
        "<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <http_port>{http}</http_port><tcp_port>{tcp}</tcp_port>
  <interserver_http_port>{inter}</interserver_http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path><tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mlock_executable>false</mlock_executable>
  {remote}
</yandex>
"
    )
}

const USERS: &str = "<yandex>
  <profiles><default></default></profiles>
  <users>
    <default><password></password><networks><ip>127.0.0.1</ip></networks>
      <profile>default</profile><quota>default</quota></default>
    <labelflow><password>labelflow-test</password><networks><ip>127.0.0.1</ip></networks>
      <profile>default</profile><quota>default</quota></labelflow>
  </users>
  <quotas><default></default></quotas>
</yandex>
";

/// User and password of the second account every test server has.
pub const USER: (&str, &str) = ("labelflow", "labelflow-test");

impl ClickHouse {
    /// One server in `dir/clickhouse-PORT` on fresh ports.
    pub fn start(dir: &Path) -> ClickHouse {
        net::with_fresh_port("clickhouse-server", |http| {
            let (tcp, inter) = (net::candidate_port(), net::candidate_port());
            ClickHouse::launch(dir, http, tcp, inter, &[])
        })
    }

    /// `n` servers, each configured with all of them as the shards of [`CLUSTER`].
    pub fn cluster(dir: &Path, n: usize) -> Vec<ClickHouse> {
        for _ in 0..net::PORT_ATTEMPTS {
            let ports: Vec<(u16, u16, u16)> = (0..n)
                .map(|_| {
                    (
                        net::candidate_port(),
                        net::candidate_port(),
                        net::candidate_port(),
                    )
                })
                .collect();
            let tcps: Vec<u16> = ports.iter().map(|p| p.1).collect();
            let mut up = Vec::new();
            for &(http, tcp, inter) in &ports {
                match ClickHouse::launch(dir, http, tcp, inter, &tcps) {
                    Ok(s) => up.push(s),
                    Err(_) => break,
                }
            }
            if up.len() == n {
                return up;
            }
        }
        panic!("clickhouse cluster: ports kept being taken");
    }

    fn launch(
        dir: &Path,
        http: u16,
        tcp: u16,
        inter: u16,
        shards: &[u16],
    ) -> Result<ClickHouse, PortTaken> {
        let server = require_program("clickhouse-server");
        let dir = dir.join(format!("clickhouse-{http}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        std::fs::write(
            dir.join("config.xml"),
            config(&dir, http, tcp, inter, shards),
        )
        .unwrap();
        std::fs::write(dir.join("users.xml"), USERS).unwrap();
        let mut s = ClickHouse {
            child: None,
            log: dir.join("server.log"),
            dir,
            http,
            tcp,
        };
        s.spawn(&server)?;
        Ok(s)
    }

    fn spawn(&mut self, server: &Path) -> Result<(), PortTaken> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let mut child = Command::new(server)
            .arg(format!(
                "--config-file={}",
                self.dir.join("config.xml").display()
            ))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning clickhouse-server: {e}"));
        let mut exited = None;
        let ready = poll_until(READY_TIMEOUT, || {
            exited = child.try_wait().ok().flatten();
            exited.is_some() || self.ping()
        });
        let said = std::fs::read_to_string(&self.log).unwrap_or_default();
        match exited {
            Some(_) if net::says_addr_in_use(&said) => return Err(PortTaken(said)),
            Some(st) => panic!("clickhouse-server exited ({st}) while starting:\n{said}"),
            None if !ready => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("clickhouse-server did not answer /ping in {READY_TIMEOUT:?}:\n{said}")
            }
            None => {}
        }
        self.child = Some(child);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    /// Whether `GET /ping` answers `Ok.`.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.http)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if write!(s, "GET /ping HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.0 200") && out.ends_with("Ok.\n")
    }

    /// Run `sql` as the default user; the response body, or the server's error.
    pub fn query(&self, sql: &str) -> Result<String, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "POST /?wait_end_of_query=1 HTTP/1.0\r\nContent-Length: {}\r\n\r\n{sql}",
            sql.len()
        )
        .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        let (head, body) = out.split_once("\r\n\r\n").ok_or("no response")?;
        if head.starts_with("HTTP/1.0 200") {
            Ok(body.to_string())
        } else {
            Err(body.to_string())
        }
    }

    /// Stop the server (SIGKILL: an outage, not a clean shutdown) and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        let server = require_program("clickhouse-server");
        let ports_free = poll_until(READY_TIMEOUT, || {
            !net::port_in_use(self.http) && !net::port_in_use(self.tcp)
        });
        assert!(
            ports_free,
            "clickhouse ports {} / {} stayed busy",
            self.http, self.tcp
        );
        if let Err(PortTaken(said)) = self.spawn(&server) {
            panic!("clickhouse-server could not take its ports back:\n{said}");
        }
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.kill();
    }
}
