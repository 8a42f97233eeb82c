//! `ringport probe`: what this kernel supports and which path each operation will take.

use crate::config::ProbeArgs;
use ringport_ring::{AcceptPath, Disable, RecvPath};

/// Prints the probe as text or JSON.
pub fn run(args: ProbeArgs) -> Result<(), String> {
    let disable = Disable::parse_list(&args.uring_disable)?
        .union(Disable::for_kernel_profile(&args.kernel_profile)?);
    let release = ringport_ring::probe::kernel_release();
    let memlock = memlock_limit();
    match ringport_ring::probe(disable) {
        Ok(f) => {
            let accept = match f.accept {
                AcceptPath::Multishot => "multishot",
                AcceptPath::SingleShot => "single-shot",
            };
            let recv = match f.recv {
                RecvPath::MultishotBufRing => "multishot + buffer ring",
                RecvPath::PollThenRecv => "poll then recv",
            };
            // How a receive uses the buffer ring: only the bytes it brings, or a whole buffer.
            let recv_buffers = match f.recv {
                RecvPath::MultishotBufRing if f.incremental_buffers => "incremental",
                RecvPath::MultishotBufRing => "whole",
                RecvPath::PollThenRecv => "none",
            };
            // Whether the ring's wait counts the sends it submits (the busy tick), or reaps their
            // completions with an enter of their own.
            let sends = if f.busy_tick {
                "counted by the wait (busy tick)"
            } else {
                "reaped on their own"
            };
            let sessions = if f.direct {
                "direct descriptors"
            } else {
                "plain descriptors"
            };
            if args.json {
                let opcodes: serde_json::Map<String, serde_json::Value> = f
                    .opcodes
                    .iter()
                    .map(|(name, ok)| (name.to_string(), serde_json::Value::Bool(*ok)))
                    .collect();
                let v = serde_json::json!({
                    "kernel_release": f.kernel_release,
                    "io_uring": {"available": true},
                    "rlimit_memlock": memlock,
                    "setup_flags": {
                        "single_issuer": f.single_issuer,
                        "defer_taskrun": f.defer_taskrun,
                        "coop_taskrun": f.coop_taskrun,
                    },
                    "features": {"ext_arg": f.ext_arg, "nodrop": f.nodrop},
                    "opcodes": opcodes,
                    "paths": {"backend": "io_uring", "accept": accept, "recv": recv, "recv_buffers": recv_buffers, "send": sends, "wakeup": "eventfd", "sessions": sessions},
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
                );
            } else {
                println!("kernel:          {}", f.kernel_release);
                println!("io_uring:        available");
                println!("RLIMIT_MEMLOCK:  {memlock}");
                println!(
                    "setup flags:     single_issuer={} defer_taskrun={} coop_taskrun={}",
                    f.single_issuer, f.defer_taskrun, f.coop_taskrun
                );
                println!("features:        ext_arg={} nodrop={}", f.ext_arg, f.nodrop);
                let ops: Vec<String> = f
                    .opcodes
                    .iter()
                    .map(|(n, ok)| format!("{n}={}", if *ok { "yes" } else { "no" }))
                    .collect();
                println!("opcodes:         {}", ops.join(" "));
                println!("backend:         io_uring");
                println!("accept:          {accept}");
                println!("recv:            {recv}");
                println!("recv buffers:    {recv_buffers}");
                println!("send:            {sends}");
                println!("wakeup:          eventfd");
                println!("sessions:        {sessions}");
            }
        }
        Err(unavailable) => {
            if args.json {
                let v = serde_json::json!({
                    "kernel_release": release,
                    "io_uring": {"available": false, "error": unavailable.error.to_string(), "advice": unavailable.advice()},
                    "rlimit_memlock": memlock,
                    "paths": {"backend": "epoll", "accept": "epoll", "recv": "epoll", "wakeup": "eventfd"},
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
                );
            } else {
                println!("kernel:          {release}");
                println!("io_uring:        unavailable: {}", unavailable.advice());
                println!("RLIMIT_MEMLOCK:  {memlock}");
                println!("backend:         epoll");
            }
        }
    }
    Ok(())
}

fn memlock_limit() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max locked memory"))
                .map(|l| {
                    let parts: Vec<&str> = l.split_whitespace().collect();
                    format!("soft {} hard {}", parts[3], parts[4])
                })
        })
        .unwrap_or_else(|| "unknown".into())
}
