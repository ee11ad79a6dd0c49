//! The part of Go's text/template that `docker inspect -f` scripts use, over JSON values:
//! fields (`.A.B`, `$.A`, `$v.A`), pipelines (`.A | json`), `range` (over lists and maps,
//! with `$i, $v :=`), `if`/`else`/`with`, `{{-`/`-}}` trimming, string and number
//! literals, and the functions `json`, `index`, `join`, `split`, `len`, `print`,
//! `println`, `printf` (%s %v %d %q %t, widths), `upper`, `lower`, `title`, `eq`, `ne`, `lt`,
//! `le`, `gt`, `ge`, `not`, `and`, `or` (which stop at the deciding operand). Values print as
//! Go prints them: `[a b]` for a list, `map[k:v]` for a map, `<no value>` for a missing
//! field.
//!
//! Hand-written, as the Rust port of Go templates (gtmpl 0.7) prints lists and maps in
//! Rust's Debug form (`[String("a")]`), which no script expects.

use std::collections::BTreeMap;

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;

/// A parsed template.
#[derive(Debug)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug)]
enum Node {
    Text(String),
    Print(Pipeline),
    /// `range`, `if` or `with`: the body, and the `else` part.
    Block {
        kind: Block,
        pipe: Pipeline,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Block {
    Range,
    If,
    With,
}

#[derive(Debug)]
struct Pipeline {
    /// `$v :=` or `$i, $v :=`.
    vars: Vec<String>,
    commands: Vec<Command>,
}

/// A function and its arguments, or a lone term.
#[derive(Debug)]
enum Command {
    Call(String, Vec<Term>),
    Term(Term),
}

#[derive(Debug)]
enum Term {
    /// `.A.B` (empty path: `.` itself).
    Dot(Vec<String>),
    /// `$` or `$name`, then fields.
    Var(String, Vec<String>),
    Literal(Value),
    /// `(pipeline)`, then fields: `(index .Mounts 0).Source`.
    Sub(Pipeline, Vec<String>),
}

impl Template {
    pub fn parse(text: &str) -> anyhow::Result<Template> {
        let pieces = split(text).with_context(|| format!("template {text:?}"))?;
        let mut pieces = pieces.into_iter();
        let (nodes, end) =
            parse_nodes(&mut pieces).with_context(|| format!("template {text:?}"))?;
        if let Some(end) = end {
            bail!("template {text:?}: {{{{{end}}}}} without a range, if or with");
        }
        Ok(Template { nodes })
    }

    pub fn render(&self, data: &Value) -> anyhow::Result<String> {
        let mut out = String::new();
        let mut scope = Scope {
            root: data,
            vars: Vec::new(),
        };
        exec(&self.nodes, data, &mut scope, &mut out)?;
        Ok(out)
    }
}

/// The template cut into text and actions, trim markers applied.
enum Piece {
    Text(String),
    Action(String),
}

fn split(text: &str) -> anyhow::Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut before = &rest[..open];
        if trim_next {
            before = before.trim_start_matches(is_space);
        }
        let mut action = &rest[open + 2..];
        if let Some(a) = action.strip_prefix('-').filter(|a| a.starts_with(is_space)) {
            before = before.trim_end_matches(is_space);
            action = a;
        }
        pieces.push(Piece::Text(before.to_string()));
        let close = find_close(action).ok_or_else(|| anyhow!("{{{{ without }}}}"))?;
        let mut inner = &action[..close];
        trim_next = false;
        if let Some(a) = inner.strip_suffix('-').filter(|a| a.ends_with(is_space)) {
            inner = a;
            trim_next = true;
        }
        let inner = inner.trim();
        if !(inner.starts_with("/*") && inner.ends_with("*/")) {
            pieces.push(Piece::Action(inner.to_string()));
        }
        rest = &action[close + 2..];
    }
    pieces.push(Piece::Text(match trim_next {
        true => rest.trim_start_matches(is_space).to_string(),
        false => rest.to_string(),
    }));
    Ok(pieces)
}

/// Go trims and separates by ASCII white space only.
fn is_space(c: char) -> bool {
    c.is_ascii_whitespace()
}

/// Where `}}` closes an action, skipping quoted strings.
fn find_close(action: &str) -> Option<usize> {
    let bytes = action.as_bytes();
    let mut i = 0;
    let mut quote = None;
    while i < bytes.len() {
        match (quote, bytes[i]) {
            (Some(b'"'), b'\\') => i += 1,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'`') => quote = Some(bytes[i]),
            (None, b'}') if bytes.get(i + 1) == Some(&b'}') => return Some(i),
            (None, _) => {}
        }
        i += 1;
    }
    None
}

type Pieces = std::vec::IntoIter<Piece>;

/// Nodes up to an `else` or `end` (returned) or the end of the template (None).
fn parse_nodes(pieces: &mut Pieces) -> anyhow::Result<(Vec<Node>, Option<String>)> {
    let mut nodes = Vec::new();
    while let Some(piece) = pieces.next() {
        let action = match piece {
            Piece::Text(text) => {
                nodes.push(Node::Text(text));
                continue;
            }
            Piece::Action(action) => action,
        };
        let (word, rest) = action.split_once(is_space).unwrap_or((&action, ""));
        let kind = match word {
            "end" | "else" => return Ok((nodes, Some(action))),
            "range" => Block::Range,
            "if" => Block::If,
            "with" => Block::With,
            "define" | "template" | "block" | "break" | "continue" => {
                bail!("{{{{{word}}}}} is not supported")
            }
            _ => {
                nodes.push(Node::Print(parse_pipeline(&action)?));
                continue;
            }
        };
        let pipe = parse_pipeline(rest)?;
        if pipe.vars.len() > usize::from(kind == Block::Range) + 1 {
            bail!("{{{{{action}}}}}: too many variables");
        }
        let (node, end) = parse_block(kind, pipe, pieces)?;
        if end.as_deref() != Some("end") {
            bail!("{{{{{action}}}}} without {{{{end}}}}");
        }
        nodes.push(node);
    }
    Ok((nodes, None))
}

/// A block's body and `else` part, and what ended it. `else if X` opens an `if` of its
/// own, inside the `else` part, that ends with the outer block's `end`.
fn parse_block(
    kind: Block,
    pipe: Pipeline,
    pieces: &mut Pieces,
) -> anyhow::Result<(Node, Option<String>)> {
    let (body, end) = parse_nodes(pieces)?;
    let (otherwise, end) = match end.as_deref() {
        Some("else") => parse_nodes(pieces)?,
        Some(e) if e.split(is_space).filter(|w| !w.is_empty()).nth(1) == Some("if") => {
            let rest = e.trim_start_matches("else").trim_start_matches(is_space);
            let pipe = parse_pipeline(&rest["if".len()..])?;
            let (node, end) = parse_block(Block::If, pipe, pieces)?;
            (vec![node], end)
        }
        _ => (Vec::new(), end),
    };
    let node = Node::Block {
        kind,
        pipe,
        body,
        otherwise,
    };
    Ok((node, end))
}

fn parse_pipeline(text: &str) -> anyhow::Result<Pipeline> {
    let tokens = lex(text)?;
    let mut tokens = tokens.as_slice();
    let mut vars = Vec::new();
    // `$v :=` or `$i, $v :=`
    if let Some(at) = tokens.iter().position(|t| t == ":=") {
        for (i, token) in tokens[..at].iter().enumerate() {
            match (i % 2, token.as_str()) {
                (0, v) if v.starts_with('$') => vars.push(v.to_string()),
                (1, ",") => {}
                _ => bail!("{text:?}: bad variable declaration"),
            }
        }
        tokens = &tokens[at + 1..];
    }
    let (pipe, rest) = parse_commands(tokens, text)?;
    if !rest.is_empty() {
        bail!("{text:?}: unexpected {:?}", rest[0]);
    }
    Ok(Pipeline {
        vars,
        commands: pipe,
    })
}

/// Commands separated by `|`, up to a `)` or the end.
fn parse_commands<'t>(
    mut tokens: &'t [String],
    text: &str,
) -> anyhow::Result<(Vec<Command>, &'t [String])> {
    let mut commands = Vec::new();
    loop {
        let mut terms = Vec::new();
        let mut name = None;
        while let Some(token) = tokens.first() {
            if token == "|" || token.starts_with(')') {
                break;
            }
            tokens = &tokens[1..];
            let term = match token.as_str() {
                "(" => {
                    let (sub, rest) = parse_commands(tokens, text)?;
                    let Some(chain) = rest.first().and_then(|t| t.strip_prefix(')')) else {
                        bail!("{text:?}: ( without )");
                    };
                    tokens = &rest[1..];
                    let pipe = Pipeline {
                        vars: Vec::new(),
                        commands: sub,
                    };
                    Term::Sub(pipe, fields(chain))
                }
                word => match parse_term(word) {
                    Some(term) => term,
                    None if terms.is_empty() && name.is_none() => {
                        if !FUNCTIONS.contains(&word) {
                            bail!("{text:?}: function {word:?} not defined");
                        }
                        name = Some(word.to_string());
                        continue;
                    }
                    None => bail!("{text:?}: {word:?} is not a value"),
                },
            };
            terms.push(term);
        }
        commands.push(match name {
            Some(name) => Command::Call(name, terms),
            None if terms.len() == 1 => Command::Term(terms.pop().unwrap()),
            None if terms.is_empty() => bail!("{text:?}: empty command"),
            None => bail!(
                "{text:?}: {} values where a function is expected",
                terms.len()
            ),
        });
        match tokens.first().map(String::as_str) {
            Some("|") => tokens = &tokens[1..],
            _ => return Ok((commands, tokens)),
        }
    }
}

const FUNCTIONS: &[&str] = &[
    "json", "index", "join", "split", "len", "print", "println", "printf", "upper", "lower",
    "title", "eq", "ne", "lt", "le", "gt", "ge", "not", "and", "or",
];

fn fields(path: &str) -> Vec<String> {
    path.split('.')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// A value word, or None for a function name.
fn parse_term(word: &str) -> Option<Term> {
    if let Some(path) = word.strip_prefix('.') {
        return Some(Term::Dot(fields(path)));
    }
    if let Some(var) = word.strip_prefix('$') {
        let (name, path) = var.split_once('.').unwrap_or((var, ""));
        return Some(Term::Var(format!("${name}"), fields(path)));
    }
    if let Some(s) = word.strip_prefix('"') {
        return serde_json::from_str(&format!("\"{s}"))
            .ok()
            .map(Term::Literal);
    }
    if let Some(s) = word.strip_prefix('`') {
        return Some(Term::Literal(Value::String(
            s.trim_end_matches('`').to_string(),
        )));
    }
    match word {
        "true" => Some(Term::Literal(Value::Bool(true))),
        "false" => Some(Term::Literal(Value::Bool(false))),
        "nil" => Some(Term::Literal(Value::Null)),
        _ => serde_json::from_str::<serde_json::Number>(word)
            .ok()
            .map(|n| Term::Literal(Value::Number(n))),
    }
}

/// Words, quoted strings, `(`, `)`, `|`, `,` and `:=`.
fn lex(text: &str) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        match c {
            c if is_space(c) => {
                chars.next();
            }
            ':' if text[start..].starts_with(":=") => {
                tokens.push(":=".into());
                chars.next();
                chars.next();
            }
            '(' | '|' | ',' => {
                tokens.push(c.to_string());
                chars.next();
            }
            // `)` with the fields right after it, as one token: `).Source`.
            ')' => {
                chars.next();
                let mut end = start + 1;
                let chained = chars.peek().is_some_and(|&(_, d)| d == '.');
                while let Some(&(i, d)) = chars.peek().filter(|_| chained) {
                    if !(d == '.' || d == '_' || d.is_alphanumeric()) {
                        break;
                    }
                    end = i + d.len_utf8();
                    chars.next();
                }
                tokens.push(text[start..end].to_string());
            }
            '"' | '`' => {
                chars.next();
                let mut end = None;
                while let Some((i, d)) = chars.next() {
                    if c == '"' && d == '\\' {
                        chars.next();
                    } else if d == c {
                        end = Some(i);
                        break;
                    }
                }
                let end = end.ok_or_else(|| anyhow!("{text:?}: unterminated string"))?;
                tokens.push(text[start..=end].to_string());
            }
            _ => {
                let mut end = text.len();
                while let Some(&(i, d)) = chars.peek() {
                    if is_space(d) || "()|,".contains(d) || text[i..].starts_with(":=") {
                        end = i;
                        break;
                    }
                    chars.next();
                }
                tokens.push(text[start..end].to_string());
            }
        }
    }
    Ok(tokens)
}

struct Scope<'v> {
    root: &'v Value,
    vars: Vec<(String, Value)>,
}

/// A value, or a field that is not there (Go's `<no value>`).
type Val = Option<Value>;

fn exec(
    nodes: &[Node],
    dot: &Value,
    scope: &mut Scope<'_>,
    out: &mut String,
) -> anyhow::Result<()> {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Print(pipe) => {
                let value = eval_pipeline(pipe, dot, scope)?;
                if pipe.vars.is_empty() {
                    out.push_str(&show(&value));
                }
            }
            Node::Block {
                kind,
                pipe,
                body,
                otherwise,
            } => {
                let depth = scope.vars.len();
                let value = eval(&pipe.commands, dot, scope)?;
                match kind {
                    Block::Range => {
                        let items: Vec<(Value, Value)> = match &value {
                            Some(Value::Array(list)) => list
                                .iter()
                                .enumerate()
                                .map(|(i, v)| (Value::from(i), v.clone()))
                                .collect(),
                            Some(Value::Object(map)) => sorted(map)
                                .map(|(k, v)| (Value::String(k.clone()), v.clone()))
                                .collect(),
                            None | Some(Value::Null) => Vec::new(),
                            Some(other) => {
                                bail!("range over {}: not a list or map", show_value(other))
                            }
                        };
                        if items.is_empty() {
                            exec(otherwise, dot, scope, out)?;
                        }
                        for (key, item) in items {
                            match pipe.vars.as_slice() {
                                [v] => scope.vars.push((v.clone(), item.clone())),
                                [k, v] => {
                                    scope.vars.push((k.clone(), key));
                                    scope.vars.push((v.clone(), item.clone()));
                                }
                                _ => {}
                            }
                            exec(body, &item, scope, out)?;
                            scope.vars.truncate(depth);
                        }
                    }
                    Block::If | Block::With => {
                        let truth = truthy(&value);
                        if let (Some(v), true) = (pipe.vars.first(), truth) {
                            scope
                                .vars
                                .push((v.clone(), value.clone().unwrap_or(Value::Null)));
                        }
                        let inner = value.unwrap_or(Value::Null);
                        match (truth, kind) {
                            (true, Block::With) => exec(body, &inner, scope, out)?,
                            (true, _) => exec(body, dot, scope, out)?,
                            (false, _) => exec(otherwise, dot, scope, out)?,
                        }
                        scope.vars.truncate(depth);
                    }
                }
            }
        }
    }
    Ok(())
}

fn eval_pipeline(pipe: &Pipeline, dot: &Value, scope: &mut Scope<'_>) -> anyhow::Result<Val> {
    let value = eval(&pipe.commands, dot, scope)?;
    // `$v := X` in a plain action declares $v until the end of the enclosing block.
    if let Some(var) = pipe.vars.first() {
        scope
            .vars
            .push((var.clone(), value.clone().unwrap_or(Value::Null)));
    }
    Ok(value)
}

fn eval(commands: &[Command], dot: &Value, scope: &Scope<'_>) -> anyhow::Result<Val> {
    let mut piped: Option<Val> = None;
    for command in commands {
        let value = match command {
            Command::Term(term) => {
                if piped.is_some() {
                    bail!("a value cannot take the pipeline's input; use a function");
                }
                term_value(term, dot, scope)?
            }
            // Go's and/or stop at the deciding operand, unevaluated after it.
            Command::Call(name, terms) if name == "and" || name == "or" => {
                let mut last = None;
                for term in terms {
                    let value = term_value(term, dot, scope)?;
                    let decides = truthy(&value) == (name == "or");
                    last = Some(value);
                    if decides {
                        break;
                    }
                }
                match (last, piped.take()) {
                    (Some(v), _) if truthy(&v) == (name == "or") => v,
                    (_, Some(p)) => p,
                    (Some(v), None) => v,
                    (None, None) => bail!("{name} takes at least 1 argument"),
                }
            }
            Command::Call(name, terms) => {
                let mut args = terms
                    .iter()
                    .map(|t| term_value(t, dot, scope))
                    .collect::<anyhow::Result<Vec<Val>>>()?;
                args.extend(piped.take());
                call(name, &args)?
            }
        };
        piped = Some(value);
    }
    Ok(piped.unwrap_or(None))
}

fn term_value(term: &Term, dot: &Value, scope: &Scope<'_>) -> anyhow::Result<Val> {
    Ok(match term {
        Term::Dot(path) => walk(Some(dot), path),
        Term::Var(name, path) => {
            let base = match name.as_str() {
                "$" => Some(scope.root),
                _ => scope
                    .vars
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v),
            };
            let base = base.ok_or_else(|| anyhow!("undefined variable {name}"))?;
            walk(Some(base), path)
        }
        Term::Literal(value) => Some(value.clone()),
        Term::Sub(pipe, path) => walk(eval(&pipe.commands, dot, scope)?.as_ref(), path),
    })
}

fn walk(value: Option<&Value>, path: &[String]) -> Val {
    path.iter().try_fold(value?, |v, key| v.get(key)).cloned()
}

fn sorted(map: &serde_json::Map<String, Value>) -> impl Iterator<Item = (&String, &Value)> {
    map.iter().collect::<BTreeMap<_, _>>().into_iter()
}

fn truthy(value: &Val) -> bool {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Bool(true)) => true,
    }
}

/// A value as Go's fmt prints it (`%v`); a missing field as `<no value>`.
fn show(value: &Val) -> String {
    value
        .as_ref()
        .map_or_else(|| "<no value>".into(), show_value)
}

fn show_value(value: &Value) -> String {
    match value {
        Value::Null => "<nil>".into(),
        Value::String(s) => s.clone(),
        Value::Array(list) => format!("[{}]", join(list, " ")),
        Value::Object(map) => {
            let items: Vec<String> = sorted(map)
                .map(|(k, v)| format!("{k}:{}", show_value(v)))
                .collect();
            format!("map[{}]", items.join(" "))
        }
        other => other.to_string(),
    }
}

/// The items of a list as Go prints them, with `sep` between.
fn join(list: &[Value], sep: &str) -> String {
    list.iter().map(show_value).collect::<Vec<_>>().join(sep)
}

/// Go's printf for the verbs scripts use: %s %v %d %q %t %%, with a width (`%-20s`).
fn printf(format: &str, args: &[Val]) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&d) = chars.peek() {
            if d == '-' || d.is_ascii_digit() {
                spec.push(d);
                chars.next();
            } else {
                break;
            }
        }
        let verb = chars
            .next()
            .ok_or_else(|| anyhow!("printf {format:?}: % at the end"))?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        let text = match verb {
            's' | 'v' | 'd' | 't' => show(arg),
            'q' => serde_json::to_string(&show(arg))?,
            other => bail!("printf {format:?}: %{other} is not supported"),
        };
        let width: usize = spec.trim_start_matches('-').parse().unwrap_or(0);
        let pad = " ".repeat(width.saturating_sub(text.chars().count()));
        match spec.starts_with('-') {
            true => out.push_str(&(text + &pad)),
            false => out.push_str(&(pad + &text)),
        }
    }
    Ok(out)
}

fn string_arg(name: &str, value: &Val) -> anyhow::Result<String> {
    match value {
        Some(Value::String(s)) => Ok(s.clone()),
        other => bail!("{name}: a string expected, not {}", show(other)),
    }
}

fn call(name: &str, args: &[Val]) -> anyhow::Result<Val> {
    let want = |n: usize| -> anyhow::Result<()> {
        match args.len() == n {
            true => Ok(()),
            false => bail!("{name} takes {n} argument(s), not {}", args.len()),
        }
    };
    Ok(Some(match name {
        "json" => {
            want(1)?;
            Value::String(serde_json::to_string(
                args[0].as_ref().unwrap_or(&Value::Null),
            )?)
        }
        "index" => {
            if args.is_empty() {
                bail!("index takes a value and keys");
            }
            let mut value = args[0].clone();
            for key in &args[1..] {
                value = match (&value, key) {
                    // docker's maps are typed (labels: string to string): a missing key
                    // gives the empty string, not Go's <no value> of untyped data.
                    (Some(Value::Object(map)), Some(Value::String(k))) => Some(
                        map.get(k)
                            .cloned()
                            .unwrap_or_else(|| Value::String(String::new())),
                    ),
                    (None | Some(Value::Null), Some(Value::String(_))) => {
                        Some(Value::String(String::new()))
                    }
                    (Some(Value::Array(list)), Some(Value::Number(i))) => {
                        let i = i.as_u64().and_then(|i| usize::try_from(i).ok());
                        match i.and_then(|i| list.get(i)) {
                            Some(v) => Some(v.clone()),
                            None => bail!("index {}: out of range", show(key)),
                        }
                    }
                    (None | Some(Value::Null), _) => None,
                    (v, k) => bail!("index of {} with {}", show(v), show(k)),
                };
            }
            return Ok(value);
        }
        "join" => {
            want(2)?;
            let sep = string_arg("join", &args[1])?;
            match &args[0] {
                Some(Value::Array(list)) => Value::String(join(list, &sep)),
                None | Some(Value::Null) => Value::String(String::new()),
                other => bail!("join: a list expected, not {}", show(other)),
            }
        }
        "split" => {
            want(2)?;
            let (s, sep) = (
                string_arg("split", &args[0])?,
                string_arg("split", &args[1])?,
            );
            Value::Array(
                s.split(sep.as_str())
                    .map(|p| Value::String(p.into()))
                    .collect(),
            )
        }
        "len" => {
            want(1)?;
            Value::from(match &args[0] {
                Some(Value::Array(a)) => a.len(),
                Some(Value::Object(o)) => o.len(),
                Some(Value::String(s)) => s.len(),
                None | Some(Value::Null) => 0,
                other => bail!("len of {}", show(other)),
            })
        }
        "upper" | "lower" | "title" => {
            want(1)?;
            let s = string_arg(name, &args[0])?;
            Value::String(match name {
                "upper" => s.to_uppercase(),
                "lower" => s.to_lowercase(),
                _ => s
                    .split(' ')
                    .map(|w| {
                        let mut c = w.chars();
                        c.next()
                            .map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            })
        }
        // Go's print puts spaces between operands when neither is a string.
        "print" | "println" => {
            let mut s = String::new();
            for (i, arg) in args.iter().enumerate() {
                let is_str = |v: &Val| matches!(v, Some(Value::String(_)));
                if i > 0 && (name == "println" || !(is_str(arg) || is_str(&args[i - 1]))) {
                    s.push(' ');
                }
                s.push_str(&show(arg));
            }
            if name == "println" {
                s.push('\n');
            }
            Value::String(s)
        }
        "eq" | "ne" => {
            if args.len() < 2 {
                bail!("{name} takes at least 2 arguments");
            }
            let equal = args[1..].iter().any(|a| a == &args[0]);
            Value::Bool(equal == (name == "eq"))
        }
        "not" => {
            want(1)?;
            Value::Bool(!truthy(&args[0]))
        }
        "lt" | "le" | "gt" | "ge" => {
            want(2)?;
            let order = match (&args[0], &args[1]) {
                (Some(Value::Number(a)), Some(Value::Number(b))) => {
                    a.as_f64().partial_cmp(&b.as_f64())
                }
                (Some(Value::String(a)), Some(Value::String(b))) => Some(a.cmp(b)),
                (a, b) => bail!("{name}: cannot compare {} and {}", show(a), show(b)),
            };
            let order = order.ok_or_else(|| anyhow!("{name}: not comparable"))?;
            Value::Bool(match name {
                "lt" => order.is_lt(),
                "le" => order.is_le(),
                "gt" => order.is_gt(),
                _ => order.is_ge(),
            })
        }
        "printf" => {
            let format = match args.first() {
                Some(f) => string_arg("printf", f)?,
                None => bail!("printf takes a format"),
            };
            Value::String(printf(&format, &args[1..])?)
        }
        _ => bail!("function {name:?} not defined"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, value: &Value) -> String {
        Template::parse(template).unwrap().render(value).unwrap()
    }

    #[test]
    fn fields_and_go_printing() {
        let v = serde_json::json!({
            "Id": "sha256:x",
            "Size": 42,
            "Config": {"Env": ["A=1", "B=2"], "User": "", "Labels": {"b": "2", "a.x": "1"}, "Cmd": null}
        });
        assert_eq!(render("{{.Id}} {{ .Size }}.", &v), "sha256:x 42.");
        assert_eq!(render("{{.Config.Env}}", &v), "[A=1 B=2]");
        assert_eq!(render("{{.Config.Labels}}", &v), "map[a.x:1 b:2]");
        assert_eq!(render("{{.Nope}} {{.Config.Cmd}}", &v), "<no value> <nil>");
        assert_eq!(render("{{json .Config.Env}}", &v), r#"["A=1","B=2"]"#);
        assert_eq!(render("{{.Config.Env | json}}", &v), r#"["A=1","B=2"]"#);
        assert_eq!(render(r#"{{index .Config.Labels "a.x"}}"#, &v), "1");
        assert_eq!(render("{{index .Config.Env 1}}", &v), "B=2");
        assert_eq!(render(r#"{{join .Config.Env ","}}"#, &v), "A=1,B=2");
        assert_eq!(
            render("{{len .Config.Env}} {{upper .Id}}", &v),
            "2 SHA256:X"
        );
        assert_eq!(render(r#"{{index (split .Id ":") 1}}"#, &v), "x");
    }

    #[test]
    fn fields_of_a_parenthesized_pipeline() {
        let v = serde_json::json!({
            "Mounts": [{"Source": "/srv", "Mode": {"RW": true}}],
            "Ports": {"80/tcp": [{"HostPort": "8080"}]}
        });
        renders(
            &v,
            &[
                ("{{(index .Mounts 0).Source}}", "/srv"),
                ("{{(index .Mounts 0).Mode.RW}}", "true"),
                (r#"{{(index (index .Ports "80/tcp") 0).HostPort}}"#, "8080"),
                ("{{(index .Mounts 0).Nope}}", "<no value>"),
                // a space makes `.Source` an argument of its own, as in Go
                (
                    "{{print (len .Mounts) .Mounts}}",
                    "1 [map[Mode:map[RW:true] Source:/srv]]",
                ),
            ],
        );
    }

    /// Each template rendered from `v` gives its expected text.
    fn renders(v: &Value, cases: &[(&str, &str)]) {
        for (template, want) in cases {
            assert_eq!(render(template, v), *want, "{template}");
        }
    }

    #[test]
    fn range_if_with_and_variables() {
        let v = serde_json::json!({"Env": ["A=1", "B=2"], "Labels": {"k": "v", "a": "b"}, "On": true, "Name": "n"});
        renders(
            &v,
            &[
                ("{{range .Env}}{{println .}}{{end}}", "A=1\nB=2\n"),
                (
                    "{{range $i, $e := .Env}}{{$i}}={{$e}};{{end}}",
                    "0=A=1;1=B=2;",
                ),
                (
                    "{{range $k, $v := .Labels}}{{$k}}:{{$v}} {{end}}",
                    "a:b k:v ",
                ),
                ("{{range .Nope}}x{{else}}none{{end}}", "none"),
                ("{{range .Env}}{{$.Name}}{{end}}", "nn"),
                (
                    "{{if .On}}yes{{else}}no{{end}} {{if not .On}}yes{{else}}no{{end}}",
                    "yes no",
                ),
                (
                    r#"{{if eq .Name "m"}}m{{else if eq .Name "n"}}n{{else}}?{{end}}"#,
                    "n",
                ),
                (
                    "{{with .Labels}}{{.k}}{{end}}{{with .Nope}}x{{else}}-{{end}}",
                    "v-",
                ),
                ("{{$n := .Name}}{{range .Env}}{{$n}}{{end}}", "nn"),
                ("a  {{- .Name -}}  b {{/* note */}}c", "anb c"),
            ],
        );
    }

    /// Review 12: what docker users write and Go does.
    #[test]
    fn as_docker_and_go_do() {
        let v = serde_json::json!({"L": {"a": "1"}, "E": [], "N": null, "S": 3, "Name": "web"});
        renders(
            &v,
            &[
                // docker's label maps are typed: a missing label is empty, not <no value>
                (r#"[{{index .L "b"}}][{{index .N "b"}}]"#, "[][]"),
                // and/or stop at the deciding operand
                ("{{if and .E (index .E 0)}}x{{else}}-{{end}}", "-"),
                (
                    "{{or .N .Name}} {{and .S .Name}} {{.E | or .N}}",
                    "web web []",
                ),
                ("a\n{{-\n.Name\t-}}\n b", "awebb"),
                ("{{$n:=.Name}}{{$n}}", "web"),
                ("{{if eq .S 1}}1{{else  if  eq .S 3}}3{{end}}", "3"),
                (
                    r#"{{printf "%-5s|%3d|%q" .Name .S .Name}}"#,
                    r#"web  |  3|"web""#,
                ),
                (
                    r#"{{if gt .S 2}}big{{end}}{{if lt .Name "x"}} lt{{end}}"#,
                    "big lt",
                ),
                ("{{len .N}} {{len .E}}", "0 0"),
            ],
        );
    }

    #[test]
    fn bad_templates_fail_with_the_template_named() {
        let bad = [
            "{{.Id",
            "{{range .X}}",
            "{{end}}",
            "{{if .X}}{{else}}{{else}}{{end}}",
            "{{nosuch .X}}",
            "{{\"open}}",
            "{{template \"x\"}}",
            "{{.A .B}}",
            "{{(index .X 0}}",
            "{{index .X 0)}}",
        ];
        for template in bad {
            let err = Template::parse(template).expect_err(template);
            assert!(
                format!("{err:#}").contains(&format!("{template:?}")),
                "{template}: {err:#}"
            );
        }
        let x = serde_json::json!({"X": [1]});
        let err = Template::parse("{{index .X 5}}")
            .unwrap()
            .render(&x)
            .unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = Template::parse("{{range .X}}{{upper .}}{{end}}")
            .unwrap()
            .render(&x)
            .unwrap_err();
        assert!(err.to_string().contains("string expected"), "{err}");
    }
}
