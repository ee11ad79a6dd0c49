//! Variable expansion by Docker's rules (moby `frontend/dockerfile/shell/lex.go`):
//! `$V`, `${V}`, `${V:-w}`, `${V-w}`, `${V:+w}`, `${V+w}`, `${V:?msg}`, `${V?msg}`, and
//! the pattern forms `${V#p}`, `${V##p}`, `${V%p}`, `${V%%p}`, `${V/p/r}`, `${V//p/r}`
//! (shell patterns: `*`, `?`, `[...]`; quoted or escaped characters are literal);
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
    /// A heredoc's body (BuildKit's SkipProcessQuotes): quotes are plain characters.
    raw: bool,
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
        self.scan(text, env, false).process(None)
    }

    /// Expands the body of a heredoc whose delimiter is not quoted, as BuildKit does (its
    /// ExpandRaw): variables expand, quotes stay as written (`'$V'` expands), and the
    /// escape makes the next character literal (`\\$V` gives `$V`).
    pub fn heredoc(
        &self,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, ExpandError> {
        self.scan(text, env, true).process(None)
    }

    fn scan<'a, 'e>(
        &self,
        text: &'a str,
        env: &'e dyn Fn(&str) -> Option<String>,
        raw: bool,
    ) -> Scan<'a, 'e> {
        Scan {
            chars: text.char_indices().collect(),
            index: 0,
            len: text.len(),
            escape: self.escape,
            raw,
            env,
            _text: text,
        }
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
                '\'' if !self.raw => out.push_str(&self.single_quote()?),
                '"' if !self.raw => out.push_str(&self.double_quote()?),
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
            Some(side @ ('#' | '%')) => {
                let longest = self.peek() == Some(side);
                if longest {
                    self.next();
                }
                let (pattern, _) = self.pattern(&['}'])?;
                let pattern = Pattern::new(&pattern);
                let value = value.unwrap_or_default();
                Ok(if side == '#' {
                    pattern.trim_prefix(&value, longest)
                } else {
                    pattern.trim_suffix(&value, longest)
                })
            }
            Some('/') => {
                let all = self.peek() == Some('/');
                if all {
                    self.next();
                }
                let (pattern, stop) = self.pattern(&['/', '}'])?;
                // `${V/p}` deletes, as in sh.
                let replacement = if stop == '/' {
                    self.process(Some('}'))?
                } else {
                    String::new()
                };
                let value = value.unwrap_or_default();
                Ok(Pattern::new(&pattern).replace(&value, &replacement, all))
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

impl Scan<'_, '_> {
    /// Scans a pattern up to one of `stops` (consumed, and returned): variables expand
    /// (unquoted, their values are patterns, as in sh); quoted and escaped characters are
    /// made literal with `\`.
    fn pattern(&mut self, stops: &[char]) -> Result<(String, char), ExpandError> {
        let start = self.offset();
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if stops.contains(&c) {
                self.next();
                return Ok((out, c));
            }
            match c {
                '\'' if !self.raw => push_literal(&mut out, &self.single_quote()?),
                '"' if !self.raw => push_literal(&mut out, &self.double_quote()?),
                '$' => out.push_str(&self.dollar()?),
                _ => {
                    self.next();
                    if c != self.escape {
                        out.push(c);
                    } else if let Some(escaped) = self.next() {
                        push_literal(&mut out, &escaped.to_string());
                    }
                }
            }
        }
        Err(self.error(start, "missing '}'"))
    }
}

fn push_literal(out: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// A shell pattern (`*`, `?`, `[...]` with `!` or `^`, `\x` literal) as in `${V#p}`.
#[derive(Debug, PartialEq)]
enum Token {
    Char(char),
    One,
    Any,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

struct Pattern(Vec<Token>);

impl Pattern {
    fn new(text: &str) -> Pattern {
        let chars: Vec<char> = text.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '\\' => {
                    tokens.push(Token::Char(chars.get(i).copied().unwrap_or('\\')));
                    i += 1;
                }
                '*' if tokens.last() == Some(&Token::Any) => {}
                '*' => tokens.push(Token::Any),
                '?' => tokens.push(Token::One),
                '[' => match Pattern::class(&chars[i..]) {
                    Some((class, used)) => {
                        tokens.push(class);
                        i += used;
                    }
                    None => tokens.push(Token::Char('[')),
                },
                _ => tokens.push(Token::Char(c)),
            }
        }
        Pattern(tokens)
    }

    /// The class after a `[`, and how many characters it took (with the `]`); None when
    /// there is no closing `]`, and the `[` is literal.
    fn class(chars: &[char]) -> Option<(Token, usize)> {
        let negated = matches!(chars.first(), Some('!' | '^'));
        let mut i = usize::from(negated);
        let mut ranges = Vec::new();
        // A `]` first in the class is a member.
        let mut first = true;
        loop {
            let mut c = *chars.get(i)?;
            if c == ']' && !first {
                return Some((Token::Class { negated, ranges }, i + 1));
            }
            first = false;
            if c == '\\' {
                i += 1;
                c = *chars.get(i)?;
            }
            i += 1;
            if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&e| e != ']') {
                ranges.push((c, chars[i + 1]));
                i += 2;
            } else {
                ranges.push((c, c));
            }
        }
    }

    /// Whether the pattern matches all of `text`.
    fn matches(&self, text: &[char]) -> bool {
        let one = |token: &Token, c: char| match token {
            Token::Char(p) => *p == c,
            Token::One => true,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&c)) != *negated
            }
            Token::Any => false,
        };
        let p = &self.0;
        let (mut pi, mut ti) = (0, 0);
        // The last `*` seen and where in the text it was tried: backtrack there.
        let mut star: Option<(usize, usize)> = None;
        while ti < text.len() {
            if p.get(pi) == Some(&Token::Any) {
                star = Some((pi, ti));
                pi += 1;
            } else if p.get(pi).is_some_and(|t| one(t, text[ti])) {
                pi += 1;
                ti += 1;
            } else if let Some((sp, st)) = star {
                star = Some((sp, st + 1));
                pi = sp + 1;
                ti = st + 1;
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|t| *t == Token::Any)
    }

    /// `${V#p}` (shortest) and `${V##p}` (longest).
    fn trim_prefix(&self, value: &str, longest: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut ends: Vec<usize> = (0..=chars.len()).collect();
        if longest {
            ends.reverse();
        }
        match ends.into_iter().find(|&end| self.matches(&chars[..end])) {
            Some(end) => chars[end..].iter().collect(),
            None => value.to_string(),
        }
    }

    /// `${V%p}` (shortest) and `${V%%p}` (longest).
    fn trim_suffix(&self, value: &str, longest: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut starts: Vec<usize> = (0..=chars.len()).collect();
        if !longest {
            starts.reverse();
        }
        match starts
            .into_iter()
            .find(|&start| self.matches(&chars[start..]))
        {
            Some(start) => chars[..start].iter().collect(),
            None => value.to_string(),
        }
    }

    /// `${V/p/r}` (the first match) and `${V//p/r}` (every match): at each position the
    /// longest non-empty match is replaced.
    fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut i = 0;
        while i < chars.len() {
            let end = (i + 1..=chars.len())
                .rev()
                .find(|&end| self.matches(&chars[i..end]));
            match end {
                Some(end) => {
                    out.push_str(replacement);
                    i = end;
                    if !all {
                        break;
                    }
                }
                None => {
                    out.push(chars[i]);
                    i += 1;
                }
            }
        }
        out.extend(&chars[i..]);
        out
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

    fn with(text: &str, name: &str, value: &str) -> String {
        let env = |n: &str| (n == name).then(|| value.to_string());
        Lexer::new('\\').word(text, &env).unwrap()
    }

    #[test]
    fn prefix_and_suffix_removal() {
        let p = "usr/local/bin";
        assert_eq!(with("${P#*/}", "P", p), "local/bin");
        assert_eq!(with("${P##*/}", "P", p), "bin");
        assert_eq!(with("${P%/*}", "P", p), "usr/local");
        assert_eq!(with("${P%%/*}", "P", p), "usr");
        assert_eq!(with("${P#x*}", "P", p), p, "no match leaves the value");
        assert_eq!(with("${P#*}|${P##*}", "P", p), "usr/local/bin|");
        assert_eq!(with("${P%.tar.*}", "P", "app.tar.gz"), "app");
        assert_eq!(with("${U#x}", "P", p), "", "unset is empty");
    }

    #[test]
    fn pattern_classes_quotes_and_escapes() {
        assert_eq!(with("${V#[a-c]}", "V", "banana"), "anana");
        assert_eq!(with("${V#[!b]}", "V", "banana"), "banana");
        assert_eq!(with("${V#?a}", "V", "banana"), "nana");
        assert_eq!(with(r"${S#\*}", "S", "*x"), "x", "an escaped * is literal");
        assert_eq!(with("${S#'*'}", "S", "*x"), "x", "a quoted * is literal");
        assert_eq!(with(r#"${S#"?"}"#, "S", "?x"), "x");
        assert_eq!(with("${S#[}", "S", "[x"), "x", "an unclosed [ is literal");
        assert_eq!(
            with("${V#${V%a}}", "V", "banana"),
            "a",
            "patterns expand variables"
        );
    }

    #[test]
    fn replacement() {
        assert_eq!(with("${V/a/o}", "V", "banana"), "bonana");
        assert_eq!(with("${V//a/o}", "V", "banana"), "bonono");
        assert_eq!(with("${V//an}", "V", "banana"), "ba");
        assert_eq!(with("${V//a*/-}", "V", "banana"), "b-", "longest match");
        assert_eq!(with("${V/x/y}", "V", "banana"), "banana");
        assert_eq!(with("${V//[an]/$V}", "V", "ba"), "bba");
        assert!(expand("${A/a").is_err());
    }

    #[test]
    fn defaults_nest() {
        assert_eq!(expand("${U:-${A}s}").unwrap(), "apples");
    }
}
