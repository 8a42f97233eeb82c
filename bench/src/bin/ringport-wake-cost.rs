//! `ringport-wake-cost`: what sleeping and waking cost on this machine, the price a server pays
//! each time one of its threads runs out of work.
//!
//! A server whose threads are busier sleeps less per request, so where a sleep is dear (a virtual
//! machine whose timers and cross-core wake-ups exit to the hypervisor) CPU per request is set
//! less by the server's own code than by how often its threads go idle. `bench/cost-ratios.sh`
//! prints these figures next to each server's sleeps per request, so the two can be read
//! together. Each line gives the wall time and the calling thread's CPU time per operation:
//!
//! - a plain system call (`getppid`), the floor;
//! - a 20 µs timed sleep (`nanosleep`: a timer armed, fired and a thread switched in), what a
//!   bounded wait such as io_uring's min-wait pays when it expires;
//! - a wake-up round trip between two threads on one core and on two cores (park and unpark, a
//!   futex): what a thread woken by a peer on another core costs each side.
//!
//! ```sh
//! ringport-wake-cost [ROUNDS]   # default 20000
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::thread::{sched_setaffinity, CpuSet};
use rustix::time::{clock_gettime, ClockId};

fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn pin(core: usize) {
    let mut set = CpuSet::new();
    set.set(core);
    // Best effort: a core outside the affinity mask leaves the thread where it was, and the
    // line it measures says which cores it asked for.
    let _ = sched_setaffinity(None, &set);
}

/// Prints one line: wall and this thread's CPU per operation over `rounds` runs of `op`.
fn measure(name: &str, rounds: u32, mut op: impl FnMut()) {
    let (wall, cpu) = (Instant::now(), thread_cpu());
    for _ in 0..rounds {
        op();
    }
    let (wall, cpu) = (wall.elapsed(), thread_cpu() - cpu);
    println!(
        "{name:<44} wall {:>8.2} µs  cpu {:>7.2} µs",
        wall.as_secs_f64() * 1e6 / f64::from(rounds),
        cpu.as_secs_f64() * 1e6 / f64::from(rounds)
    );
}

/// Round trips between this thread (on `here`) and a peer (on `there`): each side wakes the
/// other and parks until woken back.
fn ping_pong(rounds: u32, here: usize, there: usize) {
    let turn = Arc::new(AtomicBool::new(false));
    let main = thread::current();
    let peer_turn = turn.clone();
    let peer = thread::spawn(move || {
        pin(there);
        for _ in 0..rounds {
            while !peer_turn.load(Ordering::Acquire) {
                thread::park();
            }
            peer_turn.store(false, Ordering::Release);
            main.unpark();
        }
    });
    pin(here);
    let name = format!("wake-up round trip, cores {here} and {there}");
    measure(&name, rounds, || {
        turn.store(true, Ordering::Release);
        peer.thread().unpark();
        while turn.load(Ordering::Acquire) {
            thread::park();
        }
    });
    peer.join().expect("the peer thread panicked");
}

fn main() {
    let rounds: u32 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 20_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: ringport-wake-cost [ROUNDS]   (a positive count; default 20000)");
            std::process::exit(2);
        }
    };
    let cores = thread::available_parallelism().map_or(1, usize::from);
    println!("ringport-wake-cost: {rounds} rounds each, {cores} cores");
    measure("system call (getppid)", rounds, || {
        std::hint::black_box(rustix::process::getppid());
    });
    measure("timed sleep of 20 µs (nanosleep)", rounds, || {
        thread::sleep(Duration::from_micros(20))
    });
    ping_pong(rounds, 0, 0);
    if cores > 1 {
        ping_pong(rounds, 0, 1);
    }
}
