//! A throwaway PostgreSQL cluster for tests.
//!
//! Include it with `#[path = "common/pg.rs"] mod pg;`.
//!
//! - [`PgCluster::start`]: `initdb` into a temp dir under /tmp, then `pg_ctl start`, listening on a
//!   unix socket only (`listen_addresses = ''`), `fsync` on (durability tests mean it). When the
//!   tests run as root, initdb refuses, so the directory belongs to the `postgres` user and every
//!   PostgreSQL program runs through `runuser -u postgres --`.
//! - With `DATABASE_URL` set, that server is used instead; [`PgCluster::start_own`],
//!   [`PgCluster::stop`], [`PgCluster::start_again`], [`PgCluster::crash`] and
//!   [`PgCluster::pause`] then panic, since they need a cluster of their own.
//! - [`PgCluster::shared`]: one cluster per test binary for tests that never stop it;
//!   [`PgCluster::fresh_url`] gives each test its own schema in it.
//! - A cluster never outlives its test process: `Drop` stops it and removes its directory, and a
//!   watchdog process does the same if the test process dies first (or never drops it, as with
//!   [`PgCluster::shared`]). Clusters left behind by a test process that was killed before its
//!   watchdog started are removed by the next [`PgCluster::start`].
//!
//! Missing PostgreSQL binaries are a loud failure ("run ci/ensure-postgres"), never a skip.
#![allow(dead_code)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Where clusters live: `/tmp/ringport-pg-XXXX/{data,sock,log,owner.pid}`.
const DIR_PREFIX: &str = "ringport-pg-";

/// A PostgreSQL server for one test (or one test binary).
pub struct PgCluster {
    inner: Inner,
}

enum Inner {
    /// `DATABASE_URL`: someone else's server.
    External { url: String },
    /// Ours, in a temp dir.
    Owned(Owned),
}

struct Owned {
    /// Removed on drop (after the server stopped).
    dir: Option<tempfile::TempDir>,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    bin: PathBuf,
    /// Run PostgreSQL programs as the `postgres` user (we are root).
    as_postgres: bool,
    watchdog: Mutex<Option<Child>>,
}

impl PgCluster {
    /// A running server: `DATABASE_URL` if set, else a fresh cluster of our own.
    pub fn start() -> PgCluster {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            if !url.trim().is_empty() {
                return PgCluster {
                    inner: Inner::External { url },
                };
            }
        }
        PgCluster {
            inner: Inner::Owned(Owned::create()),
        }
    }

    /// A cluster of our own even when `DATABASE_URL` is set (then it panics at once, before the
    /// test touches that server): for tests that stop, crash or restart PostgreSQL.
    pub fn start_own() -> PgCluster {
        let cluster = PgCluster::start();
        cluster.owned("start_own");
        cluster
    }

    /// One cluster for the whole test binary, never stopped by tests (use [`PgCluster::start`]
    /// for a test that stops it). Its watchdog removes it when the test process exits.
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(PgCluster::start)
    }

    /// A libpq `key=value` string: `host=<socket dir> port=<port> user=postgres dbname=postgres`
    /// (or `DATABASE_URL` as given).
    pub fn url(&self) -> String {
        match &self.inner {
            Inner::External { url } => url.clone(),
            Inner::Owned(owned) => format!(
                "host={} port={} user=postgres dbname=postgres",
                owned.socket_dir.display(),
                owned.port
            ),
        }
    }

    /// A URL whose tables live in a new, empty schema of their own (named after `label`), so tests
    /// sharing one cluster cannot see each other's users or keys.
    pub fn fresh_url(&self, label: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let cleaned: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(30)
            .collect();
        let schema = format!(
            "t_{cleaned}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut client = postgres::Client::connect(&self.url(), postgres::NoTls)
            .unwrap_or_else(|error| panic!("connect to the test PostgreSQL: {error:?}"));
        client
            .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .unwrap_or_else(|error| panic!("create schema {schema}: {error}"));
        let config: postgres::Config = self.url().parse().expect("the cluster URL parses");
        let mut url = key_value_url(&config);
        url.push_str(&format!(" options='-c search_path={schema}'"));
        url
    }

    /// Stops the server (`pg_ctl stop -m fast`: sessions are terminated, as in an operator's
    /// restart). Panics under `DATABASE_URL`.
    pub fn stop(&self) {
        self.owned("stop")
            .pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]);
    }

    /// Stops the server the way a crash or `kill -9` would (`pg_ctl stop -m immediate`: no
    /// shutdown checkpoint; committed data must come back from the WAL). Panics under
    /// `DATABASE_URL`.
    pub fn crash(&self) {
        self.owned("crash")
            .pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "60"]);
    }

    /// Starts the server again after [`PgCluster::stop`] or [`PgCluster::crash`], same socket
    /// and port. Panics under `DATABASE_URL`.
    pub fn start_again(&self) {
        self.owned("start_again").start_server();
    }

    /// Pauses the server (SIGSTOP to the postmaster and every process it started) until the
    /// guard drops: a PostgreSQL that keeps its connections open but answers nothing, like one
    /// hung on I/O or behind a dead network path. Panics under `DATABASE_URL`.
    pub fn pause(&self) -> Paused {
        let owned = self.owned("pause");
        let postmaster = std::fs::read_to_string(owned.data.join("postmaster.pid"))
            .expect("read postmaster.pid: is the cluster running?")
            .lines()
            .next()
            .expect("postmaster.pid names the postmaster")
            .trim()
            .to_string();
        let mut pids = vec![postmaster.clone()];
        for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if parent == Some(postmaster.as_str()) {
                pids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        let paused = Paused { pids };
        paused.signal("STOP");
        paused
    }

    /// A URL for a new superuser `role` that must log in with `password`, checked by `method`
    /// (`scram-sha-256` or `md5`, also how the password is stored), where every other role is
    /// trusted. Panics under `DATABASE_URL`.
    pub fn login_with_password(&self, role: &str, password: &str, method: &str) -> String {
        let owned = self.owned("login_with_password");
        let mut client = postgres::Client::connect(&self.url(), postgres::NoTls)
            .unwrap_or_else(|error| panic!("connect to the test PostgreSQL: {error:?}"));
        client
            .batch_execute(&format!(
                "SET password_encryption = '{method}';
                 CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'"
            ))
            .unwrap_or_else(|error| panic!("create role {role}: {error}"));
        let hba = owned.data.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(&hba, format!("local all {role} {method}\n{rules}"))
            .expect("write pg_hba.conf");
        owned.pg_ctl(&["reload"]);
        format!(
            "host={} port={} user={role} password={password} dbname=postgres",
            owned.socket_dir.display(),
            owned.port
        )
    }

    fn owned(&self, what: &str) -> &Owned {
        match &self.inner {
            Inner::Owned(owned) => owned,
            Inner::External { .. } => panic!(
                "PgCluster::{what} needs a throwaway cluster of its own, but DATABASE_URL is set: \
                 unset DATABASE_URL to run this test"
            ),
        }
    }
}

/// A paused cluster (see [`PgCluster::pause`]); resumes on drop.
pub struct Paused {
    pids: Vec<String>,
}

impl Paused {
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .args(&self.pids)
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {:?}", self.pids);
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.signal("CONT");
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // Immediate: the directory goes next, nothing in it needs to survive.
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate", "-w", "-t", "30"])
            .output();
        let watchdog = self
            .watchdog
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(mut watchdog) = watchdog {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

impl Owned {
    fn create() -> Owned {
        let bin = find_bin_dir();
        let as_postgres = running_as_root();
        remove_abandoned_clusters(&bin, as_postgres);

        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in("/tmp")
            .expect("create a temp dir under /tmp for PostgreSQL");
        let base = dir.path().to_path_buf();
        let data = base.join("data");
        let socket_dir = base.join("sock");
        let log = base.join("log");
        std::fs::create_dir(&socket_dir).expect("create the socket dir");
        std::fs::write(base.join("owner.pid"), std::process::id().to_string())
            .expect("write owner.pid");
        if as_postgres {
            let (uid, gid) = postgres_user_ids();
            for path in [&base, &socket_dir] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|error| {
                    panic!("chown {} to postgres: {error}", path.display())
                });
            }
        }
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700))
            .expect("chmod the cluster dir");

        let port = free_port();
        let mut owned = Owned {
            dir: Some(dir),
            data,
            socket_dir,
            log,
            port,
            bin,
            as_postgres,
            watchdog: Mutex::new(None),
        };
        owned.start_watchdog();
        owned.init();
        owned.start_server();
        owned
    }

    /// `program` from the PostgreSQL bin dir, as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        command
            .stdin(Stdio::null())
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT");
        command
    }

    fn init(&self) {
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        check("initdb", &output, None);
        let settings = format!(
            "\n# ringport test cluster\n\
             listen_addresses = ''\n\
             unix_socket_directories = '{}'\n\
             port = {}\n\
             fsync = on\n\
             max_connections = 500\n\
             shared_buffers = 32MB\n\
             log_min_messages = warning\n",
            self.socket_dir.display(),
            self.port
        );
        let conf = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&conf, text).expect("write postgresql.conf");
    }

    fn start_server(&self) {
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("run pg_ctl start");
        check("pg_ctl start", &output, Some(&self.log));
    }

    fn pg_ctl(&self, args: &[&str]) {
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(args)
            .output()
            .expect("run pg_ctl");
        check(
            &format!("pg_ctl {}", args.join(" ")),
            &output,
            Some(&self.log),
        );
    }

    /// A shell that waits for this test process to exit, then stops the cluster and removes its
    /// directory: covers a panic that skips `Drop`, `PgCluster::shared`, and a killed test.
    fn start_watchdog(&mut self) {
        let base = self.dir.as_ref().expect("dir").path();
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = if self.as_postgres {
            format!(
                "runuser -u postgres -- '{}' -D '{}' stop -m immediate -w -t 30",
                pg_ctl.display(),
                self.data.display()
            )
        } else {
            format!(
                "'{}' -D '{}' stop -m immediate -w -t 30",
                pg_ctl.display(),
                self.data.display()
            )
        };
        let child = after_test_process(&format!("{stop}; rm -rf '{}'", base.display()));
        *self.watchdog.get_mut().unwrap() = Some(child);
    }
}

/// A shell that runs `script` once this test process has exited, however it exits (a panic that
/// skips `Drop`, `kill -9`): the watchdog of whatever a test starts that must not outlive it.
/// Kill the returned child when the test cleans up after itself.
pub fn after_test_process(script: &str) -> Child {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {script}",
        pid = std::process::id()
    );
    // Its own process group: a signal to the test's group (Ctrl-C, `timeout`) must not take the
    // watchdog down with the test.
    Command::new("sh")
        .args(["-c", &script])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a watchdog")
}

/// Panics with the program's output (and the server log) unless it succeeded.
fn check(what: &str, output: &Output, log: Option<&Path>) {
    if output.status.success() {
        return;
    }
    let log = log
        .and_then(|log| std::fs::read_to_string(log).ok())
        .unwrap_or_default();
    panic!(
        "{what} failed ({}):\n{}{}\nserver log:\n{log}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The directory holding initdb, pg_ctl and postgres: from PATH, else the newest
/// /usr/lib/postgresql/*/bin.
fn find_bin_dir() -> PathBuf {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.is_file() {
                // Debian links /usr/bin/initdb-like wrappers; the real dir has postgres too.
                if let Ok(real) = std::fs::canonicalize(&initdb) {
                    if let Some(real_dir) = real.parent() {
                        if has_all(real_dir) {
                            return real_dir.to_path_buf();
                        }
                    }
                }
                if has_all(&dir) {
                    return dir;
                }
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_all(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL not found: run ci/ensure-postgres (needs initdb, pg_ctl and postgres on \
             PATH or under /usr/lib/postgresql/*/bin), or set DATABASE_URL"
        ),
    }
}

fn running_as_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn postgres_user_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            output.status.success(),
            "running as root, the test cluster must run as the 'postgres' user, which does not \
             exist: run ci/ensure-postgres (the postgresql package creates it)"
        );
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("id prints a number")
    };
    (id("-u"), id("-g"))
}

/// A port number no TCP listener uses now. The server listens on a unix socket only, so the
/// port only names the socket file; a free one keeps it unique anyway.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Removes clusters whose test process is gone (killed before its watchdog ran, or the watchdog
/// killed with it).
fn remove_abandoned_clusters(bin: &Path, as_postgres: bool) {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let Ok(owner) = std::fs::read_to_string(dir.join("owner.pid")) else {
            continue;
        };
        let Ok(owner) = owner.trim().parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let data = dir.join("data");
        if data.join("postmaster.pid").exists() {
            let pg_ctl = bin.join("pg_ctl");
            let mut command = if as_postgres {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(pg_ctl);
                command
            } else {
                Command::new(pg_ctl)
            };
            let _ = command
                .arg("-D")
                .arg(&data)
                .args(["stop", "-m", "immediate", "-w", "-t", "30"])
                .stdin(Stdio::null())
                .output();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `config` as a libpq `key=value` string (with any password), values quoted.
fn key_value_url(config: &postgres::Config) -> String {
    fn quote(value: &str) -> String {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
    let mut parts = Vec::new();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        parts.push(format!("host={}", quote(&hosts.join(","))));
    }
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        parts.push(format!("port={}", ports.join(",")));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!(
            "password={}",
            quote(&String::from_utf8_lossy(password))
        ));
    }
    if let Some(dbname) = config.get_dbname() {
        parts.push(format!("dbname={}", quote(dbname)));
    }
    parts.join(" ")
}
