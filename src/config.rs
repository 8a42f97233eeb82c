//! The command line: `serve`, `user`, `probe`, and the parsers for sizes and durations.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// ringline: a RESP session server on per-core io_uring rings.
#[derive(Debug, Parser)]
#[command(name = "ringline", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Manage users (in the embedded store or PostgreSQL).
    User(UserArgs),
    /// Print what this kernel supports and which path each operation will take.
    Probe(ProbeArgs),
    /// Run a command with io_uring_setup denied (EPERM), as under Docker 25+'s default seccomp
    /// profile: `ringline deny-io-uring -- ringline serve` shows the epoll fallback.
    DenyIoUring {
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

/// Where the store lives (shared by `serve` and `user`).
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Directory of the embedded store.
    #[arg(long, default_value = "./ringline-data", global = true)]
    pub data: PathBuf,
    /// `embedded` (default) or a PostgreSQL URL (`postgres://user@host:port/db` or
    /// `host=/path/to/socket ...`); also read from RINGLINE_STORE_URL.
    #[arg(long, env = "RINGLINE_STORE_URL", global = true)]
    pub store: Option<String>,
}

/// Which I/O backend to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// io_uring when it can be set up, else epoll with a warning.
    Auto,
    /// io_uring only; fail if it cannot be set up.
    Uring,
    /// epoll only.
    Epoll,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `ringline serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6380")]
    pub listen: SocketAddr,
    /// Number of rings (default: one per usable core).
    #[arg(long)]
    pub rings: Option<usize>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Store worker threads, one store connection each (default: 2 x cores).
    #[arg(long)]
    pub store_threads: Option<usize>,
    /// Store jobs queued at most before commands get -BUSY.
    #[arg(long, default_value_t = 65536)]
    pub store_queue: usize,
    /// Compute worker threads (default: one per core).
    #[arg(long)]
    pub compute_threads: Option<usize>,
    /// Compute jobs queued or running at most before commands get -BUSY.
    #[arg(long, default_value_t = 65536)]
    pub compute_queue: usize,
    /// Close connections that have not authenticated within this time (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub auth_timeout: Duration,
    /// Close authenticated sessions idle for this long (0 = never).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub idle_timeout: Duration,
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
    /// Failed AUTH attempts allowed on one connection before it is closed.
    #[arg(long, default_value_t = 10)]
    pub max_auth_failures: u32,
    /// How long SIGTERM waits for sessions to finish before cutting them.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// I/O backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Fast paths to switch off (comma-separated: multishot-accept, multishot-recv, buf-ring,
    /// single-issuer, defer-taskrun, coop-taskrun, ext-arg).
    #[arg(long, default_value = "")]
    pub uring_disable: String,
    /// Behave like a kernel of this version: 5.10, 5.15, 6.1 or newest.
    #[arg(long, default_value = "newest")]
    pub kernel_profile: String,
    /// Provided receive buffers per ring (a power of two).
    #[arg(long, default_value_t = 1024)]
    pub recv_buffers: u16,
    /// Size of each receive buffer.
    #[arg(long, default_value = "16kb", value_parser = parse_size)]
    pub recv_buffer_size: usize,
    /// Testing aid: make buffer-ring registration fail with EINVAL (as some distribution
    /// kernels do) to exercise the fallback.
    #[arg(long, hide = true)]
    pub inject_bufring_einval: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `ringline user ...`.
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

/// `ringline probe`.
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
