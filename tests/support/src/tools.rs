//! External programs and privileges a test needs. A test that cannot run fails with a
//! message saying what to install or how to run it; it never passes without testing.

use std::path::PathBuf;

/// The program's path if it is on `PATH`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Whether the program is on `PATH`.
pub fn on_path(program: &str) -> bool {
    find_program(program).is_some()
}

/// The program's path; fails the test, naming it, when it is not on `PATH`.
pub fn require_program(program: &str) -> PathBuf {
    find_program(program).unwrap_or_else(|| {
        panic!(
            "this test needs `{program}` on PATH: scripts/deps.sh installs the Debian packages \
             that provide it"
        )
    })
}

/// Whether the test runs as root (effective uid 0).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Sends `signal` to process `pid`, ignoring a process that has already exited.
pub fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Fails the test unless it runs as root; `why` names what needs it.
pub fn require_root(why: &str) {
    assert!(
        is_root(),
        "this test needs root ({why}): run it as root, e.g. `sudo bash scripts/test.sh`"
    );
}
