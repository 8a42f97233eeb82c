//! The messages that travel to a ring: a pool job's result for one session, or a ring-wide
//! query (CLIENT LIST, CLIENT KILL), and the handle a job answers through.

use std::net::SocketAddr;
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
    /// The reply of a command that closed its own session (`CLIENT KILL` naming itself): sent,
    /// then the session closes, as Redis's `CLIENT_CLOSE_AFTER_REPLY`.
    ReplyThenClose(u32, Vec<u8>),
    /// The outcome of AUTH or HELLO ... AUTH.
    Auth(u32, AuthOutcome),
    /// The reply would pass `--max-output-buffer`, so it was not built: the session is treated
    /// as any session over its output limit.
    OverOutputLimit(u32),
    /// Ring-wide: the client id and `CLIENT LIST` line of each session of the ring the filter
    /// selects, sent back on the channel.
    ListClients(ListFilter, crossbeam_channel::Sender<Vec<(u64, String)>>),
    /// Ring-wide: close the sessions the filter matches; the count is sent back.
    Kill(KillFilter, crossbeam_channel::Sender<u64>),
    /// With a socket handed to the ring: its store connection for GETs (`storelink`).
    LinkUp,
    /// To the ring's store connection: GETs wait to be sent.
    LinkFlush,
}

/// A client type as `CLIENT LIST TYPE` and `CLIENT KILL TYPE` name it (Redis's
/// `getClientTypeByName`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientType {
    Normal,
    Replica,
    Pubsub,
    Master,
}

impl ClientType {
    /// The type `name` names, in any letter case; `None` for a name Redis does not know.
    pub fn parse(name: &[u8]) -> Option<ClientType> {
        match name.to_ascii_lowercase().as_slice() {
            b"normal" => Some(ClientType::Normal),
            b"slave" | b"replica" => Some(ClientType::Replica),
            b"pubsub" => Some(ClientType::Pubsub),
            b"master" => Some(ClientType::Master),
            _ => None,
        }
    }

    /// Every ringport session is a normal client: there is no replication and no pub/sub, so
    /// the other types name no session (Redis answers them with an empty list, or 0 killed).
    fn selects_sessions(self) -> bool {
        self == ClientType::Normal
    }
}

/// Which sessions `CLIENT KILL` closes: every given criterion must match.
#[derive(Debug, Clone, Default)]
pub struct KillFilter {
    pub id: Option<u64>,
    pub addr: Option<String>,
    /// `LADDR`: the local address, as `CLIENT LIST` shows it.
    pub laddr: Option<String>,
    pub user: Option<String>,
    pub client_type: Option<ClientType>,
    /// `SKIPME yes` (the default): never the session that asked.
    pub skip: Option<u64>,
    /// Set for a non-admin: only that user's sessions, whatever the other criteria say, so a
    /// user cannot close another user's sessions (docs/security.md).
    pub owner: Option<Arc<str>>,
}

impl KillFilter {
    /// True if this filter selects the session; `laddr` is the local address every session
    /// shows in `CLIENT LIST`.
    pub fn matches(&self, conn: &Conn, laddr: SocketAddr) -> bool {
        if self.skip == Some(conn.client_id) {
            return false;
        }
        if !owned_by(&self.owner, conn) {
            return false;
        }
        if self.id.is_some_and(|id| id != conn.client_id) {
            return false;
        }
        if self.client_type.is_some_and(|t| !t.selects_sessions()) {
            return false;
        }
        if let Some(addr) = &self.addr {
            if conn.peer_addr().map(|p| p.to_string()).as_deref() != Some(addr.as_str()) {
                return false;
            }
        }
        if self.laddr.as_ref().is_some_and(|l| *l != laddr.to_string()) {
            return false;
        }
        if let Some(user) = &self.user {
            if conn.user.as_deref() != Some(user.as_str()) {
                return false;
            }
        }
        true
    }
}

/// Which sessions `CLIENT LIST` shows: every given criterion must match.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub client_type: Option<ClientType>,
    /// `ID id ...`: sorted, without repeats (the job puts the lines back in the asked order).
    pub ids: Option<Vec<u64>>,
    /// Set for a non-admin: only that user's sessions (docs/security.md).
    pub owner: Option<Arc<str>>,
}

impl ListFilter {
    /// True if this filter selects the session.
    pub fn matches(&self, conn: &Conn) -> bool {
        owned_by(&self.owner, conn)
            && self.client_type.is_none_or(ClientType::selects_sessions)
            && self
                .ids
                .as_ref()
                .is_none_or(|ids| ids.binary_search(&conn.client_id).is_ok())
    }
}

/// True when no owner restricts the filter, or the session is authenticated as the owner.
fn owned_by(owner: &Option<Arc<str>>, conn: &Conn) -> bool {
    owner
        .as_deref()
        .is_none_or(|owner| conn.user.as_deref() == Some(owner))
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

    /// Sends the job's encoded reply, after which the session closes.
    pub fn reply_then_close(&self, bytes: Vec<u8>) {
        self.0.send(Msg::ReplyThenClose(self.0.seq, bytes));
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
