//! ringline-ring: the proactor. One io_uring ring per core owns a listener and the sessions it
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
//! All `unsafe` io_uring code of ringline lives in this crate; each block says why it is sound.
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![allow(missing_docs)] // fields of plain stat structs are self-describing

pub mod bufring;
pub mod mailbox;
pub mod probe;
mod ring;
pub mod timer;
pub mod token;

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

pub use mailbox::{mailbox, Receiver, Sender};
pub use probe::{probe, AcceptPath, Disable, Features, RecvPath, Unavailable};
pub use ring::{CloseReason, Context, Handler, Ring, RingConfig, RingStats, Session};

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
