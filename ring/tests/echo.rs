//! Drives a real ring with a tiny echo handler over loopback TCP, on every receive and accept
//! path, and checks that results for a session that has gone are dropped rather than applied to
//! the session that reuses its slot.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ringport_ring::{
    listen, local_addr, mailbox, probe, CloseReason, Context, Disable, EpollLoop, Faults, Handler,
    RecvPath, Ring, RingConfig, RingStats, Sender, Session, SessionId,
};

/// Echoes bytes; "later:" echoes through the mailbox; "bye" closes; "timer" arms a deadline;
/// "sleepy" arms one 2 s ahead; "stall" holds the ring thread until the test says go; "panic"
/// panics on the ring thread. A message "kill" closes its session.
struct Echo {
    sender: Sender<Vec<u8>>,
    ids: mpsc::Sender<SessionId>,
    closed: Arc<AtomicUsize>,
    stalled: mpsc::Sender<()>,
    go: mpsc::Receiver<()>,
}

impl Handler for Echo {
    type Conn = ();
    type Msg = Vec<u8>;

    fn on_open(&mut self, _cx: &Context, id: SessionId, _peer: Option<SocketAddr>) {
        self.ids.send(id).unwrap();
    }

    fn on_attach(&mut self, _cx: &Context, id: SessionId, msg: Vec<u8>) -> Option<()> {
        (msg == b"take").then(|| self.ids.send(id).unwrap())
    }

    fn on_data(&mut self, cx: &Context, s: &mut Session<'_, ()>, data: &[u8]) {
        if data.starts_with(b"later:") {
            self.sender.send(s.id(), data[6..].to_vec());
        } else if data.starts_with(b"bye") {
            s.out().extend_from_slice(b"ciao");
            s.close_after_flush();
        } else if data.starts_with(b"flood") {
            // More than the socket buffers hold: the send stays in flight while the peer
            // does not read.
            s.out().extend(std::iter::repeat_n(b'x', 8 << 20));
        } else if data.starts_with(b"kill") {
            s.close();
        } else if data.starts_with(b"timer") {
            s.set_deadline(Some(cx.now + Duration::from_millis(50)));
        } else if data.starts_with(b"sleepy") {
            s.set_deadline(Some(cx.now + Duration::from_secs(2)));
        } else if data.starts_with(b"stall") {
            self.stalled.send(()).unwrap();
            self.go.recv_timeout(Duration::from_secs(10)).unwrap();
        } else if data.starts_with(b"panic") {
            panic!("the echo handler was asked to panic");
        } else {
            s.out().extend_from_slice(data);
        }
    }

    fn on_message(&mut self, _cx: &Context, s: &mut Session<'_, ()>, msg: Vec<u8>) {
        if msg == b"kill" {
            s.close();
        } else {
            s.out().extend_from_slice(&msg);
        }
    }

    fn on_deadline(&mut self, _cx: &Context, s: &mut Session<'_, ()>) {
        s.out().extend_from_slice(b"tick");
    }

    fn on_drain(&mut self, _cx: &Context, s: &mut Session<'_, ()>) {
        s.close_after_flush();
    }

    fn on_close(&mut self, _cx: &Context, _id: SessionId, _conn: (), _reason: CloseReason) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
}

struct Running {
    addr: SocketAddr,
    sender: Sender<Vec<u8>>,
    ids: mpsc::Receiver<SessionId>,
    closed: Arc<AtomicUsize>,
    stats: Arc<RingStats>,
    global_sessions: Arc<AtomicUsize>,
    stalled: mpsc::Receiver<()>,
    go: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

fn start(disable: Disable) -> Running {
    start_on(disable, false, Faults::default())
}

fn start_on(disable: Disable, epoll: bool, faults: Faults) -> Running {
    let listener = listen("127.0.0.1:0".parse().unwrap(), 128).unwrap();
    let addr = local_addr(&listener).unwrap();
    let (sender, receiver) = mailbox::<Vec<u8>>().unwrap();
    let (ids_tx, ids) = mpsc::channel();
    let closed = Arc::new(AtomicUsize::new(0));
    let stats = Arc::new(RingStats::default());
    // Under valgrind (ci/test sets RINGPORT_RING_ENTER_WAIT=0) the ring must not block inside
    // io_uring_enter, which valgrind cannot follow.
    let disable = if std::env::var("RINGPORT_RING_ENTER_WAIT").as_deref() == Ok("0") {
        disable.union(Disable {
            enter_wait: true,
            ..Disable::default()
        })
    } else {
        disable
    };
    let features = probe(disable).expect("io_uring available");
    let (stalled_tx, stalled) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let handler = Echo {
        sender: sender.clone(),
        ids: ids_tx,
        closed: closed.clone(),
        stalled: stalled_tx,
        go: go_rx,
    };
    let global_sessions = Arc::new(AtomicUsize::new(0));
    let config = RingConfig {
        index: 0,
        listeners: vec![ringport_ring::Listener::plain(listener)],
        sq_entries: 64,
        recv_buffers: 16,
        recv_buffer_size: 4096,
        max_sessions: 4,
        global_sessions: global_sessions.clone(),
        reject_message: b"full\r\n".to_vec(),
        tick: Duration::from_millis(10),
        drain_timeout: Duration::from_secs(2),
        features,
        stats: stats.clone(),
        faults,
    };
    let thread = std::thread::spawn(move || {
        if epoll {
            let ring = EpollLoop::new(config, handler, receiver).unwrap();
            ring.run().unwrap();
        } else {
            let ring = Ring::new(config, handler, receiver).unwrap();
            if faults.bufring_register_einval {
                assert_eq!(ring.features().recv, RecvPath::PollThenRecv);
            }
            ring.run().unwrap();
        }
    });
    Running {
        addr,
        sender,
        ids,
        closed,
        stats,
        global_sessions,
        stalled,
        go,
        thread,
    }
}

fn read_exact(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

fn exercise(disable: Disable) {
    exercise_on(start(disable));
}

fn exercise_on(r: Running) {
    let mut a = TcpStream::connect(r.addr).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let id_a = r.ids.recv_timeout(Duration::from_secs(5)).unwrap();

    a.write_all(b"hello").unwrap();
    assert_eq!(read_exact(&mut a, 5), b"hello");

    // A large echo crosses many receive buffers and partial sends.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut reader = a.try_clone().unwrap();
    let expect = big.clone();
    let check = std::thread::spawn(move || read_exact(&mut reader, expect.len()) == expect);
    a.write_all(&big).unwrap();
    assert!(check.join().unwrap(), "large echo came back intact");

    // A result from another thread reaches its session.
    a.write_all(b"later:async").unwrap();
    assert_eq!(read_exact(&mut a, 5), b"async");

    // Deadlines fire.
    a.write_all(b"timer").unwrap();
    assert_eq!(read_exact(&mut a, 4), b"tick");

    // Close, then a late result for the old session must not reach the slot's next owner.
    a.write_all(b"bye").unwrap();
    assert_eq!(read_exact(&mut a, 4), b"ciao");
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.closed.load(Ordering::SeqCst) < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut b = TcpStream::connect(r.addr).unwrap();
    b.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let id_b = r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(id_b.slot, id_a.slot, "the slot is reused");
    assert_ne!(id_b.generation, id_a.generation, "with a new generation");
    r.sender.send(id_a, b"stale".to_vec());
    let mut buf = [0u8; 16];
    let err = b.read(&mut buf).unwrap_err();
    assert!(matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    b.write_all(b"ok").unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(read_exact(&mut b, 2), b"ok");

    // Beyond max_sessions a connection is refused with the message.
    let mut extra: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(r.addr).unwrap())
        .collect();
    for _ in 0..3 {
        r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
    }
    let mut refused = TcpStream::connect(r.addr).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut msg = Vec::new();
    refused.read_to_end(&mut msg).unwrap();
    assert_eq!(msg, b"full\r\n");
    assert_eq!(r.stats.rejected_max_sessions.load(Ordering::Relaxed), 1);

    // Drain closes everyone and the ring returns.
    r.sender.drain();
    r.thread.join().unwrap();
    for s in extra.iter_mut() {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    assert_eq!(r.stats.sessions.load(Ordering::Relaxed), 0);
}

/// A socket handed over with `Sender::attach` is driven like a session (data, output, close) but
/// counts as none, even with the ring full; one the handler refuses is closed.
fn attached_sockets(disable: Disable, epoll: bool) {
    let r = start_on(disable, epoll, Faults::default());
    let pair = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        near.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (far, _) = listener.accept().unwrap();
        (near, std::os::fd::OwnedFd::from(far))
    };
    // The ring is full of clients (max_sessions 4): an attached socket still gets a slot.
    let clients: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(r.addr).unwrap())
        .collect();
    for _ in 0..4 {
        r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
    }
    let (mut taken, far) = pair();
    r.sender.attach(far, b"take".to_vec());
    let id = r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
    taken.write_all(b"hello").unwrap();
    assert_eq!(read_exact(&mut taken, 5), b"hello");
    r.sender.send(id, b"from afar".to_vec());
    assert_eq!(read_exact(&mut taken, 9), b"from afar");
    assert_eq!(r.stats.sessions.load(Ordering::Relaxed), 4);
    assert_eq!(r.global_sessions.load(Ordering::SeqCst), 4);

    let (mut refused, far) = pair();
    r.sender.attach(far, b"no".to_vec());
    let mut rest = Vec::new();
    refused.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "a refused socket is closed");

    // Its peer leaving closes it like any session, and frees no client's place.
    drop(taken);
    wait_until("the attached socket closed", || {
        r.closed.load(Ordering::SeqCst) == 1
    });
    assert_eq!(r.global_sessions.load(Ordering::SeqCst), 4);
    drop(clients);
    r.sender.drain();
    r.thread.join().unwrap();
    assert_eq!(r.stats.sessions.load(Ordering::Relaxed), 0);
    assert_eq!(r.global_sessions.load(Ordering::SeqCst), 0);
}

#[test]
fn attached_sockets_on_every_path() {
    attached_sockets(Disable::default(), false);
    attached_sockets(Disable::for_kernel_profile("5.10").unwrap(), false);
    attached_sockets(Disable::default(), true);
}

#[test]
fn fast_paths() {
    exercise(Disable::default());
}

#[test]
fn fallback_paths() {
    exercise(Disable::for_kernel_profile("5.10").unwrap().union(Disable {
        ext_arg: true,
        min_wait: true,
        ..Disable::default()
    }));
}

#[test]
fn without_defer_taskrun() {
    exercise(Disable {
        defer_taskrun: true,
        ..Disable::default()
    });
}

/// Regression: with DEFER_TASKRUN a ring that never entered with GETEVENTS (it was draining and
/// never slept) never saw the completions its own shutdown() caused, and the drain hung.
#[test]
fn poll_then_recv_with_defer_taskrun() {
    exercise(Disable {
        multishot_recv: true,
        ..Disable::default()
    });
}

#[test]
fn epoll_backend() {
    exercise_on(start_on(Disable::default(), true, Faults::default()));
}

/// Some distribution kernels (Ubuntu 24.04's 6.8.0-136 and later) reject every valid buffer-ring
/// registration with EINVAL. The ring must fall back to poll-then-recv, not abort.
#[test]
fn buffer_ring_registration_refused_falls_back() {
    exercise_on(start_on(
        Disable::default(),
        false,
        Faults {
            bufring_register_einval: true,
            ..Faults::default()
        },
    ));
}

/// The `enter-wait` fallback (block in poll(2) on the ring fd) serves like the others.
#[test]
fn poll_on_the_ring_fd_instead_of_a_blocking_enter() {
    exercise(Disable {
        enter_wait: true,
        ..Disable::default()
    });
}

/// A late completion on purpose: the session is closed while its send is still in flight (the
/// peer does not read). The slot must stay taken until that send's completion is reaped, then
/// be reused with a new generation, and no completion may be applied to the new session.
fn abort_with_a_send_in_flight(disable: Disable, epoll: bool) {
    let r = start_on(disable, epoll, Faults::default());
    let mut a = TcpStream::connect(r.addr).unwrap();
    let id_a = r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
    a.write_all(b"flood").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    a.write_all(b"kill").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.closed.load(Ordering::SeqCst) < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(r.closed.load(Ordering::SeqCst), 1, "the session closed");
    while r.stats.sessions.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        r.stats.sessions.load(Ordering::Relaxed),
        0,
        "the slot was freed"
    );
    let mut b = TcpStream::connect(r.addr).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let id_b = r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(id_b.slot, id_a.slot);
    assert_ne!(id_b.generation, id_a.generation);
    b.write_all(b"fresh").unwrap();
    assert_eq!(
        read_exact(&mut b, 5),
        b"fresh",
        "nothing of the old session leaks in"
    );
    assert_eq!(r.stats.stale_completions.load(Ordering::Relaxed), 0);
    drop(a);
    r.sender.drain();
    r.thread.join().unwrap();
}

#[test]
fn late_send_completion_after_close_on_every_path() {
    abort_with_a_send_in_flight(Disable::default(), false);
    abort_with_a_send_in_flight(Disable::for_kernel_profile("5.10").unwrap(), false);
    abort_with_a_send_in_flight(Disable::default(), true);
}

/// A reply larger than the socket takes waits for writability; once it has gone out, the loop
/// must stop watching for it. On epoll, writability is level-triggered: a watch left armed wakes
/// the loop on every turn while the session sits idle.
fn idle_after_a_reply_that_waited(epoll: bool) {
    let r = start_on(Disable::default(), epoll, Faults::default());
    let mut a = TcpStream::connect(r.addr).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
    a.write_all(b"flood").unwrap();
    // Let the send fill the socket and wait before the peer starts reading.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(read_exact(&mut a, 8 << 20).len(), 8 << 20);
    a.write_all(b"ping").unwrap();
    assert_eq!(read_exact(&mut a, 4), b"ping");
    let before = r.stats.enters.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    let woken = r.stats.enters.load(Ordering::Relaxed) - before;
    assert!(
        woken < 10,
        "an idle loop woke {woken} times in 300 ms after a reply that waited for writability"
    );
    drop(a);
    r.sender.drain();
    r.thread.join().unwrap();
}

#[test]
fn an_idle_loop_sleeps_after_a_reply_that_waited_for_room() {
    idle_after_a_reply_that_waited(true);
    idle_after_a_reply_that_waited(false);
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A final data completion (no `IORING_CQE_F_MORE`) that lands on a slot already closing must
/// finish the close: before the fix the slot, its descriptor and its `max_sessions` count leaked
/// and a drain waited for its cut. The ring thread is held in a callback while session B's data
/// arrives and a message closes B, so the close and the data completion meet in that order.
#[test]
fn a_final_data_completion_on_a_closing_slot_finishes_the_close() {
    let r = start_on(
        Disable::default(),
        false,
        Faults {
            final_recv_completions: true,
            ..Faults::default()
        },
    );
    let mut a = TcpStream::connect(r.addr).unwrap();
    r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
    let mut b = TcpStream::connect(r.addr).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let id_b = r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
    b.write_all(b"ping").unwrap();
    assert_eq!(read_exact(&mut b, 4), b"ping", "B's receive is armed again");
    a.write_all(b"stall").unwrap();
    r.stalled.recv_timeout(Duration::from_secs(5)).unwrap();
    b.write_all(b"data").unwrap();
    r.sender.send(id_b, b"kill".to_vec());
    r.go.send(()).unwrap();
    let mut rest = Vec::new();
    let _ = b.read_to_end(&mut rest);
    wait_until("B's slot is freed", || {
        r.stats.sessions.load(Ordering::Relaxed) == 1
    });
    assert_eq!(r.global_sessions.load(Ordering::SeqCst), 1);
    assert_eq!(
        r.stats.closed.load(Ordering::Relaxed),
        1,
        "B's descriptor was closed"
    );
    drop(a);
    wait_until("every session is gone", || {
        r.stats.sessions.load(Ordering::Relaxed) == 0
    });
    assert_eq!(r.global_sessions.load(Ordering::SeqCst), 0);
    r.sender.drain();
    r.thread.join().unwrap();
}

/// A ring whose only deadline is 2 s ahead sleeps until it is due: before, any armed deadline
/// made the loop wake every 10 ms tick (about 50 wake-ups in 500 ms).
fn a_far_deadline_lets_the_loop_sleep(disable: Disable, epoll: bool) {
    let r = start_on(disable, epoll, Faults::default());
    let mut a = TcpStream::connect(r.addr).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
    a.write_all(b"sleepy").unwrap();
    // Let the loop take the command and go to sleep.
    std::thread::sleep(Duration::from_millis(100));
    let before = r.stats.enters.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    let woken = r.stats.enters.load(Ordering::Relaxed) - before;
    assert!(
        woken < 10,
        "an idle loop with one deadline 2 s ahead woke {woken} times in 500 ms"
    );
    assert_eq!(read_exact(&mut a, 4), b"tick", "the deadline still fires");
    drop(a);
    r.sender.drain();
    r.thread.join().unwrap();
}

#[test]
fn a_far_deadline_lets_the_loop_sleep_on_every_path() {
    a_far_deadline_lets_the_loop_sleep(Disable::default(), false);
    a_far_deadline_lets_the_loop_sleep(Disable::default(), true);
    a_far_deadline_lets_the_loop_sleep(
        Disable {
            enter_wait: true,
            ..Disable::default()
        },
        false,
    );
    // Kernels without EXT_ARG wait with a timeout op.
    a_far_deadline_lets_the_loop_sleep(
        Disable::for_kernel_profile("5.10").unwrap().union(Disable {
            ext_arg: true,
            ..Disable::default()
        }),
        false,
    );
}

/// Reads until EOF or a reset; panics if the peer stays silent (its descriptor leaked).
fn expect_closed(stream: &mut TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0; 1 << 16];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the session was not closed: {e}"),
        }
    }
}

/// A ring that goes away without a drain (here a panic in a callback unwinds its thread) while
/// sessions have receives and a large send in flight: the kernel must be done with every buffer
/// before it is freed (ci/valgrind runs this under memcheck) and every session's descriptor is
/// closed. Before, the descriptors leaked and the peers never saw the end.
fn dropped_with_operations_in_flight(disable: Disable, epoll: bool) {
    let r = start_on(disable, epoll, Faults::default());
    let mut idle = TcpStream::connect(r.addr).unwrap();
    r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
    let mut flooded = TcpStream::connect(r.addr).unwrap();
    r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
    flooded.write_all(b"flood").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut culprit = TcpStream::connect(r.addr).unwrap();
    r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
    culprit.write_all(b"panic").unwrap();
    assert!(r.thread.join().is_err(), "the ring thread panicked");
    expect_closed(&mut idle);
    expect_closed(&mut flooded);
    expect_closed(&mut culprit);
    assert_eq!(r.global_sessions.load(Ordering::SeqCst), 0);
    // The eventfd the ring's read was armed on is written after the ring is gone.
    r.sender.drain();
}

#[test]
fn a_ring_dropped_with_operations_in_flight_lets_go_of_everything() {
    dropped_with_operations_in_flight(Disable::default(), false);
    dropped_with_operations_in_flight(Disable::for_kernel_profile("5.10").unwrap(), false);
    dropped_with_operations_in_flight(Disable::default(), true);
}

/// With the busy tick (io_uring, 6.4+) the ring's wait counts the small replies it submits
/// (what that saves is shown by `bench/before-after.sh`, not here); replies go out whole and in
/// order with it and without: small ones, one larger than the socket takes, and small ones that
/// find the socket full because the peer reads only once it has sent everything.
#[test]
fn replies_go_out_whole_with_the_busy_tick_and_without() {
    for tick in [true, false] {
        let r = start(Disable {
            busy_tick: !tick,
            ..Disable::default()
        });
        let mut a = TcpStream::connect(r.addr).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
        for i in 0..200 {
            let msg = format!("m{:05}", i);
            a.write_all(msg.as_bytes()).unwrap();
            assert_eq!(read_exact(&mut a, msg.len()), msg.as_bytes());
        }

        a.write_all(b"flood").unwrap();
        // Let the send fill the socket before the peer starts reading.
        std::thread::sleep(Duration::from_millis(100));
        assert!(read_exact(&mut a, 8 << 20).iter().all(|&b| b == b'x'));
        a.write_all(b"after").unwrap();
        assert_eq!(read_exact(&mut a, 5), b"after");

        // An echo in receive-buffer-sized pieces that the peer reads only once it has sent the
        // whole: small replies, counted, find the socket full, and must still go out.
        let big: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
        a.write_all(&big).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            read_exact(&mut a, big.len()) == big,
            "late-read echo intact"
        );
        assert!(
            r.stats.sends_parked.load(Ordering::Relaxed) >= 1,
            "the flood's send found the socket full"
        );
        drop(a);
        r.sender.drain();
        r.thread.join().unwrap();
    }
}

/// The server's end of `client`, found among this process's descriptors by its peer address.
fn server_side_of(client: &TcpStream) -> std::os::fd::RawFd {
    let want = client.local_addr().unwrap();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(fd) = entry.unwrap().file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed for the call; one closed meanwhile fails it.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if socket2::SockRef::from(&borrowed)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            == Some(want)
        {
            return fd;
        }
    }
    panic!("no descriptor of this process is connected to {want}");
}

/// A socket ioctl that reports one count (SIOCINQ, SIOCOUTQNSD).
fn socket_count(fd: std::os::fd::RawFd, request: libc::Ioctl) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: both requests write one int we own.
    assert_eq!(unsafe { libc::ioctl(fd, request, &mut n) }, 0);
    n
}

/// A counted reply that finds the socket full completes only once its peer reads, so the wait
/// that counted it waits for one completion more than comes: the session's next request would
/// sit unanswered (and its peer, having read what came, wait for ever) but for the busy tick,
/// which ends such a wait. Both of the session's buffers are shrunk so that a few replies fill
/// them, and each request goes alone; the test counts the reply bytes the kernel took (unread at
/// the peer plus not yet sent at the server) and stops sending once one was not taken whole.
/// Another session is answered afterwards.
#[test]
fn a_counted_send_that_finds_the_socket_full_does_not_stall_the_ring() {
    // Plain descriptors, so the test can find the server's socket and shrink its buffer; no
    // min-wait, whose bound would end the wait as well (ringport's default).
    let r = start(Disable {
        direct_descriptors: true,
        min_wait: true,
        ..Disable::default()
    });
    let mut b = TcpStream::connect(r.addr).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
    b.write_all(b"warm").unwrap();
    assert_eq!(read_exact(&mut b, 4), b"warm");

    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&r.addr.into()).unwrap();
    let mut a: TcpStream = socket.into();
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    r.ids.recv_timeout(Duration::from_secs(5)).unwrap();
    let server = server_side_of(&a);
    // SAFETY: as in `server_side_of`; the ring keeps the descriptor open while the session lives.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(server) };
    socket2::SockRef::from(&borrowed)
        .set_send_buffer_size(4096)
        .unwrap();

    let request: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let client = a.as_raw_fd();
    let taken = || socket_count(client, libc::FIONREAD) + socket_count(server, libc::SIOCOUTQNSD);
    let mut sent = 0;
    let mut before = taken();
    loop {
        assert!(sent < 1000, "1000 replies never filled the socket");
        a.write_all(&request).unwrap();
        sent += 1;
        // Alone: its reply is one send, counted, done before the next request comes.
        std::thread::sleep(Duration::from_millis(20));
        let now = taken();
        if now - before < request.len() as i32 {
            break;
        }
        before = now;
    }
    // Without the tick the ring would sleep on with a request unanswered: the peer reads what
    // it was sent and waits for ever.
    let echoed = read_exact(&mut a, sent * request.len());
    b.write_all(b"other").unwrap();
    assert_eq!(read_exact(&mut b, 5), b"other");
    assert!(echoed.chunks(request.len()).all(|c| c == request));
    drop((a, b));
    r.sender.drain();
    r.thread.join().unwrap();
}
