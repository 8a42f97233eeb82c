//! What a session remembers between commands, and where it is in its life.
//!
//! Plain data, below both users: the session's state machine drives it, and commands read and
//! set it through their call context.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::resp::{Args, Proto};
use crate::store::Entry;
use crate::storepool::JobTicket;
use crate::table::{CommandIndex, Table};

/// The session's place in its life. Each handler notes which states it expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Connected; only AUTH, HELLO and QUIT are served, and the auth deadline is armed.
    Unauthenticated,
    /// Authenticated and not waiting for anything: input is parsed and executed as it arrives.
    Ready,
    /// An offloaded command is running on a pool; input waits in `inbuf` until its result.
    Waiting,
}

/// What few sessions use, boxed together in [`Conn`]: an idle session pays one pointer for all
/// of it.
#[derive(Debug, Default)]
pub struct Rare {
    pub names: ClientNames,
    pub transaction: Option<Transaction>,
}

/// The names a client gave itself.
#[derive(Debug, Default)]
pub struct ClientNames {
    /// `CLIENT SETNAME`.
    pub name: Option<Vec<u8>>,
    /// `CLIENT SETINFO LIB-NAME` / `LIB-VER`.
    pub lib_name: Option<Vec<u8>>,
    pub lib_ver: Option<Vec<u8>>,
}

/// A session's transaction state: MULTI's queue and WATCH's keys, present only while either is
/// in use.
#[derive(Debug, Default)]
pub struct Transaction {
    /// The commands queued since MULTI; `None` outside MULTI.
    pub queued: Option<Vec<Args>>,
    /// The queued commands' bytes together, bounded by `--max-query-buffer`.
    pub queued_bytes: usize,
    /// A command was refused while queueing: EXEC answers `-EXECABORT`.
    pub dirty: bool,
    /// The WATCHed keys, filled by WATCH's store job before its reply (the session runs one
    /// command at a time, so EXEC always sees them complete).
    pub watched: Arc<Mutex<Watched>>,
}

/// The WATCHed keys and what each held (value and expiry) when WATCH read it.
#[derive(Debug, Default)]
pub struct Watched {
    pub keys: Vec<(Vec<u8>, Option<Entry>)>,
    /// A WATCH could not read its keys (the store failed): EXEC aborts.
    pub failed: bool,
}

/// A command running on a pool, for the session that waits for it. Boxed in [`Conn`] and
/// present only meanwhile: an idle session pays a pointer for it.
pub struct Pending {
    /// The command (its row in the command table) and when it was parsed.
    pub command: CommandIndex,
    pub started: Instant,
    /// How many commands the job answers (several folded GETs; else 1).
    pub calls: u32,
    /// A store job: its ticket, watched for a store that stopped answering, and when to ask
    /// the store pool next whether it is stuck.
    pub store: Option<(Arc<JobTicket>, Instant)>,
    /// Input past the query buffer limit arrived meanwhile: once the reply is sent, the
    /// session is refused and closed (input before AUTH, see `session::hold_input`).
    pub over_query_limit: bool,
}

impl Pending {
    pub fn new(command: CommandIndex, started: Instant) -> Box<Pending> {
        Box::new(Pending {
            command,
            started,
            calls: 1,
            store: None,
            over_query_limit: false,
        })
    }
}

/// What a session remembers between commands.
pub struct Conn {
    /// `CLIENT ID`: unique over the server's life.
    pub client_id: u64,
    /// Where the session is in its life.
    pub state: State,
    /// The authenticated user, owner of the session's keys.
    pub user: Option<Arc<str>>,
    /// Reply protocol chosen by HELLO.
    pub proto: Proto,
    /// `CLIENT SETNAME`'s and `SETINFO`'s names and MULTI / WATCH state, once used.
    pub(crate) rare: Option<Box<Rare>>,
    /// Whether an authenticated session was ever seen (Waiting after AUTH returns here).
    pub authenticated: bool,
    /// Bytes received but not yet parsed (a partial command, or input behind a pending one).
    pub inbuf: InBuf,
    /// How far the parser got into the partial command at the front of `inbuf`.
    pub parse_progress: crate::resp::Progress,
    /// Wrong passwords on this connection.
    pub auth_failures: u32,
    /// The peer sent EOF: finish what was received, flush, close.
    pub peer_eof: bool,
    /// The command now running on a pool, while the session waits for it.
    pub pending: Option<Box<Pending>>,
    /// The peer's address, kept as (IP, port): 20 bytes where a `SocketAddr` takes 32, in
    /// every session. [`Conn::peer_addr`] gives it back whole.
    pub peer: Option<(IpAddr, u16)>,
    /// When the session opened, in seconds since the server started (`CLIENT LIST`'s `age=`
    /// counts whole seconds; an `Instant` would cost every session 12 bytes more).
    pub created: u32,
    pub last_active: Instant,
    /// The last command executed (`CLIENT LIST`'s `cmd=`), as its row in the command table: a
    /// name would cost every idle session 14 bytes more.
    pub last_command: CommandIndex,
    /// Since when a partial command has been waiting for its remaining bytes.
    pub partial_since: Option<Instant>,
    /// Number of the last job handed to a pool; results for any other number are stale. It
    /// wraps: a stale result is one of the last few jobs, never four billion jobs old.
    pub job_seq: u32,
    /// Until AUTH: when the session is closed for not authenticating.
    pub auth_deadline: Option<Instant>,
}

impl Conn {
    /// The peer's address, where known.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.map(SocketAddr::from)
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// The client's names, created on first use.
    pub fn names_mut(&mut self) -> &mut ClientNames {
        &mut self.rare_mut().names
    }

    fn names(&self) -> Option<&ClientNames> {
        self.rare.as_deref().map(|rare| &rare.names)
    }

    /// `CLIENT SETNAME`'s name, if set.
    pub fn name(&self) -> Option<&[u8]> {
        self.names()?.name.as_deref()
    }

    /// MULTI / WATCH state, if in use.
    pub fn transaction(&self) -> Option<&Transaction> {
        self.rare.as_deref()?.transaction.as_ref()
    }

    /// [`Conn::transaction`], to change.
    pub fn transaction_mut(&mut self) -> Option<&mut Transaction> {
        self.rare.as_deref_mut()?.transaction.as_mut()
    }

    /// MULTI / WATCH state, created on first use.
    pub fn transaction_entry(&mut self) -> &mut Transaction {
        self.rare_mut()
            .transaction
            .get_or_insert_with(Default::default)
    }

    /// Ends MULTI and forgets the WATCHed keys: the state as it was, if any.
    pub fn take_transaction(&mut self) -> Option<Transaction> {
        self.rare.as_deref_mut()?.transaction.take()
    }

    /// Whether the session is between MULTI and EXEC/DISCARD: commands are queued, not run.
    pub fn in_multi(&self) -> bool {
        self.transaction()
            .is_some_and(|transaction| transaction.queued.is_some())
    }

    /// True when nothing is pending and no input waits: the session may close on a drain.
    pub fn idle(&self) -> bool {
        self.state != State::Waiting && self.inbuf.is_empty()
    }

    /// One `CLIENT INFO` / `CLIENT LIST` line in Redis's field layout; `pending_output` is what
    /// the ring still holds to send to this session.
    /// `server_started` is what [`Conn::created`] counts from.
    pub fn info_line(
        &self,
        listen_addr: SocketAddr,
        pending_output: usize,
        table: &Table,
        server_started: Instant,
    ) -> String {
        let now = std::time::Instant::now();
        let names = self.names();
        let text = |field: Option<&Vec<u8>>| {
            field
                .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                .unwrap_or_default()
        };
        let name = text(names.and_then(|n| n.name.as_ref()));
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={} idle={} flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 watch=0 qbuf={} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem={} tot-mem=0 events=r cmd={} user={} redir=-1 resp={} lib-name={} lib-ver={}\n",
            self.client_id,
            self.peer_addr().map(|p| p.to_string()).unwrap_or_default(),
            listen_addr,
            name,
            now.saturating_duration_since(server_started)
                .as_secs()
                .saturating_sub(u64::from(self.created)),
            now.duration_since(self.last_active).as_secs(),
            self.inbuf.len(),
            pending_output,
            table.name_of(self.last_command),
            self.user.as_deref().unwrap_or(""),
            if self.proto == Proto::Resp3 { 3 } else { 2 },
            text(names.and_then(|n| n.lib_name.as_ref())),
            text(names.and_then(|n| n.lib_ver.as_ref())),
        )
    }
}

/// A session's unparsed input: bytes from `start` on. Consuming a command moves `start`, not the
/// bytes, so a deep pipeline behind a slow command is not shifted to the front once per command
/// (that was quadratic in the pipeline's size).
#[derive(Debug, Default)]
pub struct InBuf {
    bytes: Vec<u8>,
    start: usize,
}

impl InBuf {
    /// Capacity kept between bursts; past it, a buffer mostly consumed is given back.
    const KEEP: usize = 4 * 1024;

    /// The unparsed bytes.
    pub fn unparsed(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// How many bytes are unparsed.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends received bytes. The consumed prefix is dropped first only when it is more than
    /// half the buffer: each compaction then moves fewer bytes than were consumed since the
    /// last, so the moving stays linear in the input.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        if self.start > self.bytes.len() / 2 {
            self.compact();
        }
        self.bytes.extend_from_slice(data);
    }

    /// Marks the first `n` unparsed bytes as parsed.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.bytes.len() {
            self.bytes.clear();
            self.start = 0;
        }
        // A burst (a large value, a deep pipeline) must not leave its capacity with an idle
        // session. Shrinking only at a quarter keeps it from happening every command.
        if self.bytes.capacity() > Self::KEEP && self.len() <= self.bytes.capacity() / 4 {
            self.compact();
            self.bytes.shrink_to(self.bytes.len());
        }
    }

    fn compact(&mut self) {
        self.bytes.drain(..self.start);
        self.start = 0;
    }
}

// Every idle session holds one `Conn`: a field that grows it shows up in the per-session memory
// figure (bench/idle-memory.sh), so growth should be a decision, not an accident.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Conn>() <= 168);
