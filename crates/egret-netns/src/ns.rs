//! One network namespace: creation, removal on drop, running code and commands inside it.

use crate::Error;
use std::fs::File;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A named network namespace (`/run/netns/NAME`) created by this process and deleted when
/// dropped, also while unwinding from a panic. Every link inside it goes away with it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Deleted on drop (created here and not made persistent).
    owned: bool,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `egret-TAG-PID-SEQ`, so parallel tests and several
/// processes never collide.
pub fn unique_prefix(tag: &str) -> String {
    let tag: String = tag.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(24).collect();
    format!("egret-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

fn run(cmd: &mut Command) -> Result<String, Error> {
    let display = format!("{cmd:?}");
    let out: Output = cmd.stdin(Stdio::null()).output().map_err(|e| Error::Spawn(display.clone(), e))?;
    stdout_of(display, out)
}

/// The standard output of a finished command, or an error carrying its standard error.
fn stdout_of(command: String, out: Output) -> Result<String, Error> {
    if !out.status.success() {
        return Err(Error::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Netns {
    /// Creates the namespace `name` (it must not exist) and brings its loopback up.
    pub fn create(name: &str) -> Result<Netns, Error> {
        if !name.starts_with("egret-") {
            return Err(Error::Name(name.to_string()));
        }
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Netns { name: name.to_string(), owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on an existing namespace (made by an earlier process, e.g. a running lab). It is
    /// not deleted on drop.
    pub fn attach(name: &str) -> Result<Netns, Error> {
        if !name.starts_with("egret-") {
            return Err(Error::Name(name.to_string()));
        }
        let path = format!("/run/netns/{name}");
        if !std::path::Path::new(&path).exists() {
            return Err(Error::Open(path, std::io::Error::from(std::io::ErrorKind::NotFound)));
        }
        Ok(Netns { name: name.to_string(), owned: false })
    }

    /// Keeps the namespace after this handle is dropped (a lab outlives the command that built
    /// it); deleting it is then someone else's job ([`Netns::delete`]).
    pub fn persist(mut self) -> Netns {
        self.owned = false;
        self
    }

    /// Deletes the namespace now (and every link inside it).
    pub fn delete(mut self) -> Result<(), Error> {
        self.owned = false;
        run(Command::new("ip").args(["netns", "del", &self.name])).map(|_| ())
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS...` and returns its standard output.
    pub fn ip(&self, args: &[&str]) -> Result<String, Error> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs `PROGRAM ARGS...` inside the namespace and returns its standard output.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, Error> {
        run(self.command(program).args(args))
    }

    /// Runs `PROGRAM ARGS...` inside the namespace with `input` on its standard input.
    pub fn exec_stdin(&self, program: &str, args: &[&str], input: &str) -> Result<String, Error> {
        use std::io::Write;
        let mut cmd = self.command(program);
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let display = format!("{cmd:?}");
        let mut child = cmd.spawn().map_err(|e| Error::Spawn(display.clone(), e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).map_err(|e| Error::Spawn(display.clone(), e))?;
        }
        let out = child.wait_with_output().map_err(|e| Error::Spawn(display.clone(), e))?;
        stdout_of(display, out)
    }

    /// A command that runs inside the namespace (`ip netns exec NAME PROGRAM`), to spawn
    /// long-running programs (iperf3, agents).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Spawns `PROGRAM ARGS...` inside the namespace with output discarded. The caller owns the
    /// child (see [`KillOnDrop`]).
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<KillOnDrop, Error> {
        let mut cmd = self.command(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| Error::Spawn(format!("{cmd:?}"), e))?;
        Ok(KillOnDrop(child))
    }

    /// Writes a sysctl of this namespace, e.g. `net.ipv4.ip_forward`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Runs `f` on a new thread that has entered this namespace and returns its result.
    /// Sockets created inside stay in this namespace wherever they are used afterwards.
    pub fn run<F, R>(&self, f: F) -> Result<R, Error>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).map_err(|e| Error::Open(path.clone(), e))?;
        std::thread::scope(|s| {
            s.spawn(move || {
                // setns on this thread only: the caller's thread keeps its namespace.
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::Setns(self.name.clone(), e))?;
                Ok(f())
            })
            .join()
            .map_err(|_| Error::Panicked(self.name.clone()))?
        })
    }

    /// Spawns a detached thread inside this namespace running `f` (servers).
    pub fn spawn_thread<F>(&self, f: F) -> Result<std::thread::JoinHandle<()>, Error>
    where
        F: FnOnce() + Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).map_err(|e| Error::Open(path.clone(), e))?;
        let name = self.name.clone();
        Ok(std::thread::spawn(move || match nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
            Ok(()) => f(),
            Err(e) => tracing::error!(netns = %name, error = %e, "setns failed"),
        }))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            tracing::warn!(netns = %self.name, error = %e, "could not delete network namespace");
        }
    }
}

/// A child process killed and reaped when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
