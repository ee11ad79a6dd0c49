//! Heredocs (`RUN <<EOF`, `<<-EOF`, `<<"EOF"`, `COPY <<EOF /path`): finding where they
//! open on an instruction line and reading their bodies from the lines that follow, in
//! order, as buildkit does (several heredocs per line are read one after another).

/// One heredoc attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Heredoc {
    /// The delimiter word, without quotes.
    pub name: String,
    /// The body: leading tabs removed when opened with `<<-`; ends with a newline
    /// unless empty.
    pub content: String,
    /// The body exactly as written (for handing the whole text to a shell).
    pub raw: String,
    /// False when the delimiter was quoted: no variable expansion in the body.
    pub expand: bool,
    /// Opened with `<<-`.
    pub chomp: bool,
}

/// Where a heredoc opens in the arguments.
#[derive(Debug, Clone, Copy)]
pub struct Opening<'a> {
    pub offset: usize,
    pub name: &'a str,
    pub quoted: bool,
    pub chomp: bool,
}

/// Finds `<<WORD`, `<<-WORD`, `<<"WORD"`, `<<'WORD'` outside quotes (but not `<<<`).
pub fn find_openings(args: &str) -> Vec<Opening<'_>> {
    let bytes = args.as_bytes();
    let mut openings = Vec::new();
    let mut quote: Option<u8> = None;
    let mut index = 0;
    while index < bytes.len() {
        let c = bytes[index];
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            index += 1;
            continue;
        }
        if c == b'"' || c == b'\'' {
            quote = Some(c);
            index += 1;
            continue;
        }
        if c == b'<' && bytes.get(index + 1) == Some(&b'<') && bytes.get(index + 2) == Some(&b'<') {
            // a here-string (`<<<`), not a heredoc
            while bytes.get(index) == Some(&b'<') {
                index += 1;
            }
            continue;
        }
        if c == b'<' && bytes.get(index + 1) == Some(&b'<') {
            let start = index;
            let mut cursor = index + 2;
            let chomp = bytes.get(cursor) == Some(&b'-');
            if chomp {
                cursor += 1;
            }
            let quote_char = match bytes.get(cursor) {
                Some(&q @ (b'"' | b'\'')) => {
                    cursor += 1;
                    Some(q)
                }
                _ => None,
            };
            let word_start = cursor;
            while cursor < bytes.len()
                && (bytes[cursor].is_ascii_alphanumeric() || bytes[cursor] == b'_')
            {
                cursor += 1;
            }
            if cursor > word_start {
                let name = &args[word_start..cursor];
                let closed = match quote_char {
                    Some(q) if bytes.get(cursor) == Some(&q) => {
                        cursor += 1;
                        true
                    }
                    Some(_) => false,
                    None => true,
                };
                if closed {
                    openings.push(Opening {
                        offset: start,
                        name,
                        quoted: quote_char.is_some(),
                        chomp,
                    });
                    index = cursor;
                    continue;
                }
            }
            index = start + 2;
            continue;
        }
        index += 1;
    }
    openings
}

/// Reads the body of `opening` starting at line index `from`; returns the heredoc and the
/// index of the line after its terminator, or the delimiter name when the file ends first.
pub fn read_body(
    lines: &[&str],
    from: usize,
    opening: Opening<'_>,
) -> Result<(Heredoc, usize), String> {
    let mut content = String::new();
    let mut raw = String::new();
    let mut index = from;
    while index < lines.len() {
        let line = lines[index];
        let stripped = if opening.chomp {
            line.trim_start_matches('\t')
        } else {
            line
        };
        index += 1;
        if stripped == opening.name {
            let doc = Heredoc {
                name: opening.name.to_string(),
                content,
                raw,
                expand: !opening.quoted,
                chomp: opening.chomp,
            };
            return Ok((doc, index));
        }
        content.push_str(stripped);
        content.push('\n');
        raw.push_str(line);
        raw.push('\n');
    }
    Err(opening.name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_several_openings_and_skips_quoted_ones() {
        let found = find_openings(r#"cat <<A <<-"B" '<<C' <<<D"#);
        let names: Vec<_> = found.iter().map(|o| (o.name, o.quoted, o.chomp)).collect();
        assert_eq!(names, vec![("A", false, false), ("B", true, true)]);
    }

    #[test]
    fn chomp_strips_leading_tabs() {
        let lines = ["\tone", "\t\ttwo", "\tEOF"];
        let opening = Opening {
            offset: 0,
            name: "EOF",
            quoted: false,
            chomp: true,
        };
        let (doc, next) = read_body(&lines, 0, opening).unwrap();
        assert_eq!(doc.content, "one\ntwo\n");
        assert_eq!(next, 3);
    }
}
