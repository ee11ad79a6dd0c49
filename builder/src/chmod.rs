//! `COPY --chmod` / `ADD --chmod` modes: octal (`755`), which replaces each copied
//! entry's mode, or symbolic (`+x`, `u=rwX,go=rX`, `g=u`, accepted since Dockerfile
//! 1.14), applied to each entry's own mode as GNU chmod(1) applies them. A clause without
//! `ugoa` means `a` with no umask: the result does not depend on the builder's umask.
//!
//! BuildKit applies them with a BSD-style library (dchapes/mode) that differs in places:
//! its `X` ignores that an entry is a directory (`a=rX` leaves directories unsearchable,
//! 0444), and it treats `t` and set-ID bits on directories differently. strata keeps
//! chmod(1)'s meaning, which is what the modes say to anyone who has used chmod.
//!
//! Hand-written: the crates that parse these (`file-mode`) are unmaintained and apply the
//! process umask; the grammar is a few lines.

/// A parsed `--chmod` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chmod {
    Octal(u32),
    Symbolic(Vec<Clause>),
}

/// `[ugoa]*` then one or more actions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    /// Permission bits of the classes named (0o7777 minus nothing: `a`).
    who: u32,
    actions: Vec<Action>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Action {
    op: Op,
    what: What,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Remove,
    Set,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum What {
    /// `rwxst`, and `X` (execute for directories and files someone may execute).
    Bits { bits: u32, search: bool },
    /// `u`, `g` or `o`: that class's current permissions.
    Copy(u32),
}

const USER: u32 = 0o4700;
const GROUP: u32 = 0o2070;
const OTHER: u32 = 0o1007;
const SET_IDS: u32 = 0o6000;

impl Chmod {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Chmod, String> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return match u32::from_str_radix(text, 8) {
                Ok(mode) if mode <= 0o7777 => Ok(Chmod::Octal(mode)),
                _ => Err("not an octal mode of at most 7777".into()),
            };
        }
        let clauses = text
            .split(',')
            .map(Clause::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Chmod::Symbolic(clauses))
    }

    /// The mode an entry whose mode is `mode` (permission bits) gets.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(octal) => *octal,
            Chmod::Symbolic(clauses) => clauses
                .iter()
                .fold(mode & 0o7777, |mode, clause| clause.apply(mode, is_dir)),
        }
    }
}

impl Clause {
    fn parse(text: &str) -> Result<Clause, String> {
        let bad = |why: &str| Err(why.to_string());
        let mut chars = text.chars().peekable();
        let mut who = 0;
        while let Some(&c) = chars.peek() {
            who |= match c {
                'u' => USER,
                'g' => GROUP,
                'o' => OTHER,
                'a' => USER | GROUP | OTHER,
                _ => break,
            };
            chars.next();
        }
        if who == 0 {
            who = USER | GROUP | OTHER;
        }
        let mut actions = Vec::new();
        while let Some(c) = chars.next() {
            let op = match c {
                '+' => Op::Add,
                '-' => Op::Remove,
                '=' => Op::Set,
                _ => return bad(&format!("expected +, - or = at {c:?}")),
            };
            let what = match chars.peek() {
                Some(&c @ ('u' | 'g' | 'o')) => {
                    chars.next();
                    What::Copy(match c {
                        'u' => USER,
                        'g' => GROUP,
                        _ => OTHER,
                    })
                }
                _ => {
                    let (mut bits, mut search) = (0, false);
                    while let Some(&c) = chars.peek() {
                        bits |= match c {
                            'r' => 0o444,
                            'w' => 0o222,
                            'x' => 0o111,
                            's' => SET_IDS,
                            't' => 0o1000,
                            'X' => {
                                search = true;
                                0
                            }
                            '+' | '-' | '=' => break,
                            _ => return bad(&format!("unknown permission {c:?}")),
                        };
                        chars.next();
                    }
                    What::Bits { bits, search }
                }
            };
            actions.push(Action { op, what });
        }
        if actions.is_empty() {
            return bad(&format!("no +, - or = in {text:?}"));
        }
        Ok(Clause { who, actions })
    }

    fn apply(&self, mut mode: u32, is_dir: bool) -> u32 {
        for action in &self.actions {
            let bits = match &action.what {
                What::Bits { bits, search } => {
                    let searchable = is_dir || mode & 0o111 != 0;
                    bits | if *search && searchable { 0o111 } else { 0 }
                }
                // that class's rwx, spread over every class
                What::Copy(class) => {
                    let rwx = match *class {
                        USER => (mode >> 6) & 7,
                        GROUP => (mode >> 3) & 7,
                        _ => mode & 7,
                    };
                    rwx * 0o111
                }
            };
            let bits = bits & self.who;
            mode = match action.op {
                Op::Add => mode | bits,
                Op::Remove => mode & !bits,
                Op::Set => {
                    // as chmod(1): a directory keeps its set-ID bits unless named
                    let kept = if is_dir { SET_IDS & !bits } else { 0 };
                    (mode & !(self.who & !kept)) | bits
                }
            };
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str, mode: u32, is_dir: bool) -> u32 {
        Chmod::parse(text).unwrap().apply(mode, is_dir)
    }

    #[test]
    fn octal_replaces_the_mode() {
        assert_eq!(apply("755", 0o600, false), 0o755);
        assert_eq!(apply("0640", 0o777, true), 0o640);
        assert_eq!(apply("4755", 0o600, false), 0o4755);
        assert!(Chmod::parse("8").is_err());
        assert!(Chmod::parse("17777").is_err());
    }

    #[test]
    fn symbolic_changes_the_mode_as_chmod_does() {
        // (each checked against GNU chmod 9.1)
        assert_eq!(apply("+x", 0o644, false), 0o755);
        assert_eq!(apply("a+x", 0o600, false), 0o711);
        assert_eq!(apply("u+x", 0o644, false), 0o744);
        assert_eq!(apply("go-w", 0o666, false), 0o644);
        assert_eq!(apply("u=rwx,go=rx", 0o600, false), 0o755);
        assert_eq!(apply("o=", 0o777, false), 0o770);
        assert_eq!(apply("=r", 0o777, false), 0o444);
        assert_eq!(apply("g=u", 0o640, false), 0o660);
        assert_eq!(apply("go=u-w", 0o755, false), 0o755);
        assert_eq!(apply("u+s", 0o755, false), 0o4755);
        assert_eq!(apply("g+s,o+t", 0o755, true), 0o3755);
        assert_eq!(apply("u-x+w", 0o544, false), 0o644);
        // X: directories and files someone may execute
        assert_eq!(apply("a=rX", 0o600, false), 0o444);
        assert_eq!(apply("a=rX", 0o700, false), 0o555);
        assert_eq!(apply("a=rX", 0o600, true), 0o555);
        assert_eq!(apply("go+X", 0o644, true), 0o655);
        // `=` keeps a directory's set-ID bits unless it names them
        assert_eq!(apply("u=rwx", 0o2755, true), 0o2755);
        assert_eq!(apply("u=rwx", 0o4755, false), 0o755);
    }

    #[test]
    fn bad_modes_are_refused_with_the_reason() {
        for bad in ["", "u", "+q", "x+r", "u+x,", "ug", "rwx", "a+r;"] {
            assert!(Chmod::parse(bad).is_err(), "{bad:?} accepted");
        }
        let err = Chmod::parse("u+q").unwrap_err();
        assert!(err.contains("unknown permission 'q'"), "{err}");
    }
}
