//! The store's `Conn` API, one suite run against both backends: embedded (redb in a temp dir)
//! and PostgreSQL (a throwaway cluster, or `DATABASE_URL`). Then what only one backend has:
//! reopening and locking the embedded file, migrations, outages and crashes of PostgreSQL.
//!
//! The INCR cases mirror redis-server 7 (checked by hand with redis-cli): only canonical decimal
//! integers count ("01", "+1", " 1", "-0" are not integers), and overflow is its own error.

#[path = "common/pg.rs"]
mod pg;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ringport::store::{self, Backend, Conn, Entry, StoreError, StoreSpec, UserRecord};

/// An open store plus whatever keeps it alive (its temp dir).
struct Store {
    backend: Arc<dyn Backend>,
    _dir: Option<tempfile::TempDir>,
}

impl Store {
    fn conn(&self) -> Box<dyn Conn> {
        self.backend.connect().expect("connect to the store")
    }
}

fn embedded_store() -> Store {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = StoreSpec::parse(None, &dir.path().join("data")).unwrap();
    Store {
        backend: store::open(&spec).expect("open the embedded store"),
        _dir: Some(dir),
    }
}

fn postgres_store(label: &str) -> Store {
    let url = pg::PgCluster::shared().fresh_url(label);
    Store {
        backend: open_postgres(&url),
        _dir: None,
    }
}

fn open_postgres(url: &str) -> Arc<dyn Backend> {
    let spec = StoreSpec::parse(Some(url), Path::new("unused")).unwrap();
    store::open(&spec).expect("open the PostgreSQL store")
}

/// Every case below, once per backend: `embedded::case` and `postgres::case`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $( #[test] fn $case() { super::$case(&super::embedded_store()) } )*
        }
        mod postgres {
            $( #[test] fn $case() { super::$case(&super::postgres_store(stringify!($case))) } )*
        }
    };
}

on_both_backends!(
    describes_itself,
    get_set_overwrite,
    binary_keys_and_values,
    empty_and_large_values,
    mget_in_order_with_repeats,
    mset_later_duplicate_wins,
    del_counts_each_key_once,
    exists_counts_repeats,
    empty_key_lists,
    owners_are_isolated,
    incr_by_counts,
    incr_rejects_what_redis_rejects,
    incr_overflow_leaves_the_value,
    incr_is_atomic_across_connections,
    writes_are_visible_to_other_connections,
    sleep_waits,
    users_crud,
    transact_commits_all_or_nothing,
    expired_keys_are_absent_before_any_sweep,
    plain_writes_clear_an_expiry_and_incr_keeps_it,
    txn_scans_counts_and_clears_one_owner,
);

// These take the store by value: counting its rows closes the embedded one first.
#[test]
fn embedded_sweep_removes_expired_rows_in_bounded_batches() {
    sweep_removes_expired_rows_in_bounded_batches(embedded_store());
}

#[test]
fn postgres_sweep_removes_expired_rows_in_bounded_batches() {
    sweep_removes_expired_rows_in_bounded_batches(postgres_store("sweep"));
}

fn describes_itself(store: &Store) {
    let description = store.backend.describe();
    match store.backend.kind() {
        "embedded" => assert!(
            description.starts_with("redb at ") && description.ends_with("ringport.redb"),
            "{description}"
        ),
        "postgres" => assert!(description.starts_with("postgres host="), "{description}"),
        other => panic!("unknown kind {other}"),
    }
}

fn get_set_overwrite(store: &Store) {
    let mut conn = store.conn();
    assert_eq!(conn.get("alice", b"k").unwrap(), None);
    conn.set("alice", b"k", b"v1").unwrap();
    assert_eq!(conn.get("alice", b"k").unwrap(), Some(b"v1".to_vec()));
    conn.set("alice", b"k", b"v2").unwrap();
    assert_eq!(conn.get("alice", b"k").unwrap(), Some(b"v2".to_vec()));
}

fn binary_keys_and_values(store: &Store) {
    let mut conn = store.conn();
    let key: &[u8] = b"\0k\r\n\xff\xfe";
    let value: Vec<u8> = (0..=255u8).chain(*b"\r\n\0").collect();
    conn.set("alice", key, &value).unwrap();
    assert_eq!(conn.get("alice", key).unwrap(), Some(value.clone()));
    // A key that is a prefix of, or differs by one byte from, the stored one is another key.
    assert_eq!(conn.get("alice", b"\0k\r\n\xff").unwrap(), None);
    assert_eq!(conn.get("alice", b"\0k\r\n\xff\xfe\0").unwrap(), None);
    assert_eq!(conn.exists("alice", &[key]).unwrap(), 1);
    assert_eq!(
        conn.mget("alice", &[key, b"\0"]).unwrap(),
        vec![Some(value), None]
    );
    assert_eq!(conn.del("alice", &[key]).unwrap(), 1);
    assert_eq!(conn.get("alice", key).unwrap(), None);
}

fn empty_and_large_values(store: &Store) {
    let mut conn = store.conn();
    conn.set("alice", b"", b"empty key").unwrap();
    conn.set("alice", b"empty value", b"").unwrap();
    assert_eq!(conn.get("alice", b"").unwrap(), Some(b"empty key".to_vec()));
    assert_eq!(conn.get("alice", b"empty value").unwrap(), Some(Vec::new()));
    let large: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    conn.set("alice", b"large", &large).unwrap();
    assert_eq!(conn.get("alice", b"large").unwrap(), Some(large));
}

fn mget_in_order_with_repeats(store: &Store) {
    let mut conn = store.conn();
    conn.set("alice", b"a", b"1").unwrap();
    conn.set("alice", b"b", b"2").unwrap();
    assert_eq!(
        conn.mget("alice", &[b"a", b"missing", b"a", b"b", b"missing"])
            .unwrap(),
        vec![
            Some(b"1".to_vec()),
            None,
            Some(b"1".to_vec()),
            Some(b"2".to_vec()),
            None
        ]
    );
}

fn mset_later_duplicate_wins(store: &Store) {
    let mut conn = store.conn();
    conn.set("alice", b"j", b"old").unwrap();
    conn.mset(
        "alice",
        &[(b"k", b"1"), (b"j", b"2"), (b"k", b"3"), (b"\0", b"4")],
    )
    .unwrap();
    assert_eq!(
        conn.mget("alice", &[b"k", b"j", b"\0"]).unwrap(),
        vec![
            Some(b"3".to_vec()),
            Some(b"2".to_vec()),
            Some(b"4".to_vec())
        ]
    );
}

fn del_counts_each_key_once(store: &Store) {
    let mut conn = store.conn();
    conn.mset("alice", &[(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
        .unwrap();
    assert_eq!(conn.del("alice", &[b"a", b"a", b"b", b"nope"]).unwrap(), 2);
    assert_eq!(conn.del("alice", &[b"a"]).unwrap(), 0);
    assert_eq!(
        conn.mget("alice", &[b"a", b"b", b"c"]).unwrap(),
        vec![None, None, Some(b"3".to_vec())]
    );
}

fn exists_counts_repeats(store: &Store) {
    let mut conn = store.conn();
    conn.set("alice", b"a", b"1").unwrap();
    conn.set("alice", b"b", b"").unwrap();
    assert_eq!(
        conn.exists("alice", &[b"a", b"a", b"b", b"nope"]).unwrap(),
        3
    );
    assert_eq!(conn.exists("alice", &[b"nope"]).unwrap(), 0);
}

fn empty_key_lists(store: &Store) {
    let mut conn = store.conn();
    assert_eq!(
        conn.mget("alice", &[]).unwrap(),
        Vec::<Option<Vec<u8>>>::new()
    );
    conn.mset("alice", &[]).unwrap();
    assert_eq!(conn.del("alice", &[]).unwrap(), 0);
    assert_eq!(conn.exists("alice", &[]).unwrap(), 0);
}

fn owners_are_isolated(store: &Store) {
    let mut conn = store.conn();
    conn.set("alice", b"k", b"alice's").unwrap();
    assert_eq!(conn.get("bob", b"k").unwrap(), None);
    assert_eq!(conn.exists("bob", &[b"k"]).unwrap(), 0);
    assert_eq!(conn.mget("bob", &[b"k"]).unwrap(), vec![None]);
    assert_eq!(conn.del("bob", &[b"k"]).unwrap(), 0);
    assert_eq!(conn.incr_by("bob", b"k", 5).unwrap(), 5);
    conn.mset("bob", &[(b"k", b"bob's"), (b"only-bob", b"x")])
        .unwrap();
    assert_eq!(conn.get("alice", b"k").unwrap(), Some(b"alice's".to_vec()));
    assert_eq!(conn.get("alice", b"only-bob").unwrap(), None);
    assert_eq!(conn.get("bob", b"k").unwrap(), Some(b"bob's".to_vec()));
    // Owner names that would run together without a separator stay apart.
    conn.set("ab", b"c", b"1").unwrap();
    assert_eq!(conn.get("a", b"bc").unwrap(), None);
    assert_eq!(conn.del("alice", &[b"k"]).unwrap(), 1);
    assert_eq!(conn.get("bob", b"k").unwrap(), Some(b"bob's".to_vec()));
}

fn incr_by_counts(store: &Store) {
    let mut conn = store.conn();
    assert_eq!(conn.incr_by("alice", b"n", 1).unwrap(), 1);
    assert_eq!(conn.incr_by("alice", b"n", 1).unwrap(), 2);
    assert_eq!(conn.incr_by("alice", b"n", -5).unwrap(), -3);
    assert_eq!(conn.get("alice", b"n").unwrap(), Some(b"-3".to_vec()));
    conn.set("alice", b"s", b"41").unwrap();
    assert_eq!(conn.incr_by("alice", b"s", 1).unwrap(), 42);
    assert_eq!(conn.get("alice", b"s").unwrap(), Some(b"42".to_vec()));
    conn.set("alice", b"z", b"0").unwrap();
    assert_eq!(conn.incr_by("alice", b"z", 0).unwrap(), 0);
    assert_eq!(conn.incr_by("alice", b"min", i64::MIN).unwrap(), i64::MIN);
    assert_eq!(
        conn.get("alice", b"min").unwrap(),
        Some(b"-9223372036854775808".to_vec())
    );
}

fn incr_rejects_what_redis_rejects(store: &Store) {
    let mut conn = store.conn();
    let not_integers: &[&[u8]] = &[
        b"",
        b"abc",
        b"01",
        b"00",
        b"+1",
        b" 1",
        b"1 ",
        b"-0",
        b"-",
        b"1.0",
        b"1e3",
        b"0x10",
        b"1\r\n",
        b"\x001",
        b"9223372036854775808",
        b"-9223372036854775809",
        b"000000000000000000001",
    ];
    for value in not_integers {
        conn.set("alice", b"k", value).unwrap();
        assert_eq!(
            conn.incr_by("alice", b"k", 1),
            Err(StoreError::NotInteger),
            "{:?}",
            String::from_utf8_lossy(value)
        );
        assert_eq!(conn.get("alice", b"k").unwrap(), Some(value.to_vec()));
    }
}

fn incr_overflow_leaves_the_value(store: &Store) {
    let mut conn = store.conn();
    conn.set("alice", b"max", b"9223372036854775807").unwrap();
    assert_eq!(conn.incr_by("alice", b"max", 1), Err(StoreError::Overflow));
    assert_eq!(
        conn.get("alice", b"max").unwrap(),
        Some(b"9223372036854775807".to_vec())
    );
    conn.set("alice", b"min", b"-9223372036854775808").unwrap();
    assert_eq!(conn.incr_by("alice", b"min", -1), Err(StoreError::Overflow));
    assert_eq!(
        conn.incr_by("alice", b"min", i64::MAX).unwrap(),
        -1,
        "min + max"
    );
}

fn incr_is_atomic_across_connections(store: &Store) {
    const THREADS: i64 = 4;
    const EACH: i64 = 150;
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let mut conn = store.conn();
            std::thread::spawn(move || {
                for _ in 0..EACH {
                    conn.incr_by("alice", b"counter", 1).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let total = (THREADS * EACH).to_string().into_bytes();
    assert_eq!(store.conn().get("alice", b"counter").unwrap(), Some(total));
}

fn writes_are_visible_to_other_connections(store: &Store) {
    let mut writer = store.conn();
    let mut reader = store.conn();
    writer.set("alice", b"k", b"v").unwrap();
    assert_eq!(reader.get("alice", b"k").unwrap(), Some(b"v".to_vec()));
    writer
        .put_user(&user("carol", "$argon2id$hash", false))
        .unwrap();
    assert!(reader.user("carol").unwrap().is_some());
}

fn sleep_waits(store: &Store) {
    let mut conn = store.conn();
    let started = Instant::now();
    conn.sleep(200).unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(195) && took < Duration::from_secs(2),
        "{took:?}"
    );
    conn.sleep(0).unwrap();
}

fn user(name: &str, hash: &str, disabled: bool) -> UserRecord {
    UserRecord {
        name: name.into(),
        hash: hash.into(),
        disabled,
        admin: false,
    }
}

fn users_crud(store: &Store) {
    let mut conn = store.conn();
    assert_eq!(conn.users().unwrap(), vec![]);
    assert_eq!(conn.user("alice").unwrap(), None);
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
    conn.put_user(&user("bob", hash, false)).unwrap();
    conn.put_user(&user("alice", hash, false)).unwrap();
    conn.put_user(&user("Zed", hash, true)).unwrap();
    assert_eq!(
        conn.user("alice").unwrap(),
        Some(user("alice", hash, false))
    );
    // Replace: new hash, disabled.
    conn.put_user(&user("alice", "$argon2id$other", true))
        .unwrap();
    assert_eq!(
        conn.user("alice").unwrap(),
        Some(user("alice", "$argon2id$other", true))
    );
    // Sorted by name, byte order: upper case first.
    let names: Vec<String> = conn.users().unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(names, ["Zed", "alice", "bob"]);
    assert!(conn.del_user("bob").unwrap());
    assert!(!conn.del_user("bob").unwrap());
    assert_eq!(conn.user("bob").unwrap(), None);
    assert_eq!(conn.users().unwrap().len(), 2);
}

// ---- embedded only ----

#[test]
fn embedded_reopen_sees_committed_data() {
    let dir = tempfile::tempdir().unwrap();
    let spec = StoreSpec::parse(Some("embedded"), &dir.path().join("nested/data")).unwrap();
    {
        let backend = store::open(&spec).unwrap();
        let mut conn = backend.connect().unwrap();
        conn.set("alice", b"k", b"v").unwrap();
        conn.incr_by("alice", b"n", 7).unwrap();
        conn.put_user(&user("alice", "$argon2id$h", false)).unwrap();
    }
    assert!(dir.path().join("nested/data/ringport.redb").is_file());
    let backend = store::open(&spec).expect("reopen after the first handle is gone");
    let mut conn = backend.connect().unwrap();
    assert_eq!(conn.get("alice", b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(conn.get("alice", b"n").unwrap(), Some(b"7".to_vec()));
    assert_eq!(
        conn.users().unwrap(),
        vec![user("alice", "$argon2id$h", false)]
    );
}

#[test]
fn embedded_open_twice_in_one_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = StoreSpec::parse(None, dir.path()).unwrap();
    let _first = store::open(&spec).unwrap();
    let error = store::open(&spec).err().expect("second open must fail");
    assert!(
        error.to_string().contains(&format!(
            "the data directory {} is in use by another ringport process",
            dir.path().display()
        )),
        "{error}"
    );
}

/// The child side of the two tests below: started by them as this same test binary with
/// `RINGPORT_STORE_CHILD` set; without it (a normal test run) it does nothing.
#[test]
fn embedded_child_process() {
    let Ok(dir) = std::env::var("RINGPORT_STORE_CHILD") else {
        return;
    };
    let spec = StoreSpec::parse(None, Path::new(&dir)).unwrap();
    let backend = store::open(&spec).unwrap();
    let mut conn = backend.connect().unwrap();
    println!("open");
    for i in 0u64.. {
        let key = format!("key-{i}");
        conn.set("alice", key.as_bytes(), i.to_string().as_bytes())
            .unwrap();
        // Acknowledged only after set returned: the client's "+OK".
        println!("ack {i}");
    }
}

/// `embedded_child_process` running on a data dir, with its stdout lines.
struct Child {
    process: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Child {
    fn spawn(dir: &Path) -> Child {
        let mut process = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "embedded_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RINGPORT_STORE_CHILD", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(process.stdout.take().unwrap());
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Child { process, lines }
    }

    /// The next message the child printed ("open", "ack N"). The test harness prints
    /// "test embedded_child_process ... " before the first one, on the same line.
    fn next_message(&self) -> String {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the child printed nothing for 30 s, or exited");
        match line.rsplit_once(" ... ") {
            Some((_, message)) => message.to_string(),
            None => line,
        }
    }

    fn wait_for(&self, wanted: &str) {
        while self.next_message() != wanted {}
    }

    /// SIGKILL, as `kill -9`.
    fn kill_9(mut self) {
        self.process.kill().unwrap();
        self.process.wait().unwrap();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[test]
fn embedded_acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let child = Child::spawn(dir.path());
    child.wait_for("open");
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 100 {
        let message = child.next_message();
        let i = message.strip_prefix("ack ").expect("an ack");
        acknowledged.push(i.parse::<u64>().unwrap());
    }
    child.kill_9();
    let backend =
        store::open(&StoreSpec::parse(None, dir.path()).unwrap()).expect("reopen after kill -9");
    let mut conn = backend.connect().unwrap();
    for i in acknowledged {
        assert_eq!(
            conn.get("alice", format!("key-{i}").as_bytes()).unwrap(),
            Some(i.to_string().into_bytes()),
            "acknowledged write {i} lost"
        );
    }
}

#[test]
fn embedded_data_dir_in_use_by_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let child = Child::spawn(dir.path());
    child.wait_for("open");
    let error = store::open(&StoreSpec::parse(None, dir.path()).unwrap())
        .err()
        .expect("open while another process holds the store must fail");
    child.kill_9();
    assert!(
        error
            .to_string()
            .contains("is in use by another ringport process"),
        "{error}"
    );
}

// ---- PostgreSQL only ----

fn schema_versions(url: &str) -> Vec<i32> {
    let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
    client
        .query(
            "SELECT version FROM ringport_schema_version ORDER BY version",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|row| row.get(0))
        .collect()
}

#[test]
fn postgres_open_twice_migrates_once() {
    let url = pg::PgCluster::shared().fresh_url("open_twice");
    let first = open_postgres(&url);
    first.connect().unwrap().set("alice", b"k", b"v").unwrap();
    drop(first);
    let second = open_postgres(&url);
    assert_eq!(
        second.connect().unwrap().get("alice", b"k").unwrap(),
        Some(b"v".to_vec())
    );
    let latest = store::postgres::MIGRATIONS.last().unwrap().0;
    assert_eq!(schema_versions(&url), (1..=latest).collect::<Vec<_>>());
}

#[test]
fn postgres_concurrent_opens_migrate_once() {
    let url = pg::PgCluster::shared().fresh_url("concurrent_opens");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || open_postgres(&url).kind())
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), "postgres");
    }
    let latest = store::postgres::MIGRATIONS.last().unwrap().0;
    assert_eq!(schema_versions(&url), (1..=latest).collect::<Vec<_>>());
}

#[test]
fn postgres_incr_is_atomic_across_backends() {
    // Two opens stand in for two ringport processes on one database.
    let url = pg::PgCluster::shared().fresh_url("incr_two_backends");
    let backends = [open_postgres(&url), open_postgres(&url)];
    let threads: Vec<_> = backends
        .iter()
        .flat_map(|backend| [backend.connect().unwrap(), backend.connect().unwrap()])
        .map(|mut conn| {
            std::thread::spawn(move || {
                for _ in 0..100 {
                    conn.incr_by("alice", b"n", 2).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(
        backends[1].connect().unwrap().get("alice", b"n").unwrap(),
        Some(b"800".to_vec())
    );
}

/// Calls every `Conn` method; each must fail with `Unavailable` within `limit`.
fn assert_every_call_unavailable(conn: &mut dyn Conn, limit: Duration) {
    type Call = fn(&mut dyn Conn) -> Result<(), StoreError>;
    let calls: &[(&str, Call)] = &[
        ("get", |c| c.get("alice", b"k").map(drop)),
        ("mget", |c| c.mget("alice", &[b"k"]).map(drop)),
        ("set", |c| c.set("alice", b"k", b"v")),
        ("mset", |c| c.mset("alice", &[(b"k", b"v")])),
        ("del", |c| c.del("alice", &[b"k"]).map(drop)),
        ("exists", |c| c.exists("alice", &[b"k"]).map(drop)),
        ("incr_by", |c| c.incr_by("alice", b"n", 1).map(drop)),
        ("sleep", |c| c.sleep(10)),
        ("user", |c| c.user("alice").map(drop)),
        ("put_user", |c| c.put_user(&user("alice", "h", false))),
        ("del_user", |c| c.del_user("alice").map(drop)),
        ("users", |c| c.users().map(drop)),
    ];
    // Twice: the first round meets the dead connection, the second the reconnect limit.
    for round in 0..2 {
        for (name, call) in calls {
            let started = Instant::now();
            let result = call(conn);
            let took = started.elapsed();
            assert!(
                matches!(result, Err(StoreError::Unavailable(_))),
                "round {round}: {name} during the outage gave {result:?}"
            );
            assert!(took < limit, "round {round}: {name} took {took:?}");
        }
    }
}

#[test]
fn postgres_outage_fails_fast_and_recovers() {
    let cluster = pg::PgCluster::start_own();
    let url = cluster.url();
    let backend = open_postgres(&url);
    let mut conn = backend.connect().unwrap();
    let mut idle = backend.connect().unwrap();
    conn.set("alice", b"k", b"before").unwrap();
    idle.get("alice", b"k").unwrap();

    // A call in flight when PostgreSQL stops ends with Unavailable, not a hang.
    let mut sleeper = backend.connect().unwrap();
    let in_flight = std::thread::spawn(move || {
        let started = Instant::now();
        (sleeper.sleep(30_000), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    cluster.stop();
    let (result, took) = in_flight.join().unwrap();
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");

    let logs = Logs::capture();

    assert_every_call_unavailable(conn.as_mut(), Duration::from_secs(2));

    let started = Instant::now();
    let connect = backend.connect();
    assert!(
        matches!(connect, Err(StoreError::Unavailable(_))),
        "connect while down"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    let started = Instant::now();
    let open = store::open(&StoreSpec::parse(Some(&url), Path::new("unused")).unwrap());
    let Err(StoreError::Unavailable(message)) = open else {
        panic!("open while down must be Unavailable");
    };
    assert!(
        message.contains("cannot connect to postgres host="),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    cluster.start_again();
    // After the reconnect interval the same connection works on its first call.
    std::thread::sleep(store::postgres::RECONNECT_INTERVAL + Duration::from_millis(50));
    assert_eq!(conn.get("alice", b"k").unwrap(), Some(b"before".to_vec()));
    conn.set("alice", b"k", b"after").unwrap();
    // A connection idle through the whole outage works on its first call too.
    assert_eq!(idle.get("alice", b"k").unwrap(), Some(b"after".to_vec()));
    assert!(backend.connect().is_ok());

    // One line per transition per connection (conn and idle each lost it once and got it back
    // once), not one per failed call; no value in any line. Lines name the store, whose socket
    // dir is this test's own.
    let socket_dir = url
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("host=");
    let logs: Vec<String> = logs
        .text()
        .lines()
        .filter(|line| line.contains(socket_dir))
        .map(str::to_string)
        .collect();
    let count = |what: &str| logs.iter().filter(|line| line.contains(what)).count();
    assert_eq!(count("store connection lost"), 2, "{logs:#?}");
    assert_eq!(count("store connection restored"), 2, "{logs:#?}");
    assert_eq!(count("before") + count("after"), 0, "{logs:#?}");
}

/// Everything this test binary logs, from every thread. A global subscriber, installed once:
/// a thread-scoped one (`set_default`) loses events to tracing's per-callsite interest cache
/// when another test thread hits the callsite first.
#[derive(Clone)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> Logs {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs(Arc::default());
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in this test binary");
            logs
        })
        .clone()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn postgres_hung_fails_fast_and_recovers() {
    let cluster = pg::PgCluster::start_own();
    let backend = open_postgres(&cluster.url());
    let mut conn = backend.connect().unwrap();
    conn.set("alice", b"k", b"v").unwrap();

    let paused = cluster.pause();
    // The first call waits out its deadline (CALL_TIMEOUT); reconnect attempts wait out the
    // connect deadline at most; calls in between answer at once.
    let limit = 2 * store::postgres::CALL_TIMEOUT + Duration::from_millis(500);
    assert_every_call_unavailable(conn.as_mut(), limit);
    let started = Instant::now();
    let connect = backend.connect();
    assert!(
        matches!(connect, Err(StoreError::Unavailable(_))),
        "connect while hung"
    );
    assert!(started.elapsed() < limit, "{:?}", started.elapsed());
    drop(paused);

    // Resumed: the same connection works again by itself, within a few reconnect intervals.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match conn.get("alice", b"k") {
            Ok(value) => {
                assert_eq!(value, Some(b"v".to_vec()));
                break;
            }
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("after resuming: {error:?}"),
        }
    }
    conn.set("alice", b"k", b"again").unwrap();
}

#[test]
fn postgres_restart_while_idle_is_invisible() {
    let cluster = pg::PgCluster::start_own();
    let backend = open_postgres(&cluster.url());
    let mut conn = backend.connect().unwrap();
    conn.set("alice", b"k", b"v").unwrap();
    cluster.stop();
    cluster.start_again();
    // The connection died while idle; nothing was sent on it, so the call reconnects and succeeds.
    assert_eq!(conn.get("alice", b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(conn.incr_by("alice", b"n", 1).unwrap(), 1);
}

#[test]
fn postgres_acknowledged_writes_survive_a_crash() {
    let cluster = pg::PgCluster::start_own();
    let backend = open_postgres(&cluster.url());
    let mut conn = backend.connect().unwrap();
    for i in 0..50 {
        conn.set("alice", format!("key-{i}").as_bytes(), b"v")
            .unwrap();
    }
    conn.mset("alice", &[(b"m1", b"1"), (b"m2", b"2")]).unwrap();
    assert_eq!(conn.incr_by("alice", b"n", 3).unwrap(), 3);
    cluster.crash();
    cluster.start_again();
    // A crash ends the old connection without a FATAL to go by. If its write meets EPIPE the
    // call provably did not run and is retried at once; if the client saw the close first, it
    // cannot know whether its request got through, so the call answers Unavailable, once. After
    // the reconnect interval the connection works again either way.
    let first = conn.get("alice", b"key-0");
    assert!(
        matches!(&first, Ok(Some(value)) if value == b"v")
            || matches!(first, Err(StoreError::Unavailable(_))),
        "{first:?}"
    );
    std::thread::sleep(store::postgres::RECONNECT_INTERVAL + Duration::from_millis(50));
    assert_eq!(conn.get("alice", b"key-0").unwrap(), Some(b"v".to_vec()));
    let mut conn = backend.connect().unwrap();
    for i in 0..50 {
        assert_eq!(
            conn.get("alice", format!("key-{i}").as_bytes()).unwrap(),
            Some(b"v".to_vec())
        );
    }
    assert_eq!(conn.exists("alice", &[b"m1", b"m2"]).unwrap(), 2);
    assert_eq!(conn.get("alice", b"n").unwrap(), Some(b"3".to_vec()));
}

/// What `Backend::watch_users` reported, for the test below.
#[derive(Default)]
struct Recorder {
    users: std::sync::Mutex<std::collections::HashMap<String, UserRecord>>,
    full_reads: std::sync::atomic::AtomicUsize,
}

impl store::UserSink for Recorder {
    fn replace_all(&self, users: Vec<UserRecord>) {
        *self.users.lock().unwrap() = users.into_iter().map(|u| (u.name.clone(), u)).collect();
        self.full_reads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn update(&self, name: &str, user: Option<UserRecord>) {
        let mut users = self.users.lock().unwrap();
        match user {
            Some(user) => users.insert(name.to_string(), user),
            None => users.remove(name),
        };
    }
}

/// Waits up to 5 s (a liveness bound) for `done`.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// PostgreSQL's `watch_users` thread follows inserts, updates, deletes and TRUNCATE of
/// ringport_users through LISTEN/NOTIFY, ignores another schema's changes, and ends, closing
/// its connection, once nobody holds the sink.
#[test]
fn postgres_watch_users_follows_changes_and_ends_with_its_sink() {
    use std::sync::atomic::Ordering::SeqCst;
    let cluster = pg::PgCluster::shared();
    let app = format!("watch_users_{}", std::process::id());
    let url = format!(
        "{} application_name={app}",
        cluster.fresh_url("watch_users")
    );
    let backend = open_postgres(&url);
    let mut conn = backend.connect().unwrap();
    conn.put_user(&user("alice", "$argon2id$a", false)).unwrap();

    let sink = Arc::new(Recorder::default());
    let weak: std::sync::Weak<dyn store::UserSink> = Arc::downgrade(&sink) as _;
    backend.watch_users(weak).unwrap();
    eventually("the first full read", || sink.full_reads.load(SeqCst) >= 1);
    let held = |name: &str| sink.users.lock().unwrap().get(name).cloned();
    assert_eq!(held("alice"), Some(user("alice", "$argon2id$a", false)));

    conn.put_user(&user("bob", "$argon2id$b", false)).unwrap();
    eventually("bob added", || held("bob").is_some());
    conn.put_user(&user("bob", "$argon2id$b2", true)).unwrap();
    eventually("bob changed", || {
        held("bob") == Some(user("bob", "$argon2id$b2", true))
    });
    assert!(conn.del_user("bob").unwrap());
    eventually("bob deleted", || held("bob").is_none());

    // Another schema's table in the same database: its notifications reach us, and are ignored.
    let other = open_postgres(&cluster.fresh_url("watch_users_other"));
    other
        .connect()
        .unwrap()
        .put_user(&user("zed", "$argon2id$z", false))
        .unwrap();
    let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    client.batch_execute("TRUNCATE ringport_users").unwrap();
    eventually("TRUNCATE read everything again", || {
        sink.full_reads.load(SeqCst) >= 2
    });
    assert!(sink.users.lock().unwrap().is_empty());
    assert!(held("zed").is_none(), "another schema's user");

    drop(sink);
    let mut watchers = || -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&format!("{app} user-watch")],
            )
            .unwrap()
            .get(0)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while watchers() != 0 {
        assert!(
            Instant::now() < deadline,
            "the watch connection outlived its sink"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn transact_commits_all_or_nothing(store: &Store) {
    let mut conn = store.conn();
    let answer = store::transact(&mut *conn, "alice", |txn| {
        assert_eq!(txn.get(b"a")?, None);
        txn.put(b"a", b"1", None)?;
        txn.put(b"b", b"2", Some(txn.now_ms() + 60_000))?;
        // What the transaction wrote, it reads back.
        Ok(txn.get(b"a")?.map(|entry| entry.value))
    })
    .unwrap();
    assert_eq!(answer, Some(b"1".to_vec()));
    assert_eq!(
        conn.mget("alice", &[b"a", b"b"]).unwrap(),
        vec![Some(b"1".to_vec()), Some(b"2".to_vec())]
    );
    let refused = store::transact(&mut *conn, "alice", |txn| -> Result<(), StoreError> {
        txn.put(b"a", b"changed", None)?;
        assert!(txn.delete(b"b")?);
        txn.put(b"c", b"new", None)?;
        Err(StoreError::NotInteger)
    });
    assert_eq!(refused, Err(StoreError::NotInteger));
    assert_eq!(
        conn.mget("alice", &[b"a", b"b", b"c"]).unwrap(),
        vec![Some(b"1".to_vec()), Some(b"2".to_vec()), None],
        "a body's error rolls back every write of it"
    );
    // Another owner's keys are not in alice's transaction.
    let bobs = store::transact(&mut *conn, "bob", |txn| txn.get(b"a")).unwrap();
    assert_eq!(bobs, None);
    let entry = store::transact(&mut *conn, "alice", |txn| txn.get(b"b"))
        .unwrap()
        .expect("b is live");
    assert!(entry.expires_at_ms.is_some(), "{entry:?}");
}

/// Puts `key` for alice, expiring `ms` from now.
fn put_expiring(conn: &mut dyn Conn, key: &[u8], value: &[u8], ms: i64) {
    store::transact(conn, "alice", |txn| {
        let at = txn.now_ms() + ms;
        txn.put(key, value, Some(at))
    })
    .unwrap();
}

fn expired_keys_are_absent_before_any_sweep(store: &Store) {
    let mut conn = store.conn();
    put_expiring(&mut *conn, b"short", b"v", 200);
    conn.set("alice", b"forever", b"f").unwrap();
    assert_eq!(conn.get("alice", b"short").unwrap(), Some(b"v".to_vec()));
    std::thread::sleep(Duration::from_millis(250));
    // No sweep ran (this connection never called one); every read path checks the time.
    assert_eq!(conn.get("alice", b"short").unwrap(), None);
    assert_eq!(
        conn.get_many(&[("alice", b"short"), ("alice", b"forever")]),
        vec![Ok(None), Ok(Some(b"f".to_vec()))]
    );
    assert_eq!(
        conn.mget("alice", &[b"short", b"forever"]).unwrap(),
        vec![None, Some(b"f".to_vec())]
    );
    assert_eq!(conn.exists("alice", &[b"short", b"forever"]).unwrap(), 1);
    let seen = store::transact(&mut *conn, "alice", |txn| {
        Ok((txn.get(b"short")?, txn.set_expiry(b"short", None)?))
    })
    .unwrap();
    assert_eq!(seen, (None, false));
    assert_eq!(conn.del("alice", &[b"short", b"forever"]).unwrap(), 1);
    // An expired key starts INCR from zero.
    put_expiring(&mut *conn, b"n", b"41", 50);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(conn.incr_by("alice", b"n", 1).unwrap(), 1);
}

fn plain_writes_clear_an_expiry_and_incr_keeps_it(store: &Store) {
    let mut conn = store.conn();
    // 500 ms: time for the writes and the first check below on a busy machine.
    put_expiring(&mut *conn, b"s", b"1", 500);
    put_expiring(&mut *conn, b"m", b"1", 500);
    put_expiring(&mut *conn, b"b", b"1", 500);
    put_expiring(&mut *conn, b"n", b"1", 500);
    conn.set("alice", b"s", b"2").unwrap();
    conn.mset("alice", &[(b"m", b"2")]).unwrap();
    assert_eq!(conn.set_many(&[("alice", b"b", b"2")]), vec![Ok(())]);
    assert_eq!(conn.incr_by("alice", b"n", 1).unwrap(), 2);
    let expiry = |conn: &mut dyn Conn, key: &[u8]| {
        store::transact(conn, "alice", |txn| txn.get(key))
            .unwrap()
            .map(|entry: Entry| entry.expires_at_ms.is_some())
    };
    assert_eq!(
        expiry(&mut *conn, b"n"),
        Some(true),
        "INCR keeps the expiry"
    );
    std::thread::sleep(Duration::from_millis(550));
    for key in [&b"s"[..], b"m", b"b"] {
        assert_eq!(expiry(&mut *conn, key), Some(false), "{key:?}");
    }
    assert_eq!(conn.get("alice", b"n").unwrap(), None);
}

/// How many key-value rows the store holds, expired or not: for the embedded store the
/// backend is closed first (the file allows one opener) and the file read directly.
fn stored_rows(store: Store, conn: Box<dyn Conn>) -> u64 {
    match store.backend.kind() {
        "postgres" => {
            let mut conn = conn;
            let sql = conn.sql().expect("PostgreSQL has SQL");
            let result = sql.query("SELECT count(*) FROM ringport_kv", &[]).unwrap();
            match result.rows[0][0] {
                store::SqlValue::Int(count) => count as u64,
                ref other => panic!("count(*) gave {other:?}"),
            }
        }
        _ => {
            drop(conn);
            let Store { backend, _dir } = store;
            drop(backend);
            let dir = _dir.expect("an embedded store has a dir");
            let path = dir.path().join("data").join("ringport.redb");
            let db = redb::Database::open(&path).expect("reopen the store file");
            let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
            let kv: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");
            redb::ReadableTableMetadata::len(&txn.open_table(kv).unwrap()).unwrap()
        }
    }
}

fn sweep_removes_expired_rows_in_bounded_batches(store: Store) {
    let mut conn = store.conn();
    let keys: Vec<Vec<u8>> = (0..1_200)
        .map(|i| format!("gone{i}").into_bytes())
        .collect();
    store::transact(&mut *conn, "alice", |txn| {
        let past = txn.now_ms() - 1;
        for key in &keys {
            txn.put(key, b"x", Some(past))?;
        }
        txn.put(b"later", b"x", Some(txn.now_ms() + 60_000))?;
        txn.put(b"never", b"x", None)
    })
    .unwrap();
    put_expiring(&mut *conn, b"also gone", b"x", -1);
    let now = store::now_ms();
    let mut batches = Vec::new();
    loop {
        let removed = conn.sweep_expired(now, store::SWEEP_BATCH).unwrap();
        batches.push(removed);
        if removed == 0 {
            break;
        }
    }
    assert_eq!(
        batches,
        vec![500, 500, 201, 0],
        "1,201 expired keys, 500 a batch"
    );
    assert_eq!(
        conn.mget("alice", &[b"later", b"never"]).unwrap(),
        vec![Some(b"x".to_vec()), Some(b"x".to_vec())]
    );
    assert_eq!(
        stored_rows(store, conn),
        2,
        "only the live keys' rows are left"
    );
}

fn txn_scans_counts_and_clears_one_owner(store: &Store) {
    let mut conn = store.conn();
    // "al" is a prefix of "alice": the owner boundary must hold in key order too.
    conn.mset("al", &[(b"ice:x", b"1")]).unwrap();
    conn.mset(
        "alice",
        &[(b"b", b"1"), (b"", b"1"), (b"a", b"1"), (b"\xff", b"1")],
    )
    .unwrap();
    conn.mset("alicf", &[(b"a", b"1")]).unwrap();
    put_expiring(&mut *conn, b"expired", b"1", -1);
    let (all, pages, count) = store::transact(&mut *conn, "alice", |txn| {
        let all = txn.scan(None, usize::MAX)?;
        let first = txn.scan(None, 2)?;
        let second = txn.scan(first.last().map(Vec::as_slice), 2)?;
        let third = txn.scan(second.last().map(Vec::as_slice), 2)?;
        Ok((all, [first, second, third], txn.count()?))
    })
    .unwrap();
    let want: Vec<Vec<u8>> = vec![b"".to_vec(), b"a".to_vec(), b"b".to_vec(), b"\xff".to_vec()];
    assert_eq!(all, want, "live keys only, in byte order");
    assert_eq!(pages.concat(), want);
    assert_eq!(count, 4);
    store::transact(&mut *conn, "alice", |txn| txn.clear()).unwrap();
    assert_eq!(
        store::transact(&mut *conn, "alice", |txn| txn.count()).unwrap(),
        0
    );
    assert_eq!(conn.get("al", b"ice:x").unwrap(), Some(b"1".to_vec()));
    assert_eq!(conn.get("alicf", b"a").unwrap(), Some(b"1".to_vec()));
}
