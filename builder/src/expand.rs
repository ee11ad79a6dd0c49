//! Variable expansion by Docker's rules (moby `frontend/dockerfile/shell/lex.go`):
//! `$V`, `${V}`, `${V:-w}`, `${V-w}`, `${V:+w}`, `${V+w}`, `${V:?msg}`, `${V?msg}`;
//! single quotes are literal, double quotes expand, the escape character makes the next
//! character literal; quotes are removed from the result. Which instructions expand, and
//! with which variables, is decided by `stages`.

/// Where expansion failed: byte offset in the word and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    pub offset: usize,
    pub message: String,
}

/// The shell-word lexer for one escape character.
pub struct Lexer {
    pub escape: char,
}

struct Scan<'a, 'e> {
    chars: Vec<(usize, char)>,
    index: usize,
    len: usize,
    escape: char,
    env: &'e dyn Fn(&str) -> Option<String>,
    _text: &'a str,
}

impl Lexer {
    pub fn new(escape: char) -> Lexer {
        Lexer { escape }
    }

    /// Expands one word: variables replaced, quotes and escapes removed.
    pub fn word(
        &self,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, ExpandError> {
        let mut scan = Scan {
            chars: text.char_indices().collect(),
            index: 0,
            len: text.len(),
            escape: self.escape,
            env,
            _text: text,
        };
        scan.process(None)
    }
}

impl Scan<'_, '_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.index).map(|&(_, c)| c)
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.index += 1;
        }
        c
    }

    fn offset(&self) -> usize {
        self.chars
            .get(self.index)
            .map_or(self.len, |&(offset, _)| offset)
    }

    fn error(&self, offset: usize, message: impl Into<String>) -> ExpandError {
        ExpandError {
            offset,
            message: message.into(),
        }
    }

    /// Processes until `stop` (consumed) or the end.
    fn process(&mut self, stop: Option<char>) -> Result<String, ExpandError> {
        let mut out = String::new();
        let start = self.offset();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.next();
                return Ok(out);
            }
            match c {
                '\'' => out.push_str(&self.single_quote()?),
                '"' => out.push_str(&self.double_quote()?),
                '$' => out.push_str(&self.dollar()?),
                _ => {
                    self.next();
                    if c == self.escape {
                        match self.next() {
                            Some(escaped) => out.push(escaped),
                            None => break,
                        }
                    } else {
                        out.push(c);
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return Err(self.error(start, format!("missing '{stop}'")));
        }
        Ok(out)
    }

    fn single_quote(&mut self) -> Result<String, ExpandError> {
        let start = self.offset();
        self.next();
        let mut out = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(self.error(
                        start,
                        "unexpected end of statement while looking for matching single-quote",
                    ));
                }
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> Result<String, ExpandError> {
        let start = self.offset();
        self.next();
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(self.error(
                        start,
                        "unexpected end of statement while looking for matching double-quote",
                    ));
                }
                Some('"') => {
                    self.next();
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) => {
                    self.next();
                    if c == self.escape {
                        match self.peek() {
                            Some(next @ ('"' | '$')) => {
                                self.next();
                                out.push(next);
                            }
                            Some(next) if next == self.escape => {
                                self.next();
                                out.push(next);
                            }
                            _ => out.push(c),
                        }
                    } else {
                        out.push(c);
                    }
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        // `$1` is a positional parameter: one digit, always empty here
        if let Some(c) = self.peek().filter(char::is_ascii_digit) {
            self.next();
            name.push(c);
            return name;
        }
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.next();
            } else {
                break;
            }
        }
        name
    }

    fn dollar(&mut self) -> Result<String, ExpandError> {
        let start = self.offset();
        self.next();
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok((self.env)(&name).unwrap_or_default());
        }
        self.next();
        let name = self.name();
        if name.is_empty() {
            return Err(self.error(start, "bad substitution: missing variable name after ${"));
        }
        let env = self.env;
        let value = env(&name);
        match self.next() {
            Some('}') => Ok(value.unwrap_or_default()),
            Some(':') => {
                let modifier = self.next();
                let word = self.process(Some('}'))?;
                let empty = value.as_deref().is_none_or(str::is_empty);
                match modifier {
                    Some('-') => Ok(if empty {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    Some('+') => Ok(if empty { String::new() } else { word }),
                    Some('?') if empty => Err(self.error(start, unset_message(&name, &word))),
                    Some('?') => Ok(value.unwrap_or_default()),
                    other => Err(self.error(
                        start,
                        format!(
                            "unsupported modifier ({}) in substitution",
                            other.map(String::from).unwrap_or_default()
                        ),
                    )),
                }
            }
            Some(modifier @ ('-' | '+' | '?')) => {
                let word = self.process(Some('}'))?;
                match modifier {
                    '-' => Ok(value.unwrap_or(word)),
                    '+' => Ok(if value.is_some() { word } else { String::new() }),
                    _ => value.ok_or_else(|| self.error(start, unset_message(&name, &word))),
                }
            }
            Some(other) => Err(self.error(
                start,
                format!("unsupported modifier ({other}) in substitution"),
            )),
            None => Err(self.error(start, "missing '}'")),
        }
    }
}

fn unset_message(name: &str, word: &str) -> String {
    if word.is_empty() {
        format!("{name}: is not allowed to be unset")
    } else {
        format!("{name}: {word}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(text: &str) -> Result<String, ExpandError> {
        let env = |name: &str| match name {
            "A" => Some("apple".to_string()),
            "E" => Some(String::new()),
            _ => None,
        };
        Lexer::new('\\').word(text, &env)
    }

    #[test]
    fn modifiers_follow_docker() {
        assert_eq!(
            expand("${A:-x}/${U:-x}/${E:-x}/${E-x}/${U-x}").unwrap(),
            "apple/x/x//x"
        );
        assert_eq!(expand("${A:+y}/${E:+y}/${E+y}/${U+y}").unwrap(), "y//y/");
        assert_eq!(expand("$A-${A}_$Ax").unwrap(), "apple-apple_");
        assert!(
            expand("${U:?must be set}")
                .unwrap_err()
                .message
                .contains("must be set")
        );
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(
            expand(r#"'$A' "$A" \$A "\$A" "a\b" a\ b"#).unwrap(),
            r#"$A apple $A $A a\b a b"#
        );
        assert_eq!(expand("$ $1x").unwrap(), "$ x");
        assert!(expand("'open").is_err());
        assert!(expand("${A").is_err());
    }

    #[test]
    fn defaults_nest() {
        assert_eq!(expand("${U:-${A}s}").unwrap(), "apples");
    }
}
