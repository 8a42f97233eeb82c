//! The messages that travel to a ring: a pool job's result for one session, or a ring-wide
//! query (CLIENT LIST, CLIENT KILL), and the handle a job answers through.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ringport_ring::{Sender, SessionId};

use crate::conn::Conn;
use crate::resp::Proto;

/// Results that pools send back to a session. Session results carry the sequence number of the
/// job they answer, so a late result for a job the session gave up on (a stuck store) is
/// dropped instead of answering a later command.
pub enum Msg {
    /// The encoded reply of the pending command.
    Reply(u32, Vec<u8>),
    /// The outcome of AUTH or HELLO ... AUTH.
    Auth(u32, AuthOutcome),
    /// The reply would pass `--max-output-buffer`, so it was not built: the session is treated
    /// as any session over its output limit.
    OverOutputLimit(u32),
    /// Ring-wide: one `CLIENT LIST` line per session of the ring, sent back on the channel.
    ListClients(crossbeam_channel::Sender<String>),
    /// Ring-wide: close the sessions the filter matches; the count is sent back.
    Kill(KillFilter, crossbeam_channel::Sender<u64>),
    /// With a socket handed to the ring: its store connection for GETs (`storelink`).
    LinkUp,
    /// To the ring's store connection: GETs wait to be sent.
    LinkFlush,
}

/// Which sessions `CLIENT KILL` closes: every given criterion must match.
#[derive(Debug, Clone, Default)]
pub struct KillFilter {
    pub id: Option<u64>,
    pub addr: Option<String>,
    pub user: Option<String>,
    /// `SKIPME yes` (the default): never the session that asked.
    pub skip: Option<u64>,
}

impl KillFilter {
    /// True if this filter selects the session.
    pub fn matches(&self, conn: &Conn) -> bool {
        if self.skip == Some(conn.client_id) {
            return false;
        }
        if self.id.is_some_and(|id| id != conn.client_id) {
            return false;
        }
        if let Some(addr) = &self.addr {
            if conn.peer_addr().map(|p| p.to_string()).as_deref() != Some(addr.as_str()) {
                return false;
            }
        }
        if let Some(user) = &self.user {
            if conn.user.as_deref() != Some(user.as_str()) {
                return false;
            }
        }
        true
    }
}

/// How a pool job answers its session: the ring's mailbox, the session, and the job's number.
/// Clones share one answer: the first reply or outcome sent is the job's, and when the last
/// clone is dropped without one (the job panicked, or a path forgot to answer) the session gets
/// `-ERR internal error` instead of waiting forever.
#[derive(Clone)]
pub struct Replier(Arc<Answer>);

struct Answer {
    sender: Sender<Msg>,
    id: SessionId,
    seq: u32,
    sent: AtomicBool,
}

/// What a session gets for a job that ended without answering. The panic itself is logged by
/// the pool that caught it.
pub const INTERNAL_ERROR: &[u8] = b"-ERR internal error\r\n";

impl Replier {
    /// The handle for job number `seq` of session `id`, answering through `sender`.
    pub fn new(sender: Sender<Msg>, id: SessionId, seq: u32) -> Replier {
        Replier(Arc::new(Answer {
            sender,
            id,
            seq,
            sent: AtomicBool::new(false),
        }))
    }

    /// Sends the job's encoded reply.
    pub fn reply(&self, bytes: Vec<u8>) {
        self.0.send(Msg::Reply(self.0.seq, bytes));
    }

    /// Says the reply was given up for passing `--max-output-buffer`.
    pub fn over_output_limit(&self) {
        self.0.send(Msg::OverOutputLimit(self.0.seq));
    }

    /// Sends the outcome of an authentication.
    pub fn auth(&self, outcome: AuthOutcome) {
        self.0.send(Msg::Auth(self.0.seq, outcome));
    }
}

impl Answer {
    fn send(&self, msg: Msg) {
        if !self.sent.swap(true, Ordering::AcqRel) {
            self.sender.send(self.id, msg);
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        // A job the session no longer waits for (BUSY at submit, a store job it gave up on)
        // ends here too; the ring drops that stale answer by its job number.
        if !*self.sent.get_mut() {
            self.send(Msg::Reply(self.seq, INTERNAL_ERROR.to_vec()));
        }
    }
}

/// What an authentication attempt found.
pub enum AuthOutcome {
    /// The password verified; what to reply depends on the command that asked.
    Verified { user: String, then: AfterAuth },
    /// Unknown user, disabled user, or wrong password: one answer for all three.
    WrongPass,
}

/// The command that asked for authentication.
pub enum AfterAuth {
    /// `AUTH`: reply `+OK`.
    Ok,
    /// `HELLO proto AUTH u p [SETNAME n]`: switch protocol, set the name, reply HELLO's map.
    Hello {
        proto: Proto,
        setname: Option<Vec<u8>>,
    },
}
