//! What this binary is: its version, the commit it was built from, and what it was built with,
//! for `ringport version`, `--version` and INFO.

/// The package version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit of the build (`unknown` outside a checkout), stamped by `build.rs`.
pub const COMMIT: &str = env!("RINGPORT_GIT_COMMIT");

/// `--version`'s text after the program name.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RINGPORT_GIT_COMMIT"),
    ")"
);

/// What every build has compiled in: the I/O backends (the one used is chosen at start, see
/// `ringport probe`), the stores, and TLS.
pub const FEATURES: &[&str] = &[
    "io_uring",
    "epoll",
    "store-embedded (redb)",
    "store-postgres",
    "tls (rustls, TLS 1.2 and 1.3)",
    "metrics (Prometheus)",
];

/// `ringport version`'s text.
pub fn text() -> String {
    format!(
        "ringport {VERSION}\ncommit: {COMMIT}\nfeatures: {}\ntarget: {}-linux\n",
        FEATURES.join(", "),
        std::env::consts::ARCH
    )
}
