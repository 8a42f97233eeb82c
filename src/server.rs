//! Start-up, the threads, and shutdown: probe the kernel, open the store, start the pools, bind
//! one `SO_REUSEPORT` listener per ring, run one pinned ring thread per core, and drain on
//! SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ringport_ring::{AcceptPath, EpollLoop, Features, Listener, RecvPath, Ring, RingConfig};

use crate::auth;
use crate::commands::{self, api::CommandDef, api::Handlers};
use crate::config::{config_file_commands, BackendChoice, ServeArgs};
use crate::msg::Msg;
use crate::pool::ComputePool;
use crate::session::RingHandler;
use crate::shared::{Phase, Shared};
use crate::store::{self, StoreSpec, UserRecord};
use crate::storepool::StorePool;
use crate::table::Table;
use crate::userdir::UserDirectory;
use crate::workers::WorkerPool;

/// Errors that stop start-up, with what to do about them.
pub type StartError = String;

fn init_logging(args: &ServeArgs) {
    use tracing_subscriber::EnvFilter;
    // The PostgreSQL client logs statement parameters (values, password hashes) at debug level:
    // keep it at info whatever the operator asks for, so no secret reaches a log.
    let directives = format!("{},tokio_postgres=info,postgres=info", args.log_level);
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| {
        eprintln!(
            "ringport: invalid --log-level '{}'; using info",
            args.log_level
        );
        EnvFilter::new("info,tokio_postgres=info,postgres=info")
    });
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(args.log_color.colour(std::io::stderr().is_terminal()))
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        crate::config::LogFormat::Json => builder.json().try_init(),
        crate::config::LogFormat::Text => builder.try_init(),
    };
}

/// How the first user gets its password, on a first start (a store without users).
#[derive(Debug, Clone, Default)]
pub struct FirstAdmin {
    /// `--admin-password-file`: the password is the file's first line.
    pub password_file: Option<std::path::PathBuf>,
    /// Where a generated password is written (the data directory) when nothing gives one.
    pub data_dir: std::path::PathBuf,
}

/// The file a generated first password goes to, in the data directory.
pub const GENERATED_PASSWORD_FILE: &str = "admin-password";

impl FirstAdmin {
    /// The password the operator gave (`--admin-password-file`, else `RINGPORT_ADMIN_PASSWORD`),
    /// or `None` to generate one.
    fn given(&self) -> Result<Option<String>, StartError> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!("--admin-password-file {}: cannot read: {e}", path.display())
            })?;
            let password = text.lines().next().unwrap_or("").to_string();
            if password.is_empty() {
                return Err(format!(
                    "--admin-password-file {}: the first line is empty",
                    path.display()
                ));
            }
            return Ok(Some(password));
        }
        match std::env::var("RINGPORT_ADMIN_PASSWORD") {
            Ok(password) if !password.is_empty() => Ok(Some(password)),
            _ => Ok(None),
        }
    }

    /// Writes a generated password where only this user can read it, and says where.
    fn keep(&self, password: &str) -> Result<std::path::PathBuf, StartError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.data_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.data_dir.display()))?;
        let path = self.data_dir.join(GENERATED_PASSWORD_FILE);
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            // An older file keeps its mode on open: make sure nobody else can read this one.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            writeln!(file, "{password}")?;
            file.sync_all()
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

/// Opens the store named by the arguments and makes sure a first user exists: on first start
/// an `admin` user is created with the password `first` gives, or a random one kept in a file
/// only this user can read (and shown on stdout when that is a terminal). Never logged.
/// Returns the store and its users, as read now.
pub fn open_store(
    spec: &StoreSpec,
    first: &FirstAdmin,
) -> Result<(Arc<dyn store::Backend>, Vec<UserRecord>), StartError> {
    let backend = store::open(spec).map_err(|e| format!("cannot open the store: {e}"))?;
    let mut conn = backend
        .connect()
        .map_err(|e| format!("cannot connect to the store: {e}"))?;
    let mut users = conn
        .users()
        .map_err(|e| format!("cannot read users from the store: {e}"))?;
    // A store from before admins existed: its first user, `admin`, becomes the admin it was
    // meant to be, so someone can manage users over the protocol.
    if !users.iter().any(|u| u.admin) {
        if let Some(first_user) = users.iter_mut().find(|u| u.name == "admin") {
            first_user.admin = true;
            conn.put_user(first_user)
                .map_err(|e| format!("cannot make user 'admin' an admin: {e}"))?;
            tracing::info!("user 'admin' is now an admin (it may manage users with ACL SETUSER)");
        }
    }
    if users.is_empty() {
        let given = first.given()?;
        let generated = given.is_none();
        let password = given.unwrap_or_else(auth::random_password);
        // Written before the user exists: a password nobody can find is a locked-out server.
        let kept = if generated {
            Some(first.keep(&password)?)
        } else {
            None
        };
        let admin = UserRecord {
            name: "admin".into(),
            hash: auth::hash_password(password.as_bytes()),
            disabled: false,
            admin: true,
        };
        conn.put_user(&admin)
            .map_err(|e| format!("cannot create the first user: {e}"))?;
        users.push(admin);
        match kept {
            None => {
                tracing::info!("no users existed: created user 'admin' with the password given")
            }
            Some(path) => {
                tracing::info!(file = %path.display(), "no users existed: created user 'admin' with a generated password, written to this file (readable only by this user); change it with `ringport user passwd admin`, then delete the file");
                use std::io::IsTerminal;
                if std::io::stdout().is_terminal() {
                    println!("No users existed: created user 'admin' with password {password}");
                    println!(
                        "(also in {}; change it with `ringport user passwd admin`)",
                        path.display()
                    );
                }
            }
        }
    }
    Ok((backend, users))
}

/// Runs the server until SIGTERM/SIGINT, then drains. Returns once every ring has stopped.
pub fn serve(args: ServeArgs) -> Result<(), StartError> {
    Server::new(args).run()
}

/// A server to embed in a program: the settings of `ringport serve` plus commands of the
/// program's own, defined as the built-ins are ([`CommandDef`]).
///
/// ```no_run
/// use ringport::api::{Argv, CommandDef, Reply};
/// fn main() -> Result<(), String> {
///     ringport::Server::from_env()?
///         .command(CommandDef::inline("hi", 1, |_| Reply::status("hello")))
///         .run()
/// }
/// ```
pub struct Server {
    args: ServeArgs,
    commands: Vec<CommandDef>,
}

impl Server {
    /// A server with these settings and the built-in commands (and the config file's SQL ones).
    pub fn new(args: ServeArgs) -> Server {
        Server {
            args,
            commands: Vec::new(),
        }
    }

    /// Settings from the process: its arguments are `ringport serve`'s flags (`--help` lists
    /// them), with `--config FILE` and the `RINGPORT_*` environment folded in as for
    /// `ringport serve`. Exits with usage on a bad flag, as the binary does.
    pub fn from_env() -> Result<Server, StartError> {
        let mut argv: Vec<String> = std::env::args().collect();
        // `program serve --flags` reads as `program --flags`, so a harness can start either.
        if argv.get(1).map(String::as_str) != Some("serve") {
            argv.insert(1.min(argv.len()), "serve".into());
        }
        match crate::config::parse_args_from(argv)?.command {
            crate::config::Command::Serve(args) => Ok(Server::new(*args)),
            _ => unreachable!("parsed as serve"),
        }
    }

    /// Adds a command. A name that clashes with another command's stops the start.
    pub fn command(mut self, def: CommandDef) -> Server {
        self.commands.push(def);
        self
    }

    /// The settings, to adjust before [`Server::run`].
    pub fn args_mut(&mut self) -> &mut ServeArgs {
        &mut self.args
    }

    /// Runs until SIGTERM/SIGINT, then drains; returns once every ring has stopped.
    pub fn run(self) -> Result<(), StartError> {
        run(self.args, self.commands)
    }
}

/// Starts the config file's `[[worker]]` pools.
fn start_workers(
    args: &ServeArgs,
) -> Result<Vec<(Arc<WorkerPool>, crate::config::WorkerConfig)>, StartError> {
    let Some(path) = &args.config else {
        return Ok(Vec::new());
    };
    let mut pools = Vec::new();
    for config in crate::config::config_file_workers(path)? {
        let pool = WorkerPool::start(&config)?;
        tracing::info!(pool = %config.name, processes = config.processes, in_flight = config.in_flight,
            timeout = %config.timeout, commands = config.commands.len(), "worker pool started");
        pools.push((pool, config));
    }
    Ok(pools)
}

/// Every command the server will know: the built-ins, the config file's SQL commands (checked
/// against the store) and the program's, as one table; a clash is an error naming both.
pub fn command_table(
    args: &ServeArgs,
    backend: &dyn store::Backend,
    extra: Vec<CommandDef>,
) -> Result<(Table, Handlers), StartError> {
    let sql = match &args.config {
        Some(path) => commands::sql::load(&config_file_commands(path)?, path, backend)?,
        None => Vec::new(),
    };
    commands::api::build(
        commands::builtins()
            .into_iter()
            .chain(sql)
            .chain(extra)
            .collect(),
    )
}

/// `ringport config check FILE`: the settings as `serve` would read them and, when the file
/// defines SQL commands, the same checks against the store that `serve` makes, without serving.
pub fn check_config(file: &std::path::Path) -> Result<(), StartError> {
    let mut args = crate::config::parse_config_file(file)?;
    let text = toml::to_string(&args).map_err(|e| e.to_string())?;
    args.config = Some(file.to_path_buf());
    if let Ok(url) = std::env::var("RINGPORT_STORE_URL") {
        if !url.is_empty() {
            args.store.store = Some(url);
        }
    }
    if let Some(files) = crate::tls::TlsFiles::from_args(&args)? {
        files.load()?;
        println!(
            "# {}: TLS certificate {} and key {} load",
            file.display(),
            files.cert.display(),
            files.key.display()
        );
    }
    let sql = config_file_commands(file)?;
    if !sql.is_empty() {
        let spec = StoreSpec::parse(args.store.store.as_deref(), &args.store.data)
            .map_err(|e| format!("--store: {e}"))?;
        let backend = store::open(&spec).map_err(|e| format!("cannot open the store: {e}"))?;
        let (table, _) = command_table(&args, &*backend, Vec::new())?;
        println!(
            "# {}: {} SQL command(s) prepared and checked on {}; {} commands in all",
            file.display(),
            sql.len(),
            backend.describe(),
            table.len()
        );
    }
    // Worker pools are checked as written, without starting their programs.
    for worker in crate::config::config_file_workers(file)? {
        println!(
            "# {}: worker pool '{}' runs {:?}, serves {} command(s)",
            file.display(),
            worker.name,
            worker.run,
            worker.commands.len()
        );
    }
    println!("# {}: valid; effective settings:", file.display());
    print!("{text}");
    Ok(())
}

fn run(args: ServeArgs, extra: Vec<CommandDef>) -> Result<(), StartError> {
    init_logging(&args);
    crate::pool::abort_on_uncontained_panics();
    let disable = ringport_ring::Disable::parse_list(&args.uring_disable)
        .map_err(|e| format!("--uring-disable: {e}"))?
        .union(
            ringport_ring::Disable::for_kernel_profile(&args.kernel_profile)
                .map_err(|e| format!("--kernel-profile: {e}"))?,
        )
        .union(ringport_ring::Disable {
            min_wait: !args.uring_min_wait,
            ..ringport_ring::Disable::default()
        });
    let cores = ringport_ring::usable_cores();
    let core_count = cores.len().max(1);
    let ring_count = args.rings.unwrap_or(core_count).max(1);
    let features = match args.backend {
        BackendChoice::Epoll => None,
        BackendChoice::Uring => Some(ringport_ring::probe(disable).map_err(|u| {
            format!(
                "io_uring is not available (and --backend uring was asked for): {}",
                u.advice()
            )
        })?),
        BackendChoice::Auto => match ringport_ring::probe(disable) {
            Ok(f) => Some(f),
            Err(unavailable) => {
                tracing::warn!(
                    reason = %unavailable.advice(),
                    "io_uring is not available; serving on the epoll backend"
                );
                None
            }
        },
    };
    match &features {
        Some(f) => tracing::info!(
            kernel = %f.kernel_release,
            rings = ring_count,
            cores = core_count,
            accept = ?f.accept,
            recv = ?f.recv,
            single_issuer = f.single_issuer,
            defer_taskrun = f.defer_taskrun,
            coop_taskrun = f.coop_taskrun,
            ext_arg = f.ext_arg,
            min_wait = f.min_wait,
            direct_descriptors = f.direct,
            incremental_buffers = f.incremental_buffers,
            busy_tick = f.busy_tick,
            "backend io_uring"
        ),
        None => tracing::info!(
            kernel = %ringport_ring::probe::kernel_release(),
            rings = ring_count,
            cores = core_count,
            "backend epoll"
        ),
    }

    let mut spec = StoreSpec::parse(args.store.store.as_deref(), &args.store.data)
        .map_err(|e| format!("--store: {e}"))?;
    if let StoreSpec::Embedded { cache_size, .. } = &mut spec {
        *cache_size = args.embedded_cache_size;
    }
    let first = FirstAdmin {
        password_file: args.admin_password_file.clone(),
        data_dir: args.store.data.clone(),
    };
    let (backend, users) = open_store(&spec, &first)?;
    tracing::info!(store = %backend.describe(), users = users.len(), "store opened");
    let workers = start_workers(&args)?;
    let extra = extra
        .into_iter()
        .chain(workers.iter().flat_map(|(pool, config)| {
            config
                .commands
                .iter()
                .map(|command| CommandDef::worker(pool.clone(), command))
        }))
        .collect();
    let workers: Vec<_> = workers.into_iter().map(|(pool, _)| pool).collect();
    let (table, handlers) = command_table(&args, &*backend, extra)?;
    let (table, handlers) = (Arc::new(table), Arc::new(handlers));
    let custom = table
        .specs()
        .iter()
        .filter(|s| s.origin != "built-in")
        .count();
    tracing::info!(commands = table.len(), custom, "command table built");
    // AUTH reads users from memory; the backend keeps the table current from here on.
    let users = Arc::new(UserDirectory::new(users));
    let watched: Weak<UserDirectory> = Arc::downgrade(&users);
    backend
        .watch_users(watched)
        .map_err(|e| format!("cannot watch the store's users: {e}"))?;

    let compute_threads = args.compute_threads.unwrap_or(core_count);
    let store_threads = args.store_threads.unwrap_or(2 * core_count);
    let auth_threads = args.auth_threads.unwrap_or(core_count / 4).max(1);
    let priority = args.pool_priority.thread_priority();
    // Only the compute pool runs below the rings: its jobs are long CPU bursts, the ones that
    // delay a ring. AUTH keeps its own threads at the rings' priority, so no flood of heavy
    // commands (nor a busy neighbour process) can hold a login back; store workers spend their
    // time waiting on the store, and lowering them would only lengthen the time each holds a
    // store connection (or an open transaction) on a busy box.
    let normal = ringport_ring::ThreadPriority::Normal;
    let compute = ComputePool::start("compute", compute_threads, args.compute_queue, priority);
    let auth_pool = ComputePool::start("auth", auth_threads, args.compute_queue, normal);
    let store_pool = StorePool::start(backend.clone(), store_threads, args.store_queue, normal);
    tracing::info!(
        compute_threads,
        auth_threads,
        store_threads,
        pool_priority = ?args.pool_priority,
        compute_queue = args.compute_queue,
        store_queue = args.store_queue,
        max_sessions = args.max_sessions,
        max_output_buffer = args.max_output_buffer,
        proto_max_bulk_len = args.proto_max_bulk_len,
        "pools and limits"
    );

    // With socket activation every ring shares the passed listener (multishot accept on one
    // socket from several rings); otherwise each ring opens its own SO_REUSEPORT listener and
    // the first one fixes the port (the operator may have asked for port 0).
    let tls_files = crate::tls::TlsFiles::from_args(&args)?;
    let mut ring_listeners: Vec<Vec<Listener>> = (0..ring_count).map(|_| Vec::new()).collect();
    let plain_addr = if args.no_plain {
        None
    } else {
        let fds = plain_listeners(&args, ring_count)?;
        let addr = ringport_ring::local_addr(&fds[0]).map_err(|e| e.to_string())?;
        for (ring, fd) in ring_listeners.iter_mut().zip(fds) {
            ring.push(Listener::plain(fd));
        }
        Some(addr)
    };
    let tls = match (&tls_files, args.tls_listen) {
        (Some(files), Some(addr)) => {
            let acceptor = ringport_ring::TlsAcceptor::new(files.load()?);
            let fds = reuseport_listeners(addr, ring_count)?;
            let addr = ringport_ring::local_addr(&fds[0]).map_err(|e| e.to_string())?;
            for (ring, fd) in ring_listeners.iter_mut().zip(fds) {
                ring.push(Listener {
                    fd,
                    tls: Some(acceptor.clone()),
                });
            }
            tracing::info!(%addr, cert = %files.cert.display(), client_certificates = files.ca.is_some(), "TLS");
            Some((acceptor, addr))
        }
        _ => None,
    };
    let listen_addr = plain_addr
        .or(tls.as_ref().map(|(_, addr)| *addr))
        .expect("TlsFiles::from_args refuses --no-plain without --tls-listen");

    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..ring_count {
        let (sender, receiver) =
            ringport_ring::mailbox::<Msg>().map_err(|e| format!("cannot create a mailbox: {e}"))?;
        senders.push(sender);
        receivers.push(receiver);
    }
    let mut shared = Shared::new(
        &args,
        compute.clone(),
        auth_pool.clone(),
        store_pool.clone(),
        users,
        senders.clone(),
        features.clone(),
        core_count,
        listen_addr,
        table,
    );
    shared.workers = workers.clone();
    let shared = Arc::new(shared);
    let stats = shared.rings.clone();
    // Ring reads: each ring drives a PostgreSQL connection of its own for GETs.
    let ring_reads = (!args.no_ring_reads && backend.kind() == "postgres").then(|| {
        let links = (0..ring_count).map(|_| Default::default()).collect();
        let _ = shared.store.store_stats().links.set(links);
        let senders = senders.clone();
        crate::storelink::Connector::start(backend.clone(), ring_count, move |ring, socket| {
            senders[ring].attach(socket, Msg::LinkUp)
        })
    });
    // User changes while running (`ringport user`, through the file's permissions): kept out of
    // the way of a server whose data directory is not its own to write (PostgreSQL users can
    // be changed in the store directly).
    let admin_socket = if args.no_admin_socket || !args.store.data.is_dir() {
        None
    } else {
        match crate::adminsock::start(&args.store.data, shared.clone(), backend) {
            Ok(socket) => Some(socket),
            Err(e) => {
                tracing::warn!(error = %e, "no admin socket: `ringport user` cannot reach this server");
                None
            }
        }
    };

    if let Some(addr) = args.metrics_addr {
        let bound = crate::metrics::serve(addr, shared.clone())
            .map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
        tracing::info!(%bound, "serving Prometheus metrics at /metrics");
        println!("metrics on http://{bound}/metrics");
    }
    let global_sessions = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    let (recv_buffers, recv_buffer_size) =
        args.recv_buffer_shape(features.as_ref().is_some_and(|f| f.incremental_buffers));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    for ((index, listeners), receiver) in ring_listeners.into_iter().enumerate().zip(receivers) {
        let sender = senders[index].clone();
        let config = RingConfig {
            index,
            listeners,
            sq_entries: 4096,
            recv_buffers,
            recv_buffer_size,
            max_sessions: args.max_sessions,
            global_sessions: global_sessions.clone(),
            reject_message: b"-ERR max number of clients reached\r\n".to_vec(),
            tick: Duration::from_millis(10),
            drain_timeout: args.drain_timeout,
            features: features.clone().unwrap_or_else(epoll_features),
            stats: stats[index].clone(),
            faults: ringport_ring::Faults {
                bufring_register_einval: args.inject_bufring_einval,
                ..ringport_ring::Faults::default()
            },
        };
        let use_uring = features.is_some();
        let mut handler = RingHandler::new(shared.clone(), handlers.clone(), sender);
        if let Some(want) = &ring_reads {
            handler = handler.with_ring_reads(want.clone());
        }
        let core = cores.get(index % core_count).copied();
        let ready = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ring-{index}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !ringport_ring::pin_current_thread(core) {
                        tracing::warn!(ring = index, core, "could not pin the ring thread");
                    }
                }
                let started = if use_uring {
                    Ring::new(config, handler, receiver).map(|ring| {
                        let _ = ready.send(Ok(()));
                        ring.run().map(drop)
                    })
                } else {
                    EpollLoop::new(config, handler, receiver).map(|ring| {
                        let _ = ready.send(Ok(()));
                        ring.run().map(drop)
                    })
                };
                match started {
                    Err(e) => {
                        let _ = ready.send(Err(format!("ring {index}: set-up failed: {e}")));
                    }
                    Ok(Err(e)) => {
                        tracing::error!(ring = index, error = %e, "ring stopped with an error");
                    }
                    Ok(Ok(())) => {}
                }
            })
            .map_err(|e| format!("cannot start ring thread: {e}"))?;
        threads.push(thread);
    }
    // The rings hold the connector's channel now: it ends with them.
    drop(ring_reads);
    drop(ready_tx);
    for _ in 0..ring_count {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a ring thread died during start-up".into()),
        }
    }
    // Caught from here on, before anyone can be told the server is ready: a SIGTERM sent on
    // "ready" (by systemd, a test, an orchestrator) must drain, not kill.
    let signals = install_signal_handlers();
    tracing::info!(%listen_addr, rings = ring_count, "ready");
    // The TLS line first: a reader that waits for the plain one has seen both.
    if let Some((_, addr)) = &tls {
        println!("ringport TLS listening on {addr}");
    }
    if let Some(addr) = plain_addr {
        println!("ringport listening on {addr}");
    }
    crate::systemd::notify(&format!(
        "READY=1\nSTATUS=listening on {listen_addr}, {ring_count} rings"
    ));

    shared.lifecycle.set(Phase::Serving);

    let mut signals = wait_for_signal(signals, || {
        if let (Some(files), Some((acceptor, _))) = (&tls_files, &tls) {
            match files.load() {
                Ok(config) => {
                    acceptor.reload(config);
                    tracing::info!(cert = %files.cert.display(), "SIGHUP: TLS certificates reloaded; new sessions use them");
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS certificates not reloaded; keeping the ones in use");
                }
            }
        } else {
            tracing::info!("SIGHUP: nothing to reload (no TLS port)");
        }
    });
    // Not ready first: a load balancer (or Kubernetes) notices only at its next health check,
    // and sessions it sends meanwhile must still be accepted, or their clients see a refused
    // or closed connection instead of a server elsewhere.
    shared.lifecycle.set(Phase::Draining);
    crate::systemd::notify("STOPPING=1\nSTATUS=draining");
    if !args.drain_grace.is_zero() {
        tracing::info!(
            grace = ?args.drain_grace,
            "not ready: /ready answers 503; still accepting until the grace ends"
        );
        wait_for_grace(args.drain_grace, &mut signals);
    }
    tracing::info!("draining: no new connections; finishing commands in flight");
    for sender in &senders {
        sender.drain();
    }
    for thread in threads {
        let _ = thread.join();
    }
    drop(admin_socket);
    for pool in &workers {
        pool.shutdown();
    }
    compute.shutdown();
    auth_pool.shutdown();
    store_pool.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// What the epoll loop is described as (it does not consult these).
fn epoll_features() -> Features {
    Features {
        kernel_release: ringport_ring::probe::kernel_release(),
        kernel_version: (0, 0),
        single_issuer: false,
        defer_taskrun: false,
        coop_taskrun: false,
        ext_arg: false,
        min_wait: false,
        nodrop: false,
        opcodes: Vec::new(),
        poll_wait: false,
        accept: AcceptPath::SingleShot,
        recv: RecvPath::PollThenRecv,
        direct: false,
        incremental_buffers: false,
        busy_tick: false,
    }
}

/// Catches SIGTERM, SIGINT and SIGHUP from now on; `None` when they cannot be caught.
fn install_signal_handlers() -> Option<signal_hook::iterator::Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers; running until killed");
            None
        }
    }
}

/// Blocks until SIGTERM or SIGINT, running `on_hup` for each SIGHUP meanwhile; returns the
/// handle that keeps catching them (if they cannot be caught at all, this waits until the
/// process is killed).
fn wait_for_signal(
    signals: Option<signal_hook::iterator::Signals>,
    on_hup: impl Fn(),
) -> signal_hook::iterator::Signals {
    let Some(mut signals) = signals else {
        loop {
            std::thread::park();
        }
    };
    for signal in signals.forever() {
        if signal == signal_hook::consts::SIGHUP {
            on_hup();
            continue;
        }
        tracing::info!(signal, "signal received");
        break;
    }
    signals
}

/// Sleeps through the drain grace; a second SIGTERM or SIGINT ends it, for the operator who
/// wants the process gone now.
fn wait_for_grace(grace: Duration, signals: &mut signal_hook::iterator::Signals) {
    let deadline = std::time::Instant::now() + grace;
    loop {
        // SIGHUP is caught too (certificate reloads); it does not end the grace.
        if let Some(signal) = signals
            .pending()
            .find(|&s| s != signal_hook::consts::SIGHUP)
        {
            tracing::info!(signal, "second signal received: ending the grace early");
            return;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// The plain port: the socket passed by the service manager, shared by every ring, or one
/// `SO_REUSEPORT` listener per ring on `--listen`.
fn plain_listeners(args: &ServeArgs, rings: usize) -> Result<Vec<OwnedFd>, String> {
    let activated = crate::systemd::activated_listeners()?;
    let Some(first) = activated.into_iter().next() else {
        return reuseport_listeners(args.listen, rings);
    };
    let addr = ringport_ring::local_addr(&first).map_err(|e| e.to_string())?;
    tracing::info!(%addr, "using the listener passed by the service manager (socket activation)");
    let mut fds = Vec::with_capacity(rings);
    for _ in 1..rings {
        fds.push(
            first
                .try_clone()
                .map_err(|e| format!("cannot share the listener: {e}"))?,
        );
    }
    fds.insert(0, first);
    Ok(fds)
}

/// One `SO_REUSEPORT` listener per ring on `addr`; the first fixes the port (the operator may
/// have asked for port 0).
fn reuseport_listeners(addr: SocketAddr, rings: usize) -> Result<Vec<OwnedFd>, String> {
    let first =
        ringport_ring::listen(addr, 65535).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = ringport_ring::local_addr(&first).map_err(|e| e.to_string())?;
    let mut fds = vec![first];
    for _ in 1..rings {
        fds.push(
            ringport_ring::listen(bound, 65535)
                .map_err(|e| format!("cannot listen on {bound}: {e}"))?,
        );
    }
    Ok(fds)
}
