//! What a command handler works through: [`Call`].
//!
//! A handler sees its session's state, its reply output and the server's shared state, and hands
//! work to a pool through [`Call::offload_compute`] / [`Call::offload_store`], which also move
//! the session to `Waiting`. It never sees the ring's session handle or the ring handler, so the
//! commands depend on nothing above them: the session dispatches down into [`super::execute`]
//! and the commands never call back up.

use std::sync::Arc;
use std::time::Duration;

use ringport_ring::{Context, Sender, Session};

use super::api::Handlers;
use crate::conn::{Conn, Pending, State};
use crate::msg::{Msg, Replier};
use crate::pool::{ComputePool, Job};
use crate::resp::Proto;
use crate::shared::Shared;
use crate::storelink::{Handed, ReadLink};
use crate::storepool::StoreWork;

/// The reply when a pool's queue is full.
pub(crate) const BUSY: &[u8] = b"-BUSY server overloaded, try again\r\n";

/// One command's view of its session and of the server, for the length of one call on the ring.
pub struct Call<'a, 's> {
    /// The ring's index and the time of this batch of completions.
    pub cx: &'a Context,
    pub shared: &'a Arc<Shared>,
    /// Every command's handler, row for row with `shared.table` (EXEC runs queued ones).
    pub(crate) handlers: &'a Handlers,
    /// The ring's own mailbox, cloned into every job so results come back to this ring.
    mailbox: &'a Sender<Msg>,
    /// The ring's own store connection for GETs (`storelink`).
    link: &'a mut ReadLink,
    session: &'a mut Session<'s, Conn>,
}

impl<'a, 's> Call<'a, 's> {
    pub fn new(
        cx: &'a Context,
        shared: &'a Arc<Shared>,
        handlers: &'a Handlers,
        mailbox: &'a Sender<Msg>,
        link: &'a mut ReadLink,
        session: &'a mut Session<'s, Conn>,
    ) -> Self {
        Call {
            cx,
            shared,
            handlers,
            mailbox,
            link,
            session,
        }
    }

    /// The session's output: replies are appended here and sent by the ring.
    pub fn out(&mut self) -> &mut Vec<u8> {
        self.session.out()
    }

    pub fn conn(&self) -> &Conn {
        self.session.conn
    }

    pub fn conn_mut(&mut self) -> &mut Conn {
        self.session.conn
    }

    /// The authenticated user, whose keys a store command reads and writes.
    pub fn owner(&self) -> Arc<str> {
        self.conn()
            .user
            .clone()
            .expect("store commands run only after AUTH")
    }

    /// The reply protocol the session chose with HELLO.
    pub fn proto(&self) -> Proto {
        self.session.conn.proto
    }

    /// Bytes queued for the session and not yet sent.
    pub fn pending_output(&self) -> usize {
        self.session.pending_output()
    }

    /// Sends what is queued, then closes the session.
    pub fn close_after_flush(&mut self) {
        self.session.close_after_flush();
    }

    /// `CLIENT INFO`'s line for this session.
    pub fn client_info_line(&self) -> String {
        self.conn().info_line(
            self.shared.listen_addr,
            self.pending_output(),
            &self.shared.table,
            self.shared.started,
        )
    }

    /// Marks the session authenticated as `user`, ready for any command.
    pub fn authenticate(&mut self, user: String) {
        let conn = self.conn_mut();
        conn.user = Some(Arc::from(user));
        conn.authenticated = true;
        conn.state = State::Ready;
        conn.auth_deadline = None;
        // The session re-arms for its other deadlines as it goes.
        self.session.set_deadline(None);
    }

    /// A new job number for the session and the handle its job answers through.
    pub fn replier(&mut self) -> Replier {
        let conn = self.conn_mut();
        conn.job_seq = conn.job_seq.wrapping_add(1);
        let seq = conn.job_seq;
        Replier::new(self.mailbox.clone(), self.session.id(), seq)
    }

    /// Runs `job` on the compute pool; the session waits for its reply (or gets BUSY at once).
    pub fn offload_compute(&mut self, job: Job) {
        let shared = self.shared;
        self.offload_to(&shared.compute, job);
    }

    /// Runs AUTH's `job` for `user` on the auth pool, which heavy commands never queue on, in
    /// the suspect lane when `suspect` (`auth::AuthLanes`).
    pub fn offload_auth(&mut self, user: &str, suspect: bool, job: Job) {
        let shared = self.shared.clone();
        let submitted = self.shared.auth_lanes.submit(user, suspect, job, || {
            let runner = shared.clone();
            shared
                .auth
                .submit(Box::new(move || runner.auth_lanes.run_next()))
                .is_ok()
        });
        self.waiting_unless_busy(submitted);
    }

    fn offload_to(&mut self, pool: &ComputePool, job: Job) {
        let submitted = pool.submit(job).is_ok();
        self.waiting_unless_busy(submitted);
    }

    /// After handing the running command's work to a pool: the session waits for the reply,
    /// or, when the pool was full, gets BUSY at once.
    pub fn waiting_unless_busy(&mut self, submitted: bool) {
        if submitted {
            let now = self.cx.now;
            let conn = self.conn_mut();
            conn.state = State::Waiting;
            conn.pending = Some(Pending::new(conn.last_command, now));
        } else {
            self.out().extend_from_slice(BUSY);
        }
    }

    /// Runs `job` on the store pool; the session waits for its reply (or gets BUSY at once).
    /// `allowance` is how much longer than `--store-timeout` the job may take (SLEEP's own
    /// delay).
    pub fn offload_store(&mut self, work: StoreWork, allowance: Duration) {
        let submitted = match work {
            // The ring's own connection when it has one, else the pool.
            StoreWork::Get(get) => {
                self.link
                    .submit(get, &self.shared.store)
                    .map(|handed| match handed {
                        Handed::Link(ticket, poke) => {
                            if let Some(link) = poke {
                                self.mailbox.send(link, Msg::LinkFlush);
                            }
                            ticket
                        }
                        Handed::Pool(ticket) => ticket,
                    })
            }
            work => self.shared.store.submit(work, allowance),
        };
        match submitted {
            Ok(ticket) => {
                let now = self.cx.now;
                // Watch for a store that stops answering: the first look comes after the store
                // timeout plus the job's own allowance.
                let at = now + self.shared.config.store_timeout + allowance;
                let conn = self.conn_mut();
                conn.state = State::Waiting;
                let mut pending = Pending::new(conn.last_command, now);
                pending.store = Some((ticket, at));
                conn.pending = Some(pending);
                if self.session.deadline().is_none_or(|d| at < d) {
                    self.session.set_deadline(Some(at));
                }
            }
            Err(_) => self.out().extend_from_slice(BUSY),
        }
    }
}
