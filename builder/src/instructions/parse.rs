//! Parser nodes -> typed instructions: checks each instruction's flags and argument shape
//! and reports what is wrong at `file:line:column` with the text at fault.

use super::words::{Word, split_words};
use super::*;
use crate::error::{Error, Result};
use crate::parser::{Ast, Flag, Node};

const KEYWORDS: &[&str] = &[
    "from",
    "run",
    "cmd",
    "entrypoint",
    "copy",
    "add",
    "arg",
    "env",
    "label",
    "maintainer",
    "expose",
    "volume",
    "user",
    "workdir",
    "shell",
    "stopsignal",
    "healthcheck",
    "onbuild",
];

/// Every node of `ast` as a typed step.
pub fn instructions(ast: &Ast) -> Result<Vec<Step>> {
    ast.nodes
        .iter()
        .map(|node| instruction(node, &ast.file, ast.directives.escape))
        .collect()
}

struct Cx<'a> {
    node: &'a Node,
    file: &'a str,
    escape: char,
}

impl Cx<'_> {
    fn error_at(&self, offset: usize, message: impl Into<String>) -> Error {
        Error::syntax(self.file, self.node.pos_at(offset), message)
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::syntax(self.file, self.node.pos, message)
    }

    fn words(&self) -> Result<Vec<Word>> {
        split_words(&self.node.args, self.escape).map_err(|offset| {
            self.error_at(
                offset,
                format!("unterminated quote in {:?}", &self.node.args[offset..]),
            )
        })
    }

    fn keyword(&self) -> String {
        self.node.keyword.to_ascii_uppercase()
    }

    /// Checks flags against `allowed` (name, takes a value, may repeat).
    fn check_flags(&self, allowed: &[(&str, bool)]) -> Result<()> {
        let mut seen: Vec<&str> = Vec::new();
        for flag in &self.node.flags {
            let Some(&(_, takes_value)) = allowed.iter().find(|(name, _)| *name == flag.name)
            else {
                return Err(self.flag_error(
                    flag,
                    format!("unknown flag --{} for {}", flag.name, self.keyword()),
                ));
            };
            if takes_value && flag.value.as_deref().is_none_or(str::is_empty) {
                return Err(self.flag_error(
                    flag,
                    format!("flag --{} for {} needs a value", flag.name, self.keyword()),
                ));
            }
            let repeatable = matches!(flag.name.as_str(), "mount" | "exclude");
            if !repeatable && seen.contains(&flag.name.as_str()) {
                return Err(self.flag_error(flag, format!("flag --{} given twice", flag.name)));
            }
            seen.push(&flag.name);
        }
        Ok(())
    }

    fn flag_error(&self, flag: &Flag, message: String) -> Error {
        Error::syntax(self.file, flag.pos, message)
    }

    fn flag(&self, name: &str) -> Option<String> {
        self.node
            .flags
            .iter()
            .find(|f| f.name == name)
            .and_then(|f| f.value.clone())
    }

    fn flags(&self, name: &str) -> Vec<&Flag> {
        self.node.flags.iter().filter(|f| f.name == name).collect()
    }

    fn bool_flag(&self, name: &str) -> Result<bool> {
        match self.node.flags.iter().find(|f| f.name == name) {
            None => Ok(false),
            Some(flag) => match flag.value.as_deref() {
                None | Some("true") => Ok(true),
                Some("false") => Ok(false),
                Some(other) => Err(self.flag_error(
                    flag,
                    format!("flag --{name} takes true or false, not {other:?}"),
                )),
            },
        }
    }

    fn require_args(&self) -> Result<()> {
        if self.node.args.trim().is_empty() && self.node.heredocs.is_empty() {
            return Err(self.error(format!("{} requires at least one argument", self.keyword())));
        }
        Ok(())
    }

    fn command(&self) -> Command {
        match &self.node.json {
            Some(list) => Command::Exec(list.clone()),
            None => Command::Shell(self.node.args.clone()),
        }
    }
}

/// One node as a typed step.
pub fn instruction(node: &Node, file: &str, escape: char) -> Result<Step> {
    let cx = Cx { node, file, escape };
    if !KEYWORDS.contains(&node.keyword.as_str()) {
        return Err(cx.error(format!("unknown instruction {:?}", node.keyword_original)));
    }
    let instruction =
        match node.keyword.as_str() {
            "from" => from(&cx)?,
            "run" => run(&cx)?,
            "cmd" | "entrypoint" => {
                cx.check_flags(&[])?;
                if node.json.is_none() {
                    cx.require_args()?;
                }
                if node.keyword == "cmd" {
                    Instruction::Cmd(cx.command())
                } else {
                    Instruction::Entrypoint(cx.command())
                }
            }
            "copy" | "add" => copy(&cx)?,
            "arg" => arg(&cx)?,
            "env" => Instruction::Env(key_values(&cx)?),
            "label" => Instruction::Label(key_values(&cx)?),
            "maintainer" => {
                cx.check_flags(&[])?;
                cx.require_args()?;
                Instruction::Maintainer(node.args.clone())
            }
            "expose" | "volume" => {
                cx.check_flags(&[])?;
                cx.require_args()?;
                let list = match &node.json {
                    Some(list) => list.clone(),
                    None => cx.words()?.into_iter().map(|w| w.text).collect(),
                };
                if node.keyword == "expose" {
                    Instruction::Expose(list)
                } else {
                    Instruction::Volume(list)
                }
            }
            "user" | "workdir" | "stopsignal" => {
                cx.check_flags(&[])?;
                cx.require_args()?;
                let words = cx.words()?;
                if node.keyword != "workdir" && words.len() != 1 {
                    return Err(cx.error_at(
                        words[1].offset,
                        format!(
                            "{} takes exactly one argument, found {:?}",
                            cx.keyword(),
                            words[1].text
                        ),
                    ));
                }
                let value = node.args.trim().to_string();
                match node.keyword.as_str() {
                    "user" => Instruction::User(value),
                    "workdir" => Instruction::Workdir(value),
                    _ => Instruction::StopSignal(value),
                }
            }
            "shell" => {
                cx.check_flags(&[])?;
                match &node.json {
                    Some(list) if !list.is_empty() => Instruction::Shell(list.clone()),
                    _ => return Err(cx.error_at(
                        0,
                        format!(
                            "SHELL requires a JSON array such as [\"/bin/sh\", \"-c\"], found {:?}",
                            node.args
                        ),
                    )),
                }
            }
            "healthcheck" => healthcheck(&cx)?,
            "onbuild" => onbuild(&cx)?,
            _ => return Err(cx.error(format!("unknown instruction {:?}", node.keyword_original))),
        };
    Ok(Step {
        pos: node.pos,
        end_line: node.end_line,
        original: node.original.clone(),
        instruction,
        segments: node.segments().to_vec(),
    })
}

fn from(cx: &Cx<'_>) -> Result<Instruction> {
    cx.check_flags(&[("platform", true)])?;
    cx.require_args()?;
    let words = cx.words()?;
    let (image, alias) = match words.as_slice() {
        [image] => (image, None),
        [image, as_word, name] if as_word.text.eq_ignore_ascii_case("as") => (image, Some(name)),
        [_, as_word, ..] if !as_word.text.eq_ignore_ascii_case("as") => {
            return Err(cx.error_at(
                as_word.offset,
                format!(
                    "FROM expects \"AS\" after the image, found {:?}",
                    as_word.text
                ),
            ));
        }
        _ => {
            return Err(cx.error_at(
                0,
                format!("FROM takes IMAGE [AS NAME], found {:?}", cx.node.args),
            ));
        }
    };
    let alias = match alias {
        None => None,
        Some(name) => {
            let lower = name.text.to_ascii_lowercase();
            let valid = lower.starts_with(|c: char| c.is_ascii_alphabetic())
                && lower
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid {
                return Err(cx.error_at(name.offset, format!("invalid stage name {:?}: use letters, digits, '-', '_' and '.', starting with a letter", name.text)));
            }
            Some(lower)
        }
    };
    Ok(Instruction::From(From {
        platform: cx.flag("platform"),
        image: image.text.clone(),
        alias,
    }))
}

fn run(cx: &Cx<'_>) -> Result<Instruction> {
    cx.check_flags(&[("mount", true), ("network", true), ("security", true)])?;
    cx.require_args()?;
    let network = match cx.node.flags.iter().find(|f| f.name == "network") {
        None => Network::Default,
        Some(flag) => match flag.value.as_deref() {
            Some("default") => Network::Default,
            Some("none") => Network::None,
            Some("host") => Network::Host,
            other => {
                return Err(cx.flag_error(
                    flag,
                    format!(
                        "invalid --network {:?}: use default, none or host",
                        other.unwrap_or("")
                    ),
                ));
            }
        },
    };
    if let Some(flag) = cx.node.flags.iter().find(|f| f.name == "security")
        && flag.value.as_deref() != Some("sandbox")
    {
        return Err(cx.flag_error(
            flag,
            format!(
                "--security={} is not supported (only sandbox)",
                flag.value.as_deref().unwrap_or("")
            ),
        ));
    }
    let mut mounts = Vec::new();
    let mut agents = 0;
    for flag in cx.flags("mount") {
        let mut mount = mount(cx, flag)?;
        if mount.kind == MountKind::Ssh {
            // BuildKit's default: the Nth ssh mount of a RUN goes to ssh_agent.N.
            if mount.target.is_empty() {
                mount.target = format!("/run/buildkit/ssh_agent.{agents}");
            }
            agents += 1;
        }
        mounts.push(mount);
    }
    let command = if cx.node.heredocs.is_empty() {
        cx.command()
    } else {
        Command::Shell(cx.node.args.clone())
    };
    Ok(Instruction::Run(Run {
        command,
        heredocs: cx.node.heredocs.clone(),
        mounts,
        network,
    }))
}

/// `--mount=type=cache,target=/root/.cache,id=x,sharing=locked,...` (BuildKit's fields).
fn mount(cx: &Cx<'_>, flag: &Flag) -> Result<Mount> {
    let text = flag.value.clone().unwrap_or_default();
    let mut kind = MountKind::Bind;
    let mut mount = Mount {
        kind,
        target: String::new(),
        source: None,
        from: None,
        id: None,
        readonly: false,
        sharing: Sharing::Shared,
        mode: None,
        uid: None,
        gid: None,
        size: None,
        required: false,
        env: None,
    };
    let mut readonly: Option<bool> = None;
    for field in text.split(',') {
        let (key, value) = match field.split_once('=') {
            Some((key, value)) => (
                key.trim().to_ascii_lowercase(),
                Some(value.trim().to_string()),
            ),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let need = |value: Option<String>| {
            value.ok_or_else(|| {
                cx.flag_error(
                    flag,
                    format!("--mount field {key:?} needs a value in {text:?}"),
                )
            })
        };
        let number = |value: Option<String>, radix: u32| -> Result<u64> {
            let value = need(value)?;
            u64::from_str_radix(&value, radix).map_err(|_| {
                cx.flag_error(
                    flag,
                    format!("--mount field {key:?}: {value:?} is not a number"),
                )
            })
        };
        match key.as_str() {
            "type" => {
                kind = match need(value)?.as_str() {
                    "bind" => MountKind::Bind,
                    "cache" => MountKind::Cache,
                    "tmpfs" => MountKind::Tmpfs,
                    "secret" => MountKind::Secret,
                    "ssh" => MountKind::Ssh,
                    other => {
                        return Err(cx.flag_error(
                            flag,
                            format!(
                                "unsupported --mount type {other:?}: use bind, cache, tmpfs, secret or ssh"
                            ),
                        ));
                    }
                }
            }
            "target" | "dst" | "destination" => mount.target = need(value)?,
            "source" | "src" => mount.source = Some(need(value)?),
            "from" => mount.from = Some(need(value)?),
            "id" => mount.id = Some(need(value)?),
            "ro" | "readonly" => readonly = Some(value.as_deref() != Some("false")),
            "rw" | "readwrite" => readonly = Some(value.as_deref() == Some("false")),
            "sharing" => {
                mount.sharing =
                    match need(value)?.as_str() {
                        "shared" => Sharing::Shared,
                        "private" => Sharing::Private,
                        "locked" => Sharing::Locked,
                        other => return Err(cx.flag_error(
                            flag,
                            format!(
                                "invalid --mount sharing {other:?}: use shared, private or locked"
                            ),
                        )),
                    }
            }
            "mode" => mount.mode = Some(number(value, 8)? as u32),
            "uid" => mount.uid = Some(number(value, 10)? as u32),
            "gid" => mount.gid = Some(number(value, 10)? as u32),
            "size" => mount.size = Some(number(value, 10)?),
            "required" => mount.required = value.as_deref() != Some("false"),
            "env" => mount.env = Some(need(value)?),
            _ => {
                return Err(
                    cx.flag_error(flag, format!("unknown --mount field {key:?} in {text:?}"))
                );
            }
        }
    }
    mount.kind = kind;
    if kind == MountKind::Secret {
        // BuildKit's defaults: the id is the target's file name, the file goes to
        // /run/secrets/<id> unless the secret is wanted in an env variable only.
        if mount.id.is_none() {
            let name = mount.target.rsplit('/').next().unwrap_or_default();
            if name.is_empty() {
                return Err(
                    cx.flag_error(flag, format!("--mount=type=secret needs id= in {text:?}"))
                );
            }
            mount.id = Some(name.to_string());
        }
        if mount.target.is_empty() && mount.env.is_none() {
            mount.target = format!("/run/secrets/{}", mount.id.as_deref().unwrap_or_default());
        }
        mount.readonly = true;
        return Ok(mount);
    }
    if kind == MountKind::Ssh {
        // The target defaults per RUN (the caller numbers the agents).
        mount.id.get_or_insert_with(|| "default".to_string());
        return Ok(mount);
    }
    if mount.target.is_empty() {
        return Err(cx.flag_error(flag, format!("--mount needs target=PATH in {text:?}")));
    }
    // bind mounts are read-only unless rw is given; caches are writable
    mount.readonly = readonly.unwrap_or(kind == MountKind::Bind);
    Ok(mount)
}

fn copy(cx: &Cx<'_>) -> Result<Instruction> {
    let add = cx.node.keyword == "add";
    if add {
        cx.check_flags(&[
            ("chown", true),
            ("chmod", true),
            ("link", false),
            ("exclude", true),
            ("checksum", true),
        ])?;
    } else {
        cx.check_flags(&[
            ("from", true),
            ("chown", true),
            ("chmod", true),
            ("link", false),
            ("parents", false),
            ("exclude", true),
        ])?;
    }
    cx.require_args()?;
    let words: Vec<String> = match &cx.node.json {
        Some(list) => list.clone(),
        None => cx.words()?.into_iter().map(|w| w.text).collect(),
    };
    if words.len() < 2 {
        return Err(cx.error_at(
            0,
            format!(
                "{} requires at least a source and a destination, found {:?}",
                cx.keyword(),
                cx.node.args
            ),
        ));
    }
    let mut heredocs = cx.node.heredocs.iter();
    let mut sources = Vec::new();
    for word in &words[..words.len() - 1] {
        if word.starts_with("<<")
            && let Some(doc) = heredocs.next()
        {
            sources.push(Source::Heredoc(doc.clone()));
            continue;
        }
        sources.push(Source::Path(word.clone()));
    }
    let dest = words[words.len() - 1].clone();
    if let Some(flag) = cx.node.flags.iter().find(|f| f.name == "chmod") {
        let value = flag.value.as_deref().unwrap_or("");
        if !value.contains('$')
            && let Err(why) = crate::chmod::Chmod::parse(value)
        {
            return Err(cx.flag_error(
                flag,
                format!(
                    "invalid --chmod {value:?}: {why}; use an octal mode such as 755 or a symbolic one such as u+x,go-w"
                ),
            ));
        }
    }
    let copy = Copy {
        sources,
        dest,
        from: cx.flag("from"),
        chown: cx.flag("chown"),
        chmod: cx.flag("chmod"),
        link: cx.bool_flag("link")?,
        parents: !add && cx.bool_flag("parents")?,
        excludes: cx
            .flags("exclude")
            .iter()
            .filter_map(|f| f.value.clone())
            .collect(),
        checksum: cx.flag("checksum"),
    };
    Ok(if add {
        Instruction::Add(copy)
    } else {
        Instruction::Copy(copy)
    })
}

fn arg(cx: &Cx<'_>) -> Result<Instruction> {
    cx.check_flags(&[])?;
    cx.require_args()?;
    let mut decls = Vec::new();
    for word in cx.words()? {
        let (name, default) = match word.text.split_once('=') {
            Some((name, default)) => (name.to_string(), Some(default.to_string())),
            None => (word.text.clone(), None),
        };
        if !valid_name(&name) {
            return Err(cx.error_at(word.offset, format!("invalid ARG name {name:?}")));
        }
        decls.push(ArgDecl { name, default });
    }
    Ok(Instruction::Arg(decls))
}

/// `ENV`/`LABEL`: `k=v k2="v 2"` or the legacy single-pair form `ENV k some value`.
fn key_values(cx: &Cx<'_>) -> Result<Vec<KeyValue>> {
    cx.check_flags(&[])?;
    cx.require_args()?;
    let words = cx.words()?;
    let keyword = cx.keyword();
    if !words[0].text.contains('=') {
        let key = words[0].text.clone();
        let Some(second) = words.get(1) else {
            return Err(cx.error_at(
                0,
                format!("{keyword} {key:?} has no value: write {key}=VALUE"),
            ));
        };
        let value = cx.node.args[second.offset..].trim().to_string();
        return Ok(vec![KeyValue { key, value }]);
    }
    let mut pairs = Vec::new();
    for word in words {
        let Some((key, value)) = word.text.split_once('=') else {
            return Err(cx.error_at(
                word.offset,
                format!("{keyword} expects key=value, found {:?}", word.text),
            ));
        };
        if key.is_empty() {
            return Err(cx.error_at(
                word.offset,
                format!("{keyword} name can not be blank in {:?}", word.text),
            ));
        }
        pairs.push(KeyValue {
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    Ok(pairs)
}

fn healthcheck(cx: &Cx<'_>) -> Result<Instruction> {
    cx.check_flags(&[
        ("interval", true),
        ("timeout", true),
        ("start-period", true),
        ("start-interval", true),
        ("retries", true),
    ])?;
    cx.require_args()?;
    let args = cx.node.args.trim();
    let (first, rest) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
    if first.eq_ignore_ascii_case("none") {
        if !rest.trim().is_empty() || !cx.node.flags.is_empty() {
            return Err(cx.error_at(0, "HEALTHCHECK NONE takes no other arguments"));
        }
        return Ok(Instruction::Healthcheck(Healthcheck::None));
    }
    if !first.eq_ignore_ascii_case("cmd") {
        return Err(cx.error_at(
            0,
            format!("HEALTHCHECK expects CMD or NONE, found {first:?}"),
        ));
    }
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(cx.error_at(0, "HEALTHCHECK CMD requires a command"));
    }
    let test = match serde_json::from_str::<Vec<String>>(rest) {
        Ok(list) if rest.starts_with('[') => Command::Exec(list),
        _ => Command::Shell(rest.to_string()),
    };
    let duration = |name: &str| -> Result<Option<u64>> {
        let Some(flag) = cx.node.flags.iter().find(|f| f.name == name) else {
            return Ok(None);
        };
        let value = flag.value.as_deref().unwrap_or("");
        match parse_duration(value) {
            // 0 is the default; anything else is at least docker's minimum, a millisecond
            Some(nanos) if nanos == 0 || nanos >= 1_000_000 => Ok(Some(nanos)),
            Some(_) => {
                Err(cx.flag_error(flag, format!("--{name} {value:?} cannot be less than 1ms")))
            }
            None => Err(cx.flag_error(
                flag,
                format!("invalid --{name} {value:?}: use a duration such as 30s or 1m30s"),
            )),
        }
    };
    let retries =
        match cx.node.flags.iter().find(|f| f.name == "retries") {
            None => None,
            Some(flag) => Some(flag.value.as_deref().unwrap_or("").parse::<u32>().map_err(
                |_| {
                    cx.flag_error(
                        flag,
                        format!(
                            "invalid --retries {:?}: use a whole number",
                            flag.value.as_deref().unwrap_or("")
                        ),
                    )
                },
            )?),
        };
    Ok(Instruction::Healthcheck(Healthcheck::Check {
        test,
        interval: duration("interval")?,
        timeout: duration("timeout")?,
        start_period: duration("start-period")?,
        start_interval: duration("start-interval")?,
        retries,
    }))
}

/// Go-style durations: `1h2m3s`, `500ms`, `1.5s` -> nanoseconds.
pub(crate) fn parse_duration(text: &str) -> Option<u64> {
    if text == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Some(total as u64)
}

fn onbuild(cx: &Cx<'_>) -> Result<Instruction> {
    cx.check_flags(&[])?;
    cx.require_args()?;
    let inner = cx.node.args.trim();
    let keyword = inner
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match keyword.as_str() {
        "onbuild" => {
            return Err(cx.error_at(0, "chaining ONBUILD via ONBUILD ONBUILD is not allowed"));
        }
        "from" | "maintainer" => {
            return Err(cx.error_at(
                0,
                format!(
                    "{} is not allowed as an ONBUILD trigger",
                    keyword.to_ascii_uppercase()
                ),
            ));
        }
        _ => {}
    }
    // The trigger must itself be a valid instruction.
    let ast = crate::parser::parse(inner, cx.file)
        .map_err(|_| cx.error_at(0, format!("invalid ONBUILD trigger {inner:?}")))?;
    if let Some(node) = ast.nodes.first() {
        instruction(node, cx.file, cx.escape).map_err(|e| match e {
            Error::Syntax { message, .. } => {
                cx.error_at(0, format!("invalid ONBUILD trigger: {message}"))
            }
            other => other,
        })?;
    }
    Ok(Instruction::Onbuild(inner.to_string()))
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_go_syntax() {
        assert_eq!(parse_duration("30s"), Some(30_000_000_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_duration("10"), None);
    }
}
