//! systemd integration without libsystemd: readiness notification (`Type=notify`) and socket
//! activation (`LISTEN_FDS`), both small, documented protocols.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

/// Sends a state line (`READY=1`, `STOPPING=1`, `STATUS=...`) to the service manager when it
/// asked for notifications (`NOTIFY_SOCKET` set); does nothing otherwise.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket address.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// The listening sockets systemd passed (socket activation), if it passed any to this process.
/// The variables are removed so that child processes do not take them too.
pub fn activated_listeners() -> Result<Vec<OwnedFd>, String> {
    let Ok(pid) = std::env::var("LISTEN_PID") else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .ok_or("LISTEN_PID is set but LISTEN_FDS is missing or not a number")?;
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    const SD_LISTEN_FDS_START: i32 = 3;
    (SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + count)
        .map(|fd| {
            ringport_ring::inherited_listener(fd)
                .map_err(|e| format!("socket activation: fd {fd}: {e}"))
        })
        .collect()
}
