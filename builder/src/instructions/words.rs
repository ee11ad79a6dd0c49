//! Splitting instruction arguments into words the way Docker's `parseWords` does: blanks
//! separate words except inside quotes or after the escape character; quotes and escapes
//! stay in the word (expansion removes them later).

/// A word and its byte offset in the arguments (for error positions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub offset: usize,
    pub text: String,
}

/// Splits `text` into words; an unterminated quote is reported as `Err(offset of quote)`.
pub fn split_words(text: &str, escape: char) -> Result<Vec<Word>, usize> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut start: Option<usize> = None;
    let mut quote: Option<(char, usize)> = None;
    let mut escaped = false;
    for (index, c) in text.char_indices() {
        if escaped {
            current.push(c);
            escaped = false;
            continue;
        }
        if let Some((q, _)) = quote {
            if c == escape && q == '"' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            current.push(c);
            continue;
        }
        if c.is_whitespace() {
            if let Some(offset) = start.take() {
                words.push(Word {
                    offset,
                    text: std::mem::take(&mut current),
                });
            }
            continue;
        }
        if start.is_none() {
            start = Some(index);
        }
        if c == escape {
            escaped = true;
        } else if c == '"' || c == '\'' {
            quote = Some((c, index));
        }
        current.push(c);
    }
    if let Some((_, offset)) = quote {
        return Err(offset);
    }
    if let Some(offset) = start {
        words.push(Word {
            offset,
            text: current,
        });
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_keep_blanks_inside_one_word() {
        let words = split_words(r#"a="x y" b=c\ d 'e f'"#, '\\').unwrap();
        let texts: Vec<_> = words.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(texts, vec![r#"a="x y""#, r"b=c\ d", "'e f'"]);
        assert_eq!(words[1].offset, 8);
    }

    #[test]
    fn unterminated_quote_reports_its_offset() {
        assert_eq!(split_words("a \"b c", '\\'), Err(2));
    }
}
