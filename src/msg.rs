//! The messages that travel to a ring: a pool job's result for one session, or a ring-wide
//! query (CLIENT LIST, CLIENT KILL), and the handle a job answers through.

use ringport_ring::{Sender, SessionId};

use crate::conn::Conn;
use crate::resp::Proto;

/// Results that pools send back to a session. Session results carry the sequence number of the
/// job they answer, so a late result for a job the session gave up on (a stuck store) is
/// dropped instead of answering a later command.
pub enum Msg {
    /// The encoded reply of the pending command.
    Reply(u64, Vec<u8>),
    /// The outcome of AUTH or HELLO ... AUTH.
    Auth(u64, AuthOutcome),
    /// Ring-wide: one `CLIENT LIST` line per session of the ring, sent back on the channel.
    ListClients(crossbeam_channel::Sender<String>),
    /// Ring-wide: close the sessions the filter matches; the count is sent back.
    Kill(KillFilter, crossbeam_channel::Sender<u64>),
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
            if conn.peer.map(|p| p.to_string()).as_deref() != Some(addr.as_str()) {
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
#[derive(Clone)]
pub struct Replier {
    sender: Sender<Msg>,
    id: SessionId,
    seq: u64,
}

impl Replier {
    /// The handle for job number `seq` of session `id`, answering through `sender`.
    pub fn new(sender: Sender<Msg>, id: SessionId, seq: u64) -> Replier {
        Replier { sender, id, seq }
    }

    /// Sends the job's encoded reply.
    pub fn reply(&self, bytes: Vec<u8>) {
        self.sender.send(self.id, Msg::Reply(self.seq, bytes));
    }

    /// Sends the outcome of an authentication.
    pub fn auth(&self, outcome: AuthOutcome) {
        self.sender.send(self.id, Msg::Auth(self.seq, outcome));
    }
}

/// What an authentication attempt found.
pub enum AuthOutcome {
    /// The password verified; what to reply depends on the command that asked.
    Verified { user: String, then: AfterAuth },
    /// Unknown user, disabled user, or wrong password: one answer for all three.
    WrongPass,
    /// The reply to send instead (store unavailable, BUSY).
    Failed(Vec<u8>),
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
