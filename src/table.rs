//! The command table: every command's name, arity, class and COMMAND metadata, as data.
//!
//! It sits below everything that needs the list of commands (the statistics book keeps one cell
//! per row, COMMAND describes the rows, the dispatcher checks arity and the AUTH gate) and knows
//! nothing of how a command runs, so none of them has to import the handlers.

/// Where a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// On the ring, answered at once.
    Inline,
    /// On the compute pool.
    Compute,
    /// On the store pool.
    Store,
}

/// One row of the command table.
#[derive(Debug)]
pub struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis arity: positive = exactly that many args (name included), negative = at least.
    pub arity: i32,
    /// Where it runs.
    pub class: Class,
    /// Redis command flags, for COMMAND.
    pub flags: &'static [&'static str],
    /// First key, last key, step (0 0 0 for none), for COMMAND.
    pub keys: (i32, i32, i32),
    /// One line of help, for COMMAND DOCS.
    pub summary: &'static str,
    /// Allowed before AUTH.
    pub before_auth: bool,
}

impl Spec {
    /// Whether the command changes data (Redis's `write` flag).
    pub fn writes(&self) -> bool {
        self.flags.contains(&"write")
    }
}

const fn spec(
    name: &'static str,
    arity: i32,
    class: Class,
    flags: &'static [&'static str],
    keys: (i32, i32, i32),
    summary: &'static str,
) -> Spec {
    Spec {
        name,
        arity,
        class,
        flags,
        keys,
        summary,
        before_auth: false,
    }
}

/// Every command ringport knows.
pub static COMMANDS: &[Spec] = &[
    Spec {
        before_auth: true,
        ..spec(
            "auth",
            -2,
            Class::Compute,
            &["noscript", "loading", "stale", "fast", "no_auth"],
            (0, 0, 0),
            "Authenticates the connection.",
        )
    },
    Spec {
        before_auth: true,
        ..spec(
            "hello",
            -1,
            Class::Inline,
            &["noscript", "loading", "stale", "fast", "no_auth"],
            (0, 0, 0),
            "Handshakes with the server: protocol version, authentication, client name.",
        )
    },
    Spec {
        before_auth: true,
        ..spec(
            "quit",
            -1,
            Class::Inline,
            &["noscript", "loading", "stale", "fast", "no_auth"],
            (0, 0, 0),
            "Closes the connection.",
        )
    },
    spec(
        "ping",
        -1,
        Class::Inline,
        &["fast"],
        (0, 0, 0),
        "Returns PONG, or the message given.",
    ),
    spec(
        "echo",
        2,
        Class::Inline,
        &["fast"],
        (0, 0, 0),
        "Returns the message given.",
    ),
    spec(
        "client",
        -2,
        Class::Inline,
        &["noscript", "loading", "stale"],
        (0, 0, 0),
        "Connection commands: ID, SETNAME, GETNAME, SETINFO, INFO, LIST, KILL.",
    ),
    spec(
        "debug",
        -2,
        Class::Inline,
        &["admin", "noscript", "loading", "stale"],
        (0, 0, 0),
        "A container for debugging commands (only with --enable-debug-command).",
    ),
    spec(
        "select",
        2,
        Class::Inline,
        &["loading", "stale", "fast"],
        (0, 0, 0),
        "Selects database 0 (the only one).",
    ),
    spec(
        "command",
        -1,
        Class::Inline,
        &["loading", "stale"],
        (0, 0, 0),
        "Describes the commands: COUNT, DOCS, INFO, LIST.",
    ),
    spec(
        "info",
        -1,
        Class::Inline,
        &["loading", "stale"],
        (0, 0, 0),
        "Server information and statistics.",
    ),
    spec(
        "acl",
        -2,
        Class::Inline,
        &["noscript", "loading", "stale"],
        (0, 0, 0),
        "ACL WHOAMI.",
    ),
    spec(
        "hash",
        3,
        Class::Compute,
        &[],
        (0, 0, 0),
        "HASH rounds data: sha256 applied rounds times, as lowercase hex.",
    ),
    spec(
        "get",
        2,
        Class::Store,
        &["readonly", "fast"],
        (1, 1, 1),
        "Gets the value of a key.",
    ),
    spec(
        "set",
        3,
        Class::Store,
        &["write", "denyoom"],
        (1, 1, 1),
        "Sets the value of a key.",
    ),
    spec(
        "del",
        -2,
        Class::Store,
        &["write"],
        (1, -1, 1),
        "Deletes keys; replies with how many existed.",
    ),
    spec(
        "exists",
        -2,
        Class::Store,
        &["readonly", "fast"],
        (1, -1, 1),
        "Counts the keys that exist.",
    ),
    spec(
        "incr",
        2,
        Class::Store,
        &["write", "denyoom", "fast"],
        (1, 1, 1),
        "Increments the integer value of a key by one.",
    ),
    spec(
        "incrby",
        3,
        Class::Store,
        &["write", "denyoom", "fast"],
        (1, 1, 1),
        "Increments the integer value of a key.",
    ),
    spec(
        "mget",
        -2,
        Class::Store,
        &["readonly", "fast"],
        (1, -1, 1),
        "Gets the values of keys.",
    ),
    spec(
        "mset",
        -3,
        Class::Store,
        &["write", "denyoom"],
        (1, -1, 2),
        "Sets several keys at once.",
    ),
    spec(
        "sleep",
        2,
        Class::Store,
        &[],
        (0, 0, 0),
        "SLEEP ms: a store call that takes ms milliseconds.",
    ),
];

/// Looks a command up by name, case-insensitively.
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    if name.len() > 16 {
        return None;
    }
    COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Whether `argc` arguments (the name included) fit the command's arity.
pub fn arity_ok(spec: &Spec, argc: usize) -> bool {
    if spec.arity >= 0 {
        argc == spec.arity as usize
    } else {
        argc >= (-spec.arity) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive() {
        assert_eq!(lookup(b"GeT").unwrap().name, "get");
        assert!(lookup(b"nosuch").is_none());
        assert!(lookup(b"averyveryverylongcommandname").is_none());
    }

    #[test]
    fn arity_rules() {
        let get = lookup(b"get").unwrap();
        assert!(arity_ok(get, 2) && !arity_ok(get, 1) && !arity_ok(get, 3));
        let del = lookup(b"del").unwrap();
        assert!(!arity_ok(del, 1) && arity_ok(del, 2) && arity_ok(del, 9));
    }

    #[test]
    fn writes_follow_the_write_flag() {
        let writes: Vec<&str> = COMMANDS
            .iter()
            .filter(|c| c.writes())
            .map(|c| c.name)
            .collect();
        assert_eq!(writes, ["set", "del", "incr", "incrby", "mset"]);
    }

    #[test]
    fn table_names_are_lowercase_and_unique() {
        let mut names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase())));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), COMMANDS.len());
    }
}
