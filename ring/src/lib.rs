//! ringport-ring: the proactor. One io_uring ring per core owns a listener and the sessions it
//! accepted, does all their socket I/O as completions, and hands bytes to a [`Handler`] that
//! knows the protocol. Results computed on other threads come back through a per-ring
//! [`Sender`] (a queue plus an eventfd wake-up).
//!
//! # What callers must guarantee
//!
//! - A [`Ring`] is created and run on the same thread (`IORING_SETUP_SINGLE_ISSUER`), and that
//!   thread does nothing else.
//! - Handler callbacks never block: anything slow goes to another thread and comes back through
//!   the ring's [`Sender`].
//! - A [`SessionId`] may outlive its session; messages for a session that has gone are dropped,
//!   never applied to whoever reuses the slot.
//!
//! All `unsafe` io_uring code of ringport lives in this crate; each block says why it is sound.
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![allow(missing_docs)] // fields of plain stat structs are self-describing

pub mod bufring;
mod epoll;
mod event_loop;
mod handler;
pub mod harness;
pub mod mailbox;
pub mod probe;
pub mod timer;
mod tls;
pub mod token;
mod uring;

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

pub use epoll::EpollLoop;
pub use event_loop::{Faults, Listener, RingConfig, RingStats};
pub use handler::{CloseReason, Context, Handler, LogLimiter, Session, Sessions};
pub use mailbox::{mailbox, Receiver, Sender};
pub use probe::{probe, AcceptPath, Disable, Features, RecvPath, Unavailable};
pub use tls::TlsAcceptor;
pub use uring::Ring;

/// Names one session: its slab slot and the generation the slot had when the session began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId {
    /// Index in the ring's slab.
    pub slot: u32,
    /// Generation of the slot (24 bits used).
    pub generation: u32,
}

/// Opens a listening socket with `SO_REUSEPORT`, so each ring can own one on the same address
/// and the kernel spreads connections across them.
pub fn listen(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// The local address a listener is bound to (to learn the port after binding port 0).
pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(fd);
    sock.local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket"))
}

/// Cores this process may run on (`sched_getaffinity`).
pub fn usable_cores() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default()
}

/// Pins the calling thread to one core; false if the kernel refused.
pub fn pin_current_thread(core: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

/// How a pool thread competes for CPU with the rings (`--pool-priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadPriority {
    /// `SCHED_IDLE`: runs only on a core nothing else wants. Heavy work cannot delay a ring at
    /// all, but a core kept busy by the rings starves it.
    Idle,
    /// `SCHED_BATCH` at nice 19: a ring that wants the core gets about 98% of it, the pool the
    /// rest, so pool work never starves; and a waking pool thread does not preempt a ring.
    Batch,
    /// As the rings (the thread is left as it was started).
    Normal,
}

/// Gives the calling thread `priority`. Lowering a thread's priority needs no privilege.
pub fn set_current_thread_priority(priority: ThreadPriority) -> io::Result<()> {
    let (policy, nice) = match priority {
        ThreadPriority::Idle => (libc::SCHED_IDLE, 0),
        ThreadPriority::Batch => (libc::SCHED_BATCH, 19),
        ThreadPriority::Normal => return Ok(()),
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread (the syscall is per thread); `param` is a live local
    // of the right type, only read.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if nice != 0 {
        // SAFETY: PRIO_PROCESS with who 0 is the calling thread on Linux (nice values are per
        // thread); no memory is passed.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` towards `want`, capped at the hard limit; returns the soft
/// limit now in force. Each session is one descriptor, so a dense server (and a test or load
/// tool that holds many sessions) needs this.
pub fn raise_nofile_limit(want: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a live local of the right type.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let target = want.min(limit.rlim_max);
    if target > limit.rlim_cur {
        limit.rlim_cur = target;
        // SAFETY: setrlimit reads a live local of the right type.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Makes glibc serve every allocation of `bytes` or more with its own mapping, given back to the
/// kernel when freed. By default glibc raises that threshold (up to 32 MiB) after the first large
/// free, so a burst of large values or a deep pipeline's buffers ends up in per-thread heap
/// arenas that are never trimmed: a few 1 MiB SETs kept ~40 MiB of RSS for good. Call it before
/// any thread starts. Returns false where the C library is not glibc or refused the setting.
pub fn release_large_allocations(bytes: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt takes two integers and only changes the allocator's tuning; glibc
        // applies it under its own lock.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = bytes;
        false
    }
}

/// Installs a seccomp filter on the calling thread, inherited across `exec`, that makes
/// `io_uring_setup` fail with `EPERM` — what Docker 25+'s default seccomp profile does. Used to
/// check the epoll fallback (`ringport deny-io-uring -- ringport serve`). Everything else is
/// allowed. Sets `no_new_privs`, as unprivileged seccomp requires.
pub fn deny_io_uring() -> io::Result<()> {
    const IO_URING_SETUP: u32 = 425; // the same number on every architecture since 5.1
    const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let filter = [
        // A = seccomp_data.nr (offset 0)
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: BPF_JEQ_K,
            jt: 0,
            jf: 1,
            k: IO_URING_SETUP,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `program` and the `filter` array it points at are live locals for the call; the
    // kernel copies the program before returning.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &program as *const libc::sock_fprog,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of a listening socket inherited from the service manager (systemd socket
/// activation passes them from fd 3 up). Fails unless `fd` is a listening stream socket, so a
/// stray descriptor is never mistaken for one.
pub fn inherited_listener(fd: std::os::fd::RawFd) -> io::Result<OwnedFd> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into a live local; an invalid fd only makes
    // it fail with EBADF/ENOTSOCK.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if value == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("inherited fd {fd} is a socket but not listening"),
        ));
    }
    // SAFETY: the fd is open (getsockopt succeeded), a listening socket, and handed to this
    // process to own by the service manager; nothing else in the process claims it.
    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let sock = socket2::SockRef::from(&owned);
    sock.set_nonblocking(true)?;
    sock.set_cloexec(true)?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    #[test]
    fn raising_the_fd_limit_never_lowers_it() {
        let before = super::raise_nofile_limit(0).unwrap();
        let after = super::raise_nofile_limit(before + 1).unwrap();
        assert!(after >= before);
    }

    #[test]
    fn denied_io_uring_fails_with_eperm_on_that_thread_only() {
        let denied = std::thread::spawn(|| {
            super::deny_io_uring().unwrap();
            super::probe(super::Disable::default())
                .map(|_| ())
                .unwrap_err()
                .error
                .raw_os_error()
        })
        .join()
        .unwrap();
        assert_eq!(denied, Some(libc::EPERM));
        assert!(super::probe(super::Disable::default()).is_ok());
    }
}
