//! The command line: `serve`, `user`, `probe`, and the parsers for sizes and durations.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde::{Serialize, Serializer};

/// ringport: a RESP session server on per-core io_uring rings.
#[derive(Debug, Parser)]
#[command(name = "ringport", version = crate::version::LONG, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    #[command(args_override_self = true)]
    Serve(Box<ServeArgs>),
    /// Manage users (in the embedded store or PostgreSQL).
    User(UserArgs),
    /// Print what this kernel supports and which path each operation will take.
    Probe(ProbeArgs),
    /// Print the version, the git commit it was built from and what it was built with.
    Version,
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Run a command with io_uring_setup denied (EPERM), as under Docker 25+'s default seccomp
    /// profile: `ringport deny-io-uring -- ringport serve` shows the epoll fallback.
    DenyIoUring {
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

/// `ringport config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate a TOML config file and print the effective `serve` settings.
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// Where the store lives (shared by `serve` and `user`).
#[derive(Debug, Clone, Args, Serialize)]
pub struct StoreArgs {
    /// Directory of the embedded store.
    #[arg(long, default_value = "./ringport-data", global = true)]
    pub data: PathBuf,
    /// `embedded` (default) or a PostgreSQL URL (`postgres://user@host:port/db` or
    /// `host=/path/to/socket ...`); also read from RINGPORT_STORE_URL.
    #[arg(long, env = "RINGPORT_STORE_URL", global = true)]
    #[serde(serialize_with = "redacted_store")]
    pub store: Option<String>,
}

/// Which I/O backend to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// io_uring when it can be set up, else epoll with a warning.
    Auto,
    /// io_uring only; fail if it cannot be set up.
    Uring,
    /// epoll only.
    Epoll,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// When text logs carry ANSI colour codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogColor {
    /// Only when stderr is a terminal, so a journal or a redirected file gets plain text.
    Auto,
    Always,
    Never,
}

impl LogColor {
    /// Whether to colour, for a writer that is (or is not) a terminal.
    pub fn colour(self, terminal: bool) -> bool {
        match self {
            LogColor::Auto => terminal,
            LogColor::Always => true,
            LogColor::Never => false,
        }
    }
}

/// How pool threads compete for CPU with the rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolPriority {
    /// SCHED_IDLE: only cores the rings leave idle (a busy box can starve the pools).
    Idle,
    /// SCHED_BATCH at nice 19: the rings get ~98% of a contended core, the pools still progress.
    Batch,
    /// The same as the rings.
    Normal,
}

impl PoolPriority {
    pub fn thread_priority(self) -> ringport_ring::ThreadPriority {
        match self {
            PoolPriority::Idle => ringport_ring::ThreadPriority::Idle,
            PoolPriority::Batch => ringport_ring::ThreadPriority::Batch,
            PoolPriority::Normal => ringport_ring::ThreadPriority::Normal,
        }
    }
}

/// `ringport serve`. Every flag can also be given in the `--config` file, under the flag's name
/// (`listen = "0.0.0.0:6380"`, `auth-timeout = "5s"`); flags on the command line win.
#[derive(Debug, Clone, Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServeArgs {
    /// A TOML file holding `serve` settings; flags given on the command line override it.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on (plain TCP).
    #[arg(long, default_value = "127.0.0.1:6380")]
    pub listen: SocketAddr,
    /// Also serve TLS on this address (needs --tls-cert and --tls-key).
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,
    /// Serve TLS only: no plain --listen port (needs --tls-listen).
    #[arg(long)]
    pub no_plain: bool,
    /// The TLS port's certificate chain (PEM); reread on SIGHUP.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM); reread on SIGHUP.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM): when given, every TLS client must present a certificate they
    /// signed.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Number of rings (default: one per usable core).
    #[arg(long)]
    pub rings: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    pub store: StoreArgs,
    /// Store worker threads, one store connection each (default: 2 x cores).
    #[arg(long)]
    pub store_threads: Option<usize>,
    /// On PostgreSQL, GETs go through the store workers' read lane as other store commands do,
    /// instead of each ring's own connection (ring reads, the default: see the README). Fewer
    /// GETs per query through the rings' connections cost PostgreSQL more per GET; the lane
    /// spends ringport's CPU and wake-ups instead.
    #[arg(long)]
    pub no_ring_reads: bool,
    /// A store command whose store call has not answered after this long (plus SLEEP's own
    /// time), or that waits in the queue while every worker is stuck that long, answers
    /// `-ERR store unavailable` (a paused or wedged PostgreSQL keeps its connections open, so
    /// nothing else would notice).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    #[serde(serialize_with = "duration_text")]
    pub store_timeout: Duration,
    /// Store jobs queued at most before commands get -BUSY.
    #[arg(long, default_value_t = 65536)]
    pub store_queue: usize,
    /// Compute worker threads (default: one per core).
    #[arg(long)]
    pub compute_threads: Option<usize>,
    /// Compute jobs queued or running at most before commands get -BUSY.
    #[arg(long, default_value_t = 65536)]
    pub compute_queue: usize,
    /// Threads that verify AUTH passwords (argon2id), apart from the compute pool so that a
    /// flood of heavy commands cannot delay a login (default: a quarter of the cores, at least 1).
    #[arg(long)]
    pub auth_threads: Option<usize>,
    /// CPU priority of the compute pool's threads against the rings: `batch` (SCHED_BATCH,
    /// nice 19), `idle` (SCHED_IDLE) or `normal` (see docs/deploy.md). AUTH and store threads
    /// keep the rings' priority.
    #[arg(long, value_enum, default_value = "batch")]
    pub pool_priority: PoolPriority,
    /// Close connections that have not authenticated within this time (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "duration_text")]
    pub auth_timeout: Duration,
    /// Close authenticated sessions idle for this long (0 = never).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    #[serde(serialize_with = "duration_text")]
    pub idle_timeout: Duration,
    /// Close authenticated sessions whose partial command waits longer than this for its
    /// remaining bytes (slowloris protection; 0 = never).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "duration_text")]
    pub request_timeout: Duration,
    /// Failed AUTH attempts per (source address, user) per minute, across connections, before
    /// that pair's further failures are answered `--auth-failure-delay` late (0 = no limit).
    /// A correct password is never slowed or refused by it.
    #[arg(long, default_value_t = 60)]
    pub auth_failures_per_minute: u32,
    /// How late a failure past `--auth-failures-per-minute` is answered (e.g. 1s; 0 = at once).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    #[serde(serialize_with = "duration_text")]
    pub auth_failure_delay: Duration,
    /// Failed AUTH attempts per user per minute, from all addresses together, before the account
    /// is under attack: then AUTH for it is refused unchecked for the rest of the minute, except
    /// with credentials that verified before (0 = no limit).
    #[arg(long, default_value_t = 300)]
    pub auth_user_failures_per_minute: u32,
    /// Most sessions at once (over all rings); more are refused with an error.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_sessions: usize,
    /// Largest bulk string a client may send (e.g. 16mb).
    #[arg(long, default_value = "16mb", value_parser = parse_size)]
    pub proto_max_bulk_len: usize,
    /// Replies queued for one session at most; past it the session is closed.
    #[arg(long, default_value = "64mb", value_parser = parse_size)]
    pub max_output_buffer: usize,
    /// Unprocessed input held for one session at most (pipelined commands waiting behind a
    /// slow one); past it the session is closed.
    #[arg(long, default_value = "64mb", value_parser = parse_size)]
    pub max_query_buffer: usize,
    /// Before AUTH: most arguments in one command (HELLO 3 AUTH user pass SETNAME name is 7);
    /// more is a protocol error and a close, so an unauthenticated peer costs almost nothing.
    #[arg(long, default_value_t = 10)]
    pub preauth_max_args: usize,
    /// Before AUTH: longest bulk argument, and longest inline line (e.g. 4kb).
    #[arg(long, default_value = "4kb", value_parser = parse_size)]
    pub preauth_max_bulk_len: usize,
    /// Before AUTH: unprocessed input held for one session at most (bytes sent behind an AUTH
    /// being verified).
    #[arg(long, default_value = "1mb", value_parser = parse_size)]
    pub preauth_max_query_buffer: usize,
    /// Failed AUTH attempts allowed on one connection before it is closed.
    #[arg(long, default_value_t = 10)]
    pub max_auth_failures: u32,
    /// How long SIGTERM waits for sessions to finish before cutting them.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "duration_text")]
    pub drain_timeout: Duration,
    /// On SIGTERM, how long `/ready` answers 503 while the server still accepts and serves as
    /// before, so a load balancer's health check (or Kubernetes) takes it out of rotation
    /// before it stops accepting; then the drain begins. A second signal ends it early. 0: stop
    /// accepting at once.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    #[serde(serialize_with = "duration_text")]
    pub drain_grace: Duration,
    /// Page cache of the embedded store (redb), e.g. 64mb. redb's own default is 1 GiB, which
    /// a few large values fill and which is never given back.
    #[arg(long, default_value = "64mb", value_parser = parse_size)]
    pub embedded_cache_size: usize,
    /// I/O backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Fast paths to switch off (comma-separated: multishot-accept, multishot-recv, buf-ring,
    /// single-issuer, defer-taskrun, coop-taskrun, ext-arg, enter-wait, min-wait,
    /// direct-descriptors, incremental-buffers, busy-tick).
    #[arg(long, default_value = "")]
    pub uring_disable: String,
    /// Under load, let a ring's wait collect completions for up to 20 µs (io_uring min-wait,
    /// 6.12+). Off by default: on a 2-core VM it nearly halved io_uring_enter calls per request
    /// but cost 20-40% more CPU per request (README, "Kernel compatibility").
    #[arg(long)]
    pub uring_min_wait: bool,
    /// Behave like a kernel of this version: 5.10, 5.15, 6.1 or newest.
    #[arg(long, default_value = "newest")]
    pub kernel_profile: String,
    /// Provided receive buffers per ring (a power of two). Default: 64 where the kernel consumes
    /// them incrementally (6.12+: a receive takes only the bytes it brings), else 1024 (each
    /// receive takes a whole buffer).
    #[arg(long)]
    pub recv_buffers: Option<u16>,
    /// Size of each receive buffer. Default: 64kb where the kernel consumes them incrementally,
    /// else 16kb.
    #[arg(long, value_parser = parse_size)]
    pub recv_buffer_size: Option<usize>,
    /// Testing aid: make buffer-ring registration fail with EINVAL (as some distribution
    /// kernels do) to exercise the fallback.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub inject_bufring_einval: bool,
    /// Testing aid: allow `DEBUG` (Redis's `enable-debug-command`); its `PANIC-JOB` makes a pool
    /// job panic, and exists only in builds with debug assertions.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub enable_debug_command: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// First start only (a store without users): the first user `admin` gets the password on
    /// this file's first line. Without it (and without RINGPORT_ADMIN_PASSWORD) a random one is
    /// written to DATA/admin-password, readable only by this user.
    #[arg(long, env = "RINGPORT_ADMIN_PASSWORD_FILE")]
    pub admin_password_file: Option<PathBuf>,
    /// Do not serve DATA/admin.sock (where `ringport user` manages users while the server runs).
    #[arg(long)]
    pub no_admin_socket: bool,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Colour in text logs: `auto` (only when stderr is a terminal), `always`, `never`.
    #[arg(long, value_enum, default_value_t = LogColor::Auto)]
    pub log_color: LogColor,
}

/// `ringport user ...`.
#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(subcommand)]
    pub action: UserAction,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// User management actions. Passwords are read from stdin when it is not a terminal, otherwise
/// prompted for.
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Add a user (fails if it exists).
    Add {
        /// User name.
        name: String,
        /// Make the user an admin (may manage users with ACL SETUSER ...).
        #[arg(long)]
        admin: bool,
    },
    /// Delete a user.
    Del {
        /// User name.
        name: String,
    },
    /// List users.
    List,
    /// Change a user's password.
    Passwd {
        /// User name.
        name: String,
    },
}

/// `ringport probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Fast paths to switch off, as for `serve`.
    #[arg(long, default_value = "")]
    pub uring_disable: String,
    /// Kernel profile, as for `serve`.
    #[arg(long, default_value = "newest")]
    pub kernel_profile: String,
}

fn duration_text<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        s.serialize_str(&format!("{}s", ms / 1000))
    } else {
        s.serialize_str(&format!("{ms}ms"))
    }
}

impl ServeArgs {
    /// Each ring's receive buffers, (count, size): as given, else the defaults for how the kernel
    /// consumes them. Incrementally, a few large buffers hold many sessions' small commands
    /// (4 MiB per ring); otherwise each receive takes a whole buffer, so a ring needs many
    /// (16 MiB per ring).
    pub fn recv_buffer_shape(&self, incremental: bool) -> (u16, usize) {
        let (count, size) = if incremental {
            (64, 64 << 10)
        } else {
            (1024, 16 << 10)
        };
        (
            self.recv_buffers.unwrap_or(count),
            self.recv_buffer_size.unwrap_or(size),
        )
    }
}

/// Hides a password in a store URL (`postgres://u:secret@h/db`, `...?password=secret`,
/// `password=secret`): the store layer's masking, so `config check` and the logs agree.
pub fn redact_store_url(url: &str) -> String {
    crate::store::redact_password(url)
}

fn redacted_store<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_str(&redact_store_url(u)),
        None => s.serialize_str("embedded"),
    }
}

/// Reads a TOML config file and turns it into `serve` flags (`--key value`), so the file and
/// the command line go through one parser. Unknown keys and values of the wrong kind are errors
/// that name the key and the file.
pub fn config_file_flags(path: &std::path::Path) -> Result<Vec<String>, String> {
    let where_ = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{where_}: cannot read: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" (line {line}, column {column})")
            })
            .unwrap_or_default();
        format!("{where_}: not valid TOML{at}: {}", e.message())
    })?;
    let command = Cli::command();
    let serve = command
        .find_subcommand("serve")
        .expect("the serve subcommand exists");
    let mut flags = Vec::new();
    for (raw_key, value) in &table {
        if raw_key == "command" || raw_key == "worker" {
            // `[[command]]` blocks define SQL commands, `[[worker]]` blocks worker pools; read by
            // `config_file_commands` and `config_file_workers`.
            continue;
        }
        let key = raw_key.replace('_', "-");
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !a.is_hide_set())
            .filter(|_| key != "config" && key != "help")
            .ok_or_else(|| format!("{where_}: unknown key '{raw_key}' (keys are `ringport serve` flag names, e.g. listen, rings, auth-timeout)"))?;
        let takes_value = arg.get_action().takes_values();
        let text = match value {
            toml::Value::String(v) => v.clone(),
            toml::Value::Integer(v) => v.to_string(),
            toml::Value::Float(v) => v.to_string(),
            toml::Value::Boolean(v) if !takes_value => {
                if *v {
                    flags.push(format!("--{key}"));
                }
                continue;
            }
            toml::Value::Boolean(v) => v.to_string(),
            other => {
                return Err(format!(
                    "{where_}: key '{raw_key}' has a {} value; give a string, number or boolean",
                    other.type_str()
                ))
            }
        };
        if !takes_value {
            return Err(format!(
                "{where_}: key '{raw_key}' is a switch: give true or false"
            ));
        }
        // One `--key=value` word, so a value that starts with '-' (`-1`) stays a value.
        flags.push(format!("--{key}={text}"));
    }
    Ok(flags)
}

/// One `[[command]]` block of a config file: a SQL-defined command (see `commands::sql`).
#[derive(Debug, Clone, serde::Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SqlCommandConfig {
    /// The command's name (lower-case letters, digits, `_-.:`).
    pub name: String,
    /// One statement; `$1` is the session's user unless `user = false`, the arguments follow.
    pub sql: String,
    /// Redis's arity: the exact number of words, the name included.
    pub arity: i32,
    /// status, affected, value, row, map, rows or column.
    pub reply: String,
    /// Whether `$1` is the session's user name.
    #[serde(default = "default_true")]
    pub user: bool,
    /// Whether the statement changes data (Redis's `write` flag; else `readonly`).
    #[serde(default)]
    pub write: bool,
    /// COMMAND DOCS's summary (default: the statement).
    #[serde(default)]
    pub summary: String,
}

fn default_true() -> bool {
    true
}

/// A `[[worker]]` block: a pool of worker processes serving commands over RESP on their
/// stdin/stdout (docs/workers.md).
#[derive(Debug, Clone, serde::Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WorkerConfig {
    /// The pool's name, in logs, INFO and metrics.
    pub name: String,
    /// The program and its arguments, run once per process (no shell).
    pub run: Vec<String>,
    /// How many processes.
    #[serde(default = "default_processes")]
    pub processes: usize,
    /// How many requests each process may have in flight; when every process is full the
    /// command gets `-BUSY`.
    #[serde(default = "default_in_flight")]
    pub in_flight: usize,
    /// How long a request may take before its command gets an error (`5s`, `500ms`).
    #[serde(default = "default_worker_timeout")]
    pub timeout: String,
    /// The commands the pool serves.
    pub commands: Vec<WorkerCommandConfig>,
}

/// One command a worker pool serves.
#[derive(Debug, Clone, serde::Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WorkerCommandConfig {
    /// The command's name (lower-case letters, digits, `_-.:`).
    pub name: String,
    /// Redis's arity: the exact number of words, the name included; negative: at least.
    pub arity: i32,
    /// Whether it changes data (Redis's `write` flag; else `readonly`).
    #[serde(default)]
    pub write: bool,
    /// More COMMAND flags (`fast`, `denyoom`, ...), shown by COMMAND INFO.
    #[serde(default)]
    pub flags: Vec<String>,
    /// COMMAND DOCS's summary.
    #[serde(default)]
    pub summary: String,
}

fn default_processes() -> usize {
    2
}

fn default_in_flight() -> usize {
    16
}

fn default_worker_timeout() -> String {
    "5s".into()
}

/// The `[[worker]]` blocks of a config file, with errors naming the file and the block.
pub fn config_file_workers(path: &std::path::Path) -> Result<Vec<WorkerConfig>, String> {
    let where_ = path.display();
    let mut workers = Vec::new();
    for (name, worker) in config_file_blocks::<WorkerConfig>(path, "worker")? {
        let problem = if worker.run.is_empty() {
            Some("'run' names no program".to_string())
        } else if worker.processes == 0 || worker.in_flight == 0 {
            Some("'processes' and 'in-flight' must be at least 1".to_string())
        } else if worker.commands.is_empty() {
            Some("it serves no 'commands'".to_string())
        } else if let Some((command, e)) = worker.commands.iter().find_map(|c| {
            crate::table::check_name(&c.name)
                .err()
                .map(|e| (c.name.clone(), e))
        }) {
            Some(format!("command '{command}': {e}"))
        } else {
            parse_duration(&worker.timeout)
                .err()
                .map(|e| format!("timeout: {e}"))
        };
        if let Some(problem) = problem {
            return Err(format!("{where_}: worker {name}: {problem}"));
        }
        workers.push(worker);
    }
    Ok(workers)
}

/// The `[[command]]` blocks of a config file, with errors naming the file and the block.
pub fn config_file_commands(path: &std::path::Path) -> Result<Vec<SqlCommandConfig>, String> {
    Ok(config_file_blocks(path, "command")?
        .into_iter()
        .map(|(_, command)| command)
        .collect())
}

/// The `[[key]]` blocks of a config file, each with how errors name it (its `name`, else its
/// place), with errors naming the file and the block.
fn config_file_blocks<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    key: &str,
) -> Result<Vec<(String, T)>, String> {
    let where_ = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{where_}: cannot read: {e}"))?;
    let mut table: toml::Table = toml::from_str(&text)
        .map_err(|e: toml::de::Error| format!("{where_}: not valid TOML: {}", e.message()))?;
    let blocks = match table.remove(key) {
        None => return Ok(Vec::new()),
        Some(toml::Value::Array(blocks)) => blocks,
        Some(_) => return Err(format!("{where_}: '{key}' must be [[{key}]] blocks")),
    };
    blocks
        .into_iter()
        .enumerate()
        .map(|(i, block)| {
            let name = block
                .get("name")
                .and_then(|n| n.as_str())
                .map_or_else(|| format!("#{}", i + 1), |n| format!("'{n}'"));
            let parsed = block
                .try_into()
                .map_err(|e: toml::de::Error| format!("{where_}: {key} {name}: {}", e.message()))?;
            Ok((name, parsed))
        })
        .collect()
}

/// Parses `ringport serve` settings from a config file alone (for `config check`), with errors
/// naming the file.
pub fn parse_config_file(path: &std::path::Path) -> Result<ServeArgs, String> {
    let flags = config_file_flags(path)?;
    let argv = ["ringport".to_string(), "serve".to_string()]
        .into_iter()
        .chain(flags);
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Serve(args),
        }) => Ok(*args),
        Ok(_) => unreachable!("parsed as serve"),
        Err(e) => Err(format!(
            "{}: {}",
            path.display(),
            e.to_string()
                .lines()
                .next()
                .unwrap_or("invalid value")
                .trim_start_matches("error: ")
        )),
    }
}

/// Parses the process arguments, folding in `serve --config FILE`: flags on the command line
/// win over `RINGPORT_STORE_URL`, which wins over the file.
pub fn parse_args() -> Result<Cli, String> {
    parse_args_from(std::env::args().collect())
}

/// [`parse_args`] over `argv` (the program name first).
pub fn parse_args_from(argv: Vec<String>) -> Result<Cli, String> {
    let cli = Cli::parse_from(&argv);
    let Command::Serve(args) = &cli.command else {
        return Ok(cli);
    };
    let Some(path) = args.config.clone() else {
        return Ok(cli);
    };
    parse_config_file(&path)?;
    let mut flags = config_file_flags(&path)?;
    // Precedence: command line, then environment, then file. The file's values travel as flags,
    // which would outrank RINGPORT_STORE_URL, so a file `store` gives way to the variable.
    if std::env::var_os("RINGPORT_STORE_URL").is_some_and(|v| !v.is_empty()) {
        flags.retain(|f| !f.starts_with("--store=") && f != "--store");
    }
    let mut argv = argv;
    let serve_at = argv
        .iter()
        .position(|a| a == "serve")
        .expect("the serve subcommand was parsed");
    argv.splice(serve_at + 1..serve_at + 1, flags);
    Ok(Cli::parse_from(argv))
}

/// Parses `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds (fractions allowed).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration '{text}' (examples: 10s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" => value / 1_000_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit '{other}' in '{text}' (use ms, s, m, h)"
            ))
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("invalid duration '{text}'"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses `16mb`, `512kb`, `1gb`, `4096` (bytes); units are powers of 1024, as Redis reads them.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("invalid size '{text}' (examples: 4096, 512kb, 16mb)"))?;
    let factor: usize = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1024,
        "m" | "mb" => 1024 * 1024,
        "g" | "gb" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "invalid size unit '{other}' in '{text}' (use kb, mb, gb)"
            ))
        }
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("size '{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16mb").unwrap(), 16 << 20);
        assert_eq!(parse_size("512KB").unwrap(), 512 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1tb").is_err());
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn a_file_round_trips_through_the_parser() {
        let f = write("listen = \"127.0.0.1:7000\"\nrings = 3\nauth_timeout = \"5s\"\nmax-sessions = 10\nlog-format = \"json\"\n");
        let args = parse_config_file(f.path()).unwrap();
        assert_eq!(args.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(args.rings, Some(3));
        assert_eq!(args.auth_timeout, Duration::from_secs(5));
        assert_eq!(args.max_sessions, 10);
        assert_eq!(args.log_format, LogFormat::Json);
        let text = toml::to_string(&args).unwrap();
        assert!(text.contains("auth-timeout = \"5s\""), "{text}");
    }

    #[test]
    fn unknown_keys_name_the_key_and_file() {
        let f = write("listne = \"x\"\n");
        let e = parse_config_file(f.path()).unwrap_err();
        assert!(
            e.contains("listne") && e.contains(&f.path().display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_the_key_and_file() {
        let f = write("rings = \"many\"\n");
        let e = parse_config_file(f.path()).unwrap_err();
        assert!(
            e.contains("--rings") && e.contains(&f.path().display().to_string()),
            "{e}"
        );
        let f = write("listen = [1, 2]\n");
        let e = parse_config_file(f.path()).unwrap_err();
        assert!(e.contains("listen") && e.contains("array"), "{e}");
        let f = write("not toml at all = = =\n");
        assert!(parse_config_file(f.path())
            .unwrap_err()
            .contains("not valid TOML"));
        // The line of a syntax error.
        let f = write("rings = 2\nlisten = 127.0.0.1:1\n");
        let e = parse_config_file(f.path()).unwrap_err();
        assert!(e.contains("not valid TOML (line 2, column"), "{e}");
        // A value that starts with '-' is still the key's value, not a flag of its own.
        let f = write("max-sessions = -1\n");
        let e = parse_config_file(f.path()).unwrap_err();
        assert!(e.contains("--max-sessions") && e.contains("'-1'"), "{e}");
        let f = write("log-level = \"-x\"\n");
        assert_eq!(parse_config_file(f.path()).unwrap().log_level, "-x");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_store_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_store_url("host=/tmp password=secret dbname=x"),
            "host=/tmp password=*** dbname=x"
        );
        assert_eq!(redact_store_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_store_url("postgres://u@h/db?sslmode=disable&password=secret"),
            "postgres://u@h/db?sslmode=disable&password=***"
        );
    }
}
