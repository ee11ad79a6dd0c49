//! Buildfile text -> AST with positions. This layer knows the lexical rules only
//! (parser directives, comments, line continuations with the escape character, leading
//! `--flags`, JSON arrays, heredoc bodies); what an instruction means is decided in
//! `instructions/` (the buildkit `frontend/dockerfile/parser` split).

mod heredoc;

pub use heredoc::Heredoc;

use crate::error::{Error, Pos, Result};

/// Parser directives from the top of the file (`# escape=`, `# syntax=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    pub escape: char,
    pub syntax: Option<String>,
}

/// A whole Buildfile.
#[derive(Debug, Clone)]
pub struct Ast {
    pub file: String,
    pub directives: Directives,
    pub nodes: Vec<Node>,
}

/// One `--name[=value]` flag in front of an instruction's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub value: Option<String>,
    pub pos: Pos,
}

/// One logical instruction: continuations joined, flags split off, heredocs attached.
#[derive(Debug, Clone)]
pub struct Node {
    /// Lowercased keyword (`run`), and as written (`RUN`).
    pub keyword: String,
    pub keyword_original: String,
    pub pos: Pos,
    pub end_line: usize,
    pub flags: Vec<Flag>,
    /// Everything after the flags, continuations joined, trailing blanks trimmed.
    pub args: String,
    pub args_pos: Pos,
    /// `Some` when `args` is a JSON array of strings (the exec form).
    pub json: Option<Vec<String>>,
    pub heredocs: Vec<Heredoc>,
    /// The logical line as joined (keyword included), for history and errors.
    pub original: String,
    /// Maps byte offsets in the joined line back to file positions: (offset, position)
    /// per physical line piece; `args_offset` is where `args` starts in it.
    segments: Vec<(usize, Pos)>,
    args_offset: usize,
}

impl Node {
    /// (offset in `original`, position) per physical line piece.
    pub fn segments(&self) -> &[(usize, Pos)] {
        &self.segments
    }

    /// The file position of byte `offset` in `args`.
    pub fn pos_at(&self, offset: usize) -> Pos {
        let offset = offset + self.args_offset;
        let mut best = self.pos;
        for &(start, pos) in &self.segments {
            if start <= offset {
                best = Pos {
                    line: pos.line,
                    column: pos.column + (offset - start),
                };
            }
        }
        best
    }
}

/// Instructions whose arguments may open heredocs (buildkit allows them on these only).
const HEREDOC_KEYWORDS: &[&str] = &["run", "copy", "add"];

/// Parses a Buildfile; `file` names it in error messages.
pub fn parse(text: &str, file: &str) -> Result<Ast> {
    // A byte order mark, as editors on Windows write one, is not text (BuildKit drops it).
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let (directives, mut index) = parse_directives(&lines, file)?;
    let escape = directives.escape;
    let mut nodes = Vec::new();
    while index < lines.len() {
        let line = lines[index];
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            index += 1;
            continue;
        }
        let start_line = index + 1;
        let start_column = line.len() - trimmed.len() + 1;
        // Join continuation lines; comment and blank lines inside a continuation are dropped
        // as Docker does.
        let mut joined = String::new();
        let mut pieces: Vec<(usize, Pos)> = Vec::new();
        let mut piece = trimmed;
        let mut piece_pos = Pos {
            line: start_line,
            column: start_column,
        };
        let mut end_line = start_line;
        loop {
            let (body, continued) = strip_continuation(piece, escape);
            pieces.push((joined.len(), piece_pos));
            joined.push_str(body);
            index += 1;
            if !continued {
                break;
            }
            // Find the next line that carries text.
            let mut next = None;
            while index < lines.len() {
                let candidate = lines[index];
                let candidate_trimmed = candidate.trim_start();
                if candidate_trimmed.starts_with('#') || candidate_trimmed.is_empty() {
                    index += 1;
                    continue;
                }
                next = Some(candidate);
                break;
            }
            match next {
                Some(candidate) => {
                    end_line = index + 1;
                    piece = candidate;
                    piece_pos = Pos {
                        line: index + 1,
                        column: 1,
                    };
                }
                None => break,
            }
        }
        let mut node = split_node(&joined, &pieces, end_line)?;
        if HEREDOC_KEYWORDS.contains(&node.keyword.as_str()) {
            let openings = heredoc::find_openings(&node.args);
            for opening in openings {
                let (doc, next_index) = heredoc::read_body(&lines, index, opening).map_err(|name| {
                    let pos = node.pos_at(opening.offset);
                    Error::syntax(file, pos, format!("unterminated heredoc <<{name}: no line {name:?} before the end of the file"))
                })?;
                index = next_index;
                node.end_line = index;
                node.heredocs.push(doc);
            }
        }
        nodes.push(node);
    }
    Ok(Ast {
        file: file.to_string(),
        directives,
        nodes,
    })
}

/// Reads parser directives: `# name=value` lines at the very top of the file.
fn parse_directives(lines: &[&str], file: &str) -> Result<(Directives, usize)> {
    let mut directives = Directives {
        escape: '\\',
        syntax: None,
    };
    let mut seen: Vec<String> = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index].trim();
        let Some(comment) = line.strip_prefix('#') else {
            break;
        };
        let Some((name, value)) = comment.split_once('=') else {
            break;
        };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            break;
        }
        if !matches!(name.as_str(), "escape" | "syntax" | "check") {
            break;
        }
        let pos = Pos {
            line: index + 1,
            column: 1,
        };
        if seen.contains(&name) {
            return Err(Error::syntax(
                file,
                pos,
                format!("parser directive {name:?} given twice"),
            ));
        }
        seen.push(name.clone());
        match name.as_str() {
            "escape" => {
                directives.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(Error::syntax(
                            file,
                            pos,
                            format!("invalid escape directive {value:?}: must be ` or \\"),
                        ));
                    }
                }
            }
            "syntax" => directives.syntax = Some(value.to_string()),
            _ => {}
        }
        index += 1;
    }
    Ok((directives, index))
}

/// Removes a trailing escape character (followed only by blanks) and says whether the
/// line continues.
fn strip_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(body) => (body, true),
        None => (line, false),
    }
}

/// Splits a joined logical line into keyword, flags and arguments.
fn split_node(joined: &str, pieces: &[(usize, Pos)], end_line: usize) -> Result<Node> {
    let pos_of = |offset: usize| -> Pos {
        let mut best = pieces[0].1;
        for &(start, pos) in pieces {
            if start <= offset {
                best = Pos {
                    line: pos.line,
                    column: pos.column + (offset - start),
                };
            }
        }
        best
    };
    let keyword_end = joined.find(char::is_whitespace).unwrap_or(joined.len());
    let keyword_original = &joined[..keyword_end];
    let mut cursor = skip_blanks(joined, keyword_end);
    let mut flags = Vec::new();
    loop {
        let rest = &joined[cursor..];
        if !rest.starts_with("--") {
            break;
        }
        let end = cursor + flag_token_len(rest);
        let token = &joined[cursor + 2..end];
        if token.is_empty() {
            // A lone `--` ends the flags.
            cursor = skip_blanks(joined, end);
            break;
        }
        let (name, value) = match token.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(unquote_flag(value))),
            None => (token.to_string(), None),
        };
        flags.push(Flag {
            name,
            value,
            pos: pos_of(cursor),
        });
        cursor = skip_blanks(joined, end);
    }
    let args = joined[cursor..].trim_end().to_string();
    let args_pos = pos_of(cursor);
    let segments = pieces.to_vec();
    let trimmed = args.trim_start();
    let json = if trimmed.starts_with('[') {
        serde_json::from_str::<Vec<String>>(trimmed).ok()
    } else {
        None
    };
    Ok(Node {
        keyword: keyword_original.to_ascii_lowercase(),
        keyword_original: keyword_original.to_string(),
        pos: pieces[0].1,
        end_line,
        flags,
        args,
        args_pos,
        json,
        heredocs: Vec::new(),
        original: joined.trim_end().to_string(),
        segments,
        args_offset: cursor,
    })
}

fn skip_blanks(text: &str, from: usize) -> usize {
    let rest = &text[from..];
    from + (rest.len() - rest.trim_start().len())
}

/// Length of a flag token: up to the first blank outside quotes.
fn flag_token_len(text: &str) -> usize {
    let mut quote: Option<char> = None;
    for (index, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c.is_whitespace() => return index,
            None => {}
        }
    }
    text.len()
}

/// Removes one pair of surrounding quotes from a whole flag value (`--from="x"`).
fn unquote_flag(value: &str) -> String {
    for q in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
            return value[1..value.len() - 1].to_string();
        }
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_maps_positions_to_second_line() {
        let ast = parse("FROM a\nRUN echo \\\n  b\n", "Buildfile").unwrap();
        let run = &ast.nodes[1];
        assert_eq!(run.args, "echo   b");
        assert_eq!(run.pos_at(0), Pos { line: 2, column: 5 });
        assert_eq!(run.pos_at(7).line, 3);
    }

    #[test]
    fn a_byte_order_mark_is_dropped() {
        let ast = parse("\u{feff}# escape=`\nFROM a\n", "Buildfile").unwrap();
        assert_eq!(ast.nodes[0].keyword, "from");
        assert_eq!(ast.nodes[0].pos_at(0), Pos { line: 2, column: 6 });
    }

    #[test]
    fn flags_split_off_before_args() {
        let ast = parse("COPY --from=build --chmod=755 a b\n", "Buildfile").unwrap();
        let node = &ast.nodes[0];
        assert_eq!(node.flags.len(), 2);
        assert_eq!(
            node.flags[1].pos,
            Pos {
                line: 1,
                column: 19
            }
        );
        assert_eq!(node.args, "a b");
    }
}
