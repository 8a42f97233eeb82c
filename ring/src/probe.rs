//! What this kernel offers, found by probing at start-up, and which path each operation takes.
//!
//! Kernel requirements (the kernel that brought each feature):
//! - multishot accept, provided-buffer rings: 5.19
//! - multishot recv, `IORING_SETUP_SINGLE_ISSUER`: 6.0
//! - `IORING_SETUP_DEFER_TASKRUN`: 6.1
//! - `IORING_SETUP_COOP_TASKRUN`: 5.19
//! - `IORING_FEAT_EXT_ARG` (wait with a timeout without a timeout op): 5.11
//! - `IORING_REGISTER_PROBE`: 5.6
//! - direct descriptors: sparse registered-file tables came with 5.19, but before 6.13 a file
//!   removed from the table was released only once every request issued before the removal had
//!   finished (one list of resource nodes per ring, recycled in order), and a multishot recv of
//!   an idle session never finishes: closed sessions' sockets would stay open (liburing issue
//!   #1192). 6.13 counts references per file.
//! - incremental consumption of provided buffers (`IOU_PBUF_RING_INC`): 6.12
//! - the busy tick (multishot timeout, `IORING_TIMEOUT_MULTISHOT`), which lets the ring's wait
//!   count the sends it submits (see `uring.rs`'s `wait`): 6.4

use std::fmt;
use std::io;

use io_uring::{opcode, IoUring, Probe};

/// Fast paths that can be switched off (by config, by a kernel profile, or because set-up failed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Disable {
    /// Use single-shot accept, re-armed after every connection.
    pub multishot_accept: bool,
    /// Use poll-then-recv instead of multishot recv.
    pub multishot_recv: bool,
    /// Do not register a provided-buffer ring (implies no multishot recv).
    pub buf_ring: bool,
    /// Do not set `IORING_SETUP_SINGLE_ISSUER`.
    pub single_issuer: bool,
    /// Do not set `IORING_SETUP_DEFER_TASKRUN`.
    pub defer_taskrun: bool,
    /// Do not set `IORING_SETUP_COOP_TASKRUN`.
    pub coop_taskrun: bool,
    /// Wait with a timeout op instead of `IORING_FEAT_EXT_ARG`.
    pub ext_arg: bool,
    /// Never block inside `io_uring_enter`: submit without waiting, then block in `poll(2)` on
    /// the ring's fd. For tools that cannot follow a blocking `io_uring_enter` (valgrind 3.19
    /// holds its thread lock across it and deadlocks); implies no DEFER_TASKRUN, whose
    /// completions only appear inside `io_uring_enter`.
    pub enter_wait: bool,
    /// Do not batch completions under load with `min_wait_usec` (`IORING_FEAT_MIN_TIMEOUT`).
    pub min_wait: bool,
    /// Keep every session on a plain descriptor instead of moving it into the ring's table of
    /// registered files (see `uring.rs`'s `install_direct`).
    pub direct_descriptors: bool,
    /// Register the provided-buffer ring without `IOU_PBUF_RING_INC`: each receive takes a
    /// whole buffer, however few bytes it brings.
    pub incremental_buffers: bool,
    /// No busy tick: the ring's wait does not count the sends it submits, and reaps their
    /// completions with an enter of their own (see `uring.rs`'s `wait`).
    pub busy_tick: bool,
}

impl Disable {
    /// The names accepted by [`Disable::parse_list`].
    pub const NAMES: [&'static str; 12] = [
        "multishot-accept",
        "multishot-recv",
        "buf-ring",
        "single-issuer",
        "defer-taskrun",
        "coop-taskrun",
        "ext-arg",
        "enter-wait",
        "min-wait",
        "direct-descriptors",
        "incremental-buffers",
        "busy-tick",
    ];

    /// Parses a comma-separated list such as `multishot-recv,buf-ring`.
    pub fn parse_list(list: &str) -> Result<Disable, String> {
        let mut disable = Disable::default();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "multishot-accept" => disable.multishot_accept = true,
                "multishot-recv" => disable.multishot_recv = true,
                "buf-ring" => disable.buf_ring = true,
                "single-issuer" => disable.single_issuer = true,
                "defer-taskrun" => disable.defer_taskrun = true,
                "coop-taskrun" => disable.coop_taskrun = true,
                "ext-arg" => disable.ext_arg = true,
                "enter-wait" => disable.enter_wait = true,
                "min-wait" => disable.min_wait = true,
                "direct-descriptors" => disable.direct_descriptors = true,
                "incremental-buffers" => disable.incremental_buffers = true,
                "busy-tick" => disable.busy_tick = true,
                other => {
                    return Err(format!(
                        "unknown fast path '{other}' (known: {})",
                        Disable::NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(disable)
    }

    /// What a kernel of the given profile lacks (`5.10`, `5.15`, `6.1`, `newest`).
    pub fn for_kernel_profile(profile: &str) -> Result<Disable, String> {
        let mut d = Disable::default();
        match profile {
            "newest" => {}
            // The busy tick's multishot timeout came with 6.4, min-wait and incremental
            // buffers with 6.12, direct descriptors that release a closed socket at once with
            // 6.13.
            "6.1" => {
                d.busy_tick = true;
                d.min_wait = true;
                d.direct_descriptors = true;
                d.incremental_buffers = true;
            }
            // All that 6.1 lacks, and the 5.19+ paths besides.
            "5.15" | "5.10" => {
                d = Disable::for_kernel_profile("6.1")?;
                d.multishot_accept = true;
                d.multishot_recv = true;
                d.buf_ring = true;
                d.single_issuer = true;
                d.defer_taskrun = true;
                d.coop_taskrun = true;
            }
            other => {
                return Err(format!(
                    "unknown kernel profile '{other}' (known: 5.10, 5.15, 6.1, newest)"
                ))
            }
        }
        Ok(d)
    }

    /// Both sets together.
    pub fn union(self, other: Disable) -> Disable {
        Disable {
            multishot_accept: self.multishot_accept || other.multishot_accept,
            multishot_recv: self.multishot_recv || other.multishot_recv,
            buf_ring: self.buf_ring || other.buf_ring,
            single_issuer: self.single_issuer || other.single_issuer,
            defer_taskrun: self.defer_taskrun || other.defer_taskrun,
            coop_taskrun: self.coop_taskrun || other.coop_taskrun,
            ext_arg: self.ext_arg || other.ext_arg,
            enter_wait: self.enter_wait || other.enter_wait,
            min_wait: self.min_wait || other.min_wait,
            direct_descriptors: self.direct_descriptors || other.direct_descriptors,
            incremental_buffers: self.incremental_buffers || other.incremental_buffers,
            busy_tick: self.busy_tick || other.busy_tick,
        }
    }
}

/// How sessions receive bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvPath {
    /// Multishot recv picking buffers from a provided-buffer ring (6.0): one submission per
    /// session for its whole life, no buffer held while idle.
    MultishotBufRing,
    /// A readiness poll, then a non-blocking recv into the ring's shared scratch buffer: still
    /// no buffer held while idle, one extra syscall per read.
    PollThenRecv,
}

/// How the listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptPath {
    /// One submission accepts until cancelled (5.19).
    Multishot,
    /// One submission per accepted connection.
    SingleShot,
}

/// The outcome of probing: what the kernel has and which path each operation takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    /// `uname -r`.
    pub kernel_release: String,
    /// (major, minor) parsed from the release, (0, 0) if unparsable.
    pub kernel_version: (u32, u32),
    /// Setup flags the kernel accepted (each probed on its own).
    pub single_issuer: bool,
    pub defer_taskrun: bool,
    pub coop_taskrun: bool,
    /// `IORING_FEAT_EXT_ARG` (5.11).
    pub ext_arg: bool,
    /// Block in `poll(2)` on the ring fd instead of inside `io_uring_enter` (see
    /// [`Disable::enter_wait`]).
    pub poll_wait: bool,
    /// `IORING_FEAT_MIN_TIMEOUT` (6.12): a blocking wait may collect several completions for a
    /// few microseconds under load (see `uring.rs`'s `wait`).
    pub min_wait: bool,
    /// `IORING_FEAT_NODROP` (5.5): the kernel buffers overflowing completions instead of dropping.
    pub nodrop: bool,
    /// Opcodes the kernel reports in `IORING_REGISTER_PROBE`.
    pub opcodes: Vec<(&'static str, bool)>,
    /// The chosen paths, after `Disable` was applied.
    pub accept: AcceptPath,
    pub recv: RecvPath,
    /// Sessions live in each ring's sparse table of registered files (6.13, see the module's
    /// list) rather than in the process's descriptor table, so RLIMIT_NOFILE no longer caps the session count, and an op
    /// on them skips the file lookup and reference count. Only with multishot recv: the
    /// poll-then-recv path reads with plain `recv(2)`, which needs a descriptor.
    pub direct: bool,
    /// The provided-buffer ring is consumed incrementally (`IOU_PBUF_RING_INC`, 6.12): a
    /// receive takes only the bytes it brings from the current buffer, so a few large buffers
    /// serve many sessions' small commands, where otherwise each receive takes a whole buffer.
    /// Only with multishot recv; a ring whose registration with the flag fails registers
    /// without it.
    pub incremental_buffers: bool,
    /// While the ring sends, a multishot timeout (6.4) wakes it every 10 ms, so its wait
    /// may count the small sends it submits, which complete during that enter when the socket
    /// has room: one that finds it full completes later, and the wait then returns within a
    /// tick rather than on one completion more than it should (see `uring.rs`'s `wait`).
    pub busy_tick: bool,
}

/// Why io_uring could not be used at all, with advice for the operator.
#[derive(Debug)]
pub struct Unavailable {
    pub error: io::Error,
}

impl Unavailable {
    /// A one-line explanation of the errno and what to do about it.
    pub fn advice(&self) -> String {
        match self.error.raw_os_error() {
            Some(libc::ENOSYS) => "io_uring_setup returned ENOSYS: the kernel is older than 5.1, \
                was built without io_uring, or a seccomp filter hides the syscall. Use a newer \
                kernel or allow io_uring_setup/io_uring_enter/io_uring_register in the filter."
                .into(),
            Some(libc::EPERM) => "io_uring_setup returned EPERM: io_uring is blocked by policy — \
                Docker 25+'s default seccomp profile (run with a profile that allows io_uring), \
                the sysctl kernel.io_uring_disabled (try `sysctl -w kernel.io_uring_disabled=0`), \
                or RHEL 9's default."
                .into(),
            Some(libc::ENOMEM) => "io_uring_setup returned ENOMEM: RLIMIT_MEMLOCK is too low for \
                the ring (kernels before 5.12 charge rings to it). Raise it with `ulimit -l` or \
                LimitMEMLOCK= in the systemd unit."
                .into(),
            Some(libc::EINVAL) => "io_uring_setup returned EINVAL: the kernel rejects even a \
                plain ring; it is too old for ringport's io_uring backend."
                .into(),
            _ => format!("io_uring_setup failed: {}", self.error),
        }
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.advice())
    }
}

/// The kernel release from `uname`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Parses "6.18.44-foo" into (6, 18).
pub fn parse_version(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

fn try_setup(f: impl Fn(&mut io_uring::Builder)) -> io::Result<IoUring> {
    let mut builder = IoUring::builder();
    f(&mut builder);
    builder.build(8)
}

/// Probes the kernel. `Err` when io_uring cannot be set up at all.
pub fn probe(disable: Disable) -> Result<Features, Unavailable> {
    let plain = try_setup(|_| {}).map_err(|error| Unavailable { error })?;
    let kernel_release = kernel_release();
    let kernel_version = parse_version(&kernel_release);
    let at_least = |major: u32, minor: u32| kernel_version >= (major, minor);

    let single_issuer = !disable.single_issuer
        && try_setup(|b| {
            b.setup_single_issuer();
        })
        .is_ok();
    let defer_taskrun = single_issuer
        && !disable.defer_taskrun
        && !disable.enter_wait
        && try_setup(|b| {
            b.setup_single_issuer().setup_defer_taskrun();
        })
        .is_ok();
    let coop_taskrun = !disable.coop_taskrun
        && try_setup(|b| {
            b.setup_coop_taskrun();
        })
        .is_ok();
    let ext_arg = plain.params().is_feature_ext_arg() && !disable.ext_arg;
    let nodrop = plain.params().is_feature_nodrop();
    let min_wait = ext_arg
        && !disable.enter_wait
        && !disable.min_wait
        && plain.params().is_feature_min_timeout();

    let mut probe = Probe::new();
    let have_probe = plain.submitter().register_probe(&mut probe).is_ok();
    let has = |code: u8| have_probe && probe.is_supported(code);
    let opcodes = vec![
        ("accept", has(opcode::Accept::CODE)),
        ("recv", has(opcode::Recv::CODE)),
        ("send", has(opcode::Send::CODE)),
        ("read", has(opcode::Read::CODE)),
        ("close", has(opcode::Close::CODE)),
        ("poll_add", has(opcode::PollAdd::CODE)),
        ("async_cancel", has(opcode::AsyncCancel::CODE)),
        ("timeout", has(opcode::Timeout::CODE)),
        ("provide_buffers", has(opcode::ProvideBuffers::CODE)),
        ("msg_ring", has(opcode::MsgRingData::CODE)),
        ("shutdown", has(opcode::Shutdown::CODE)),
    ];
    // Multishot variants share their opcode with the single-shot ones, so the probe cannot see
    // them: the kernel version decides, and a set-up failure at run time still falls back.
    let multishot_accept = at_least(5, 19) && !disable.multishot_accept;
    let buf_ring = at_least(5, 19) && !disable.buf_ring;
    let multishot_recv = at_least(6, 0) && buf_ring && !disable.multishot_recv;
    let direct = multishot_recv
        && at_least(6, 13)
        && !disable.direct_descriptors
        && plain.submitter().register_files_sparse(1).is_ok();
    let incremental_buffers = multishot_recv && at_least(6, 12) && !disable.incremental_buffers;
    let busy_tick = at_least(6, 4) && !disable.busy_tick;
    Ok(Features {
        kernel_release,
        kernel_version,
        single_issuer,
        defer_taskrun,
        coop_taskrun,
        ext_arg,
        poll_wait: disable.enter_wait,
        min_wait,
        nodrop,
        opcodes,
        accept: if multishot_accept {
            AcceptPath::Multishot
        } else {
            AcceptPath::SingleShot
        },
        recv: if multishot_recv {
            RecvPath::MultishotBufRing
        } else {
            RecvPath::PollThenRecv
        },
        direct,
        incremental_buffers,
        busy_tick,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("6.18.44-fc-v782"), (6, 18));
        assert_eq!(parse_version("5.10.0-28-amd64"), (5, 10));
        assert_eq!(parse_version("garbage"), (0, 0));
    }

    #[test]
    fn disable_list_names_unknown_entries() {
        let d = Disable::parse_list("multishot-recv, buf-ring").unwrap();
        assert!(d.multishot_recv && d.buf_ring && !d.multishot_accept);
        let err = Disable::parse_list("warp-drive").unwrap_err();
        assert!(err.contains("warp-drive"), "{err}");
    }

    #[test]
    fn old_profiles_disable_the_fast_paths() {
        let d = Disable::for_kernel_profile("5.10").unwrap();
        assert!(d.multishot_accept && d.multishot_recv && d.buf_ring && d.busy_tick);
        assert!(Disable::for_kernel_profile("6.1").unwrap().busy_tick);
        assert!(
            Disable::for_kernel_profile("6.1")
                .unwrap()
                .incremental_buffers
        );
        assert_eq!(
            Disable::for_kernel_profile("newest").unwrap(),
            Disable::default()
        );
        assert!(Disable::for_kernel_profile("4.4").is_err());
    }

    #[test]
    fn probe_respects_disable() {
        let all = Disable::parse_list(&Disable::NAMES.join(",")).unwrap();
        if let Ok(f) = probe(all) {
            assert_eq!(f.accept, AcceptPath::SingleShot);
            assert_eq!(f.recv, RecvPath::PollThenRecv);
            assert!(!f.single_issuer && !f.defer_taskrun && !f.coop_taskrun && !f.ext_arg);
            assert!(!f.direct && !f.incremental_buffers && !f.busy_tick);
        }
    }
}
