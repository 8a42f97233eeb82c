//! The command table: every command's name, arity, class and COMMAND metadata, as data.
//!
//! Built once at start-up from the command definitions (the built-ins, the config file's SQL
//! commands and those a program embedding the library adds), and shared read-only from then on.
//! It sits below everything that needs the list of commands (the statistics book keeps one cell
//! per row, COMMAND describes the rows, the dispatcher checks arity and the AUTH gate) and knows
//! nothing of how a command runs: each row's handler sits at the same index in the list the
//! commands module keeps, so none of them has to import the handlers.

use std::collections::HashMap;

/// Where a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// On the ring, answered at once.
    Inline,
    /// On the compute pool.
    Compute,
    /// On the store pool.
    Store,
    /// On a pool of worker processes.
    Worker,
}

/// A row index small enough for per-session state; [`NO_COMMAND`] stands for none.
pub type CommandIndex = u16;

/// No command (a session that has run none yet).
pub const NO_COMMAND: CommandIndex = CommandIndex::MAX;

/// Command names are at most this long (Redis has none longer than 20).
pub const MAX_NAME_LEN: usize = 64;

/// One row of the command table.
///
/// Strings are `'static`: a table lives for the whole process (names travel in per-session
/// state and statistics without a copy), so the few built from configuration are leaked once.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis arity: positive = exactly that many args (name included), negative = at least.
    pub arity: i32,
    /// Where it runs.
    pub class: Class,
    /// Redis command flags, for COMMAND.
    pub flags: Vec<&'static str>,
    /// First key, last key, step (0 0 0 for none), for COMMAND.
    pub keys: (i32, i32, i32),
    /// One line of help, for COMMAND DOCS.
    pub summary: &'static str,
    /// COMMAND DOCS's group (`connection`, `string`, `server`, or the definer's).
    pub group: &'static str,
    /// Allowed before AUTH.
    pub before_auth: bool,
    /// Where the definition came from, for errors about it (`built-in`, a config file, `api`).
    pub origin: &'static str,
}

impl Spec {
    /// Whether the command changes data (Redis's `write` flag).
    pub fn writes(&self) -> bool {
        self.flags.contains(&"write")
    }
}

/// Every command this server knows, in definition order.
#[derive(Debug, Default)]
pub struct Table {
    specs: Vec<Spec>,
    by_name: HashMap<&'static str, usize>,
}

impl Table {
    /// A table of `specs`, or an error naming a clash or an invalid row.
    pub fn new(specs: Vec<Spec>) -> Result<Table, String> {
        if specs.len() >= usize::from(NO_COMMAND) {
            return Err(format!(
                "{} commands defined; at most {} are supported",
                specs.len(),
                NO_COMMAND - 1
            ));
        }
        let mut by_name = HashMap::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            check_name(spec.name)
                .map_err(|why| format!("command '{}' ({}): {why}", spec.name, spec.origin))?;
            if spec.arity == 0 {
                return Err(format!(
                    "command '{}' ({}): arity 0 is not valid (Redis arity counts the name: 2 = one argument, -2 = at least one)",
                    spec.name, spec.origin
                ));
            }
            if let Some(earlier) = by_name.insert(spec.name, index) {
                return Err(format!(
                    "command '{}' ({}) clashes with the command of the same name ({})",
                    spec.name, spec.origin, specs[earlier].origin
                ));
            }
        }
        Ok(Table { specs, by_name })
    }

    /// Looks a command up by name, case-insensitively: its row index and row.
    pub fn lookup(&self, name: &[u8]) -> Option<(usize, &Spec)> {
        if name.len() > MAX_NAME_LEN {
            return None;
        }
        let mut lower = [0u8; MAX_NAME_LEN];
        let lower = &mut lower[..name.len()];
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        let name = std::str::from_utf8(lower).ok()?;
        let index = *self.by_name.get(name)?;
        Some((index, &self.specs[index]))
    }

    /// [`Table::lookup`], trying row `hint` first (the session's last command): clients repeat
    /// their commands, and a byte comparison costs less than lower-casing and hashing the name.
    pub fn lookup_hinted(&self, hint: CommandIndex, name: &[u8]) -> Option<(usize, &Spec)> {
        let index = usize::from(hint);
        match self.specs.get(index) {
            // Table names are lower-case ASCII, so this matches exactly what `lookup` would.
            Some(spec) if spec.name.as_bytes().eq_ignore_ascii_case(name) => Some((index, spec)),
            _ => self.lookup(name),
        }
    }

    /// The row index of a command by its (lower-case) table name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// A row's index as sessions keep it ([`Table::new`] keeps every index below [`NO_COMMAND`]).
    pub fn compact(index: usize) -> CommandIndex {
        CommandIndex::try_from(index).unwrap_or(NO_COMMAND)
    }

    /// The name of row `index`; `NULL` (as Redis's `CLIENT LIST` says it) for [`NO_COMMAND`].
    pub fn name_of(&self, index: CommandIndex) -> &'static str {
        self.specs
            .get(usize::from(index))
            .map_or("NULL", |spec| spec.name)
    }

    /// Every row, in definition order.
    pub fn specs(&self) -> &[Spec] {
        &self.specs
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

/// A name clients can type: lower-case ASCII letters, digits, `_`, `-`, `.`, `:`, starting with a
/// letter, at most [`MAX_NAME_LEN`] bytes.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("a name is 1 to {MAX_NAME_LEN} characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("a name starts with a lower-case letter".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.:".contains(c))
    {
        return Err("a name holds lower-case letters, digits, '_', '-', '.' and ':' only".into());
    }
    Ok(())
}

/// Whether `argc` arguments (the name included) fit the command's arity.
pub fn arity_ok(spec: &Spec, argc: usize) -> bool {
    if spec.arity >= 0 {
        argc == spec.arity as usize
    } else {
        argc >= (-spec.arity) as usize
    }
}

/// Keeps `text` for the rest of the process (see [`Spec`]).
pub fn leak(text: &str) -> &'static str {
    Box::leak(text.to_string().into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &'static str, arity: i32) -> Spec {
        Spec {
            name,
            arity,
            class: Class::Inline,
            flags: vec!["write"],
            keys: (0, 0, 0),
            summary: "",
            group: "connection",
            before_auth: false,
            origin: "test",
        }
    }

    #[test]
    fn lookup_is_case_insensitive() {
        let table = Table::new(vec![row("get", 2), row("del", -2)]).unwrap();
        assert_eq!(table.lookup(b"GeT").unwrap().1.name, "get");
        assert_eq!(table.lookup(b"DEL").unwrap().0, 1);
        assert!(table.lookup(b"nosuch").is_none());
        assert!(table.lookup(&[b'a'; 100]).is_none());
        assert!(table.lookup(b"g\xffet").is_none());
    }

    #[test]
    fn a_hinted_lookup_finds_what_lookup_finds() {
        let table = Table::new(vec![row("get", 2), row("del", -2)]).unwrap();
        let names: [&[u8]; 7] = [
            b"get", b"GeT", b"DEL", b"nosuch", b"g\xffet", b"ge", b"gets",
        ];
        for hint in [0, 1, 2, NO_COMMAND] {
            for name in names {
                assert_eq!(
                    table
                        .lookup_hinted(hint, name)
                        .map(|(i, spec)| (i, spec.name)),
                    table.lookup(name).map(|(i, spec)| (i, spec.name)),
                    "hint {hint}, name {:?}",
                    String::from_utf8_lossy(name)
                );
            }
        }
    }

    #[test]
    fn arity_rules() {
        let get = row("get", 2);
        assert!(arity_ok(&get, 2) && !arity_ok(&get, 1) && !arity_ok(&get, 3));
        let del = row("del", -2);
        assert!(!arity_ok(&del, 1) && arity_ok(&del, 2) && arity_ok(&del, 9));
    }

    #[test]
    fn clashes_and_bad_rows_are_refused_with_their_origin() {
        let mut second = row("get", 2);
        second.origin = "deploy/x.toml";
        let e = Table::new(vec![row("get", 2), second]).unwrap_err();
        assert!(
            e.contains("'get' (deploy/x.toml) clashes") && e.contains("(test)"),
            "{e}"
        );
        assert!(Table::new(vec![row("Get", 2)])
            .unwrap_err()
            .contains("lower-case"));
        assert!(Table::new(vec![row("a b", 2)]).is_err());
        assert!(Table::new(vec![row("zero", 0)])
            .unwrap_err()
            .contains("arity 0"));
    }
}
