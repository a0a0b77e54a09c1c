//! One config file per process: `--config FILE`, a TOML file whose keys
//! are the long options' names, equivalent to the command line.
//!
//! ```toml
//! link = "unix:/run/leapio/hostd.sock"        # --link unix:...
//! ctrl = ["name=vm0,sock=/run/leapio/vm0.sock"] # a repeated option: an array
//! handover = true                             # a flag: a boolean
//! pollers = 2                                 # numbers: integers or strings
//! ```
//!
//! The command line overrides the file: an option given there replaces the
//! file's value entirely (a list included). Hidden options and `--config`
//! itself are not accepted in the file. Every error names the file, the
//! line and the key (`FILE:LINE: key "K": ...`): TOML syntax, unknown
//! keys, wrong types and values the option's own parser rejects.
//!
//! How: the command line is parsed alone first (errors ignored: a required
//! option may be in the file) to learn `--config` and which options it
//! gave; the file's other keys become `--key=value` arguments placed before
//! the command line's, and the whole is parsed as usual, so a file's value
//! goes through exactly what the same value on the command line would.
//!
//! [`Effective`] is the configuration the process runs with (file and
//! command line merged), rendered back as such a file: the options given
//! (in either) as keys, the others' defaults as comments. The control
//! socket answers it as `config` ([`crate::control::with_config`]).

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use toml::{Spanned, Value};

/// The option naming the file.
const CONFIG: &str = "config";

/// The configuration a process runs with: its file (if any) and command
/// line merged, as a TOML file with the same keys.
#[derive(Clone, Debug, Default)]
pub struct Effective {
    /// The file given with `--config`.
    pub file: Option<PathBuf>,
    /// The rendering: the options given as keys (in the command's order),
    /// the others' defaults as comments.
    pub toml: String,
}

/// Why the options could not be parsed.
#[derive(Debug)]
pub enum Error {
    /// The command line (or `--help`, `--version`): clap's own report.
    Clap(clap::Error),
    /// Clap's report on the command line and a file's options together,
    /// about no one key of the file (a missing option, say).
    Merged(clap::Error, PathBuf),
    /// The file: one line per problem, each `FILE[:LINE][: key "K"]: ...`.
    File(Vec<String>),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Clap(e) => write!(f, "{}", e.render()),
            Error::Merged(e, file) => write!(f, "{}{}", e.render(), note(file)),
            Error::File(lines) => write!(f, "{}", lines.join("\n")),
        }
    }
}

impl Error {
    /// Report as the process `prog` and exit: clap's way for the command
    /// line (status 0 for `--help`), `prog: ` before each line of a file's
    /// problems and status 2 (a usage error, as clap's).
    pub fn exit(&self, prog: &str) -> ! {
        match self {
            Error::Clap(e) => e.exit(),
            Error::Merged(e, file) => {
                let _ = e.print();
                eprintln!("{prog}: {}", note(file));
                std::process::exit(e.exit_code())
            }
            Error::File(lines) => {
                for l in lines {
                    eprintln!("{prog}: {l}");
                }
                std::process::exit(2)
            }
        }
    }
}

fn note(file: &Path) -> String {
    format!("(the options included those of {})", file.display())
}

/// [`parse`], or report and exit (see [`Error::exit`]).
pub fn parse_or_exit<P: clap::Parser>(
    argv: impl IntoIterator<Item = impl Into<OsString>>,
) -> (P, Effective) {
    parse(argv).unwrap_or_else(|e| e.exit(P::command().get_name()))
}

/// Parse `argv` (the program's name first) as `P`'s options, with
/// `--config FILE` (added to `P`'s) read and merged under the command line.
pub fn parse<P: clap::Parser>(
    argv: impl IntoIterator<Item = impl Into<OsString>>,
) -> Result<(P, Effective), Error> {
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let cmd = P::command().arg(
        Arg::new(CONFIG)
            .long(CONFIG)
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help(
                "Read options from this TOML file: the keys are the long options' names \
                 (a repeated option an array, a flag a boolean); the command line overrides it",
            ),
    );
    // The command line alone: which options it gives, and the file.
    let given = cmd
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&argv)
        .map_err(Error::Clap)?;
    let file = given.get_one::<PathBuf>(CONFIG).cloned();
    let mut merged = argv.clone();
    let (mut text, mut from_file) = (String::new(), Vec::new());
    if let Some(path) = &file {
        text = std::fs::read_to_string(path)
            .map_err(|e| Error::File(vec![format!("{}: {e}", path.display())]))?;
        let args;
        (args, from_file) = file_args(&cmd, &given, path, &text)?;
        // Before the command line's: its own order and meaning stay.
        merged.splice(
            1.min(merged.len())..,
            args.into_iter().chain(argv.into_iter().skip(1)),
        );
    }
    let mut matches = cmd
        .clone()
        .try_get_matches_from(&merged)
        .map_err(|e| blame(e, file.as_deref(), &text, &from_file))?;
    let effective = Effective {
        toml: render(&cmd, &matches, file.as_deref()),
        file,
    };
    let parsed =
        <P as clap::FromArgMatches>::from_arg_matches_mut(&mut matches).map_err(Error::Clap)?;
    Ok((parsed, effective))
}

/// A key of the file turned into arguments: its name, its line and where
/// its value is in the text.
struct FileKey {
    key: String,
    line: usize,
    value: std::ops::Range<usize>,
}

/// The arguments standing for the file's keys that the command line does
/// not give, and those keys; or every problem found in the file.
fn file_args(
    cmd: &Command,
    given: &ArgMatches,
    path: &Path,
    text: &str,
) -> Result<(Vec<OsString>, Vec<FileKey>), Error> {
    let at = |offset: usize| format!("{}:{}", path.display(), line_of(text, offset));
    let table: BTreeMap<Spanned<String>, Spanned<Value>> = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let key = key_on_line(text, offset)
            .map(|k| format!(" key \"{k}\":"))
            .unwrap_or_default();
        let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        Error::File(vec![format!("{}:{key} {msg}", at(offset))])
    })?;
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    let (mut args, mut keys, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in entries {
        let line = line_of(text, key.span().start);
        let (key, raw) = (key.get_ref(), value.get_ref());
        let mut problem = |msg: String| {
            problems.push(format!("{}:{line}: key \"{key}\": {msg}", path.display()));
        };
        if key == CONFIG {
            problem("not accepted in a config file (only on the command line)".into());
            continue;
        }
        let Some(arg) = option(cmd, key) else {
            problem(match suggest(cmd, key) {
                Some(s) => format!("unknown option (did you mean \"{s}\"?)"),
                None => "unknown option".into(),
            });
            continue;
        };
        // The key's arguments (its type checked even when the command
        // line overrides it).
        let flag = format!("--{key}");
        let mut these: Vec<OsString> = Vec::new();
        match arg.get_action() {
            a if !a.takes_values() => match raw {
                Value::Boolean(true) => these.push(flag.into()),
                Value::Boolean(false) => {}
                other => problem(format!(
                    "expected a boolean (true or false), got {}",
                    kind(other)
                )),
            },
            ArgAction::Append => match raw {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        match scalar(item) {
                            Some(s) => these.push(format!("{flag}={s}").into()),
                            None => problem(format!(
                                "element {}: expected a string or a number, got {}",
                                i + 1,
                                kind(item)
                            )),
                        }
                    }
                }
                other => problem(format!(
                    "expected an array of strings (a repeated option), got {}",
                    kind(other)
                )),
            },
            _ => match scalar(raw) {
                Some(s) => these.push(format!("{flag}={s}").into()),
                None => problem(format!("expected a string or a number, got {}", kind(raw))),
            },
        }
        if matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        args.extend(these);
        keys.push(FileKey {
            key: key.clone(),
            line,
            value: value.span(),
        });
    }
    if problems.is_empty() {
        Ok((args, keys))
    } else {
        Err(Error::File(problems))
    }
}

/// The option a file's key names: a visible option with that long name.
fn option<'a>(cmd: &'a Command, key: &str) -> Option<&'a Arg> {
    cmd.get_arguments().find(|a| {
        a.get_long() == Some(key)
            && !a.is_hide_set()
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    })
}

/// The nearest option's name to a misspelt key, if near enough.
fn suggest<'a>(cmd: &'a Command, key: &str) -> Option<&'a str> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(Arg::get_long)
        .filter(|l| *l != CONFIG)
        .map(|l| (distance(l, key), l))
        .filter(|(d, l)| *d <= 2.max(l.len() / 4))
        .min()
        .map(|(_, l)| l)
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// A string, an integer or a float as the command line would give it.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

/// The key of a `key = ...` line at `offset`, for a syntax error there.
fn key_on_line(text: &str, offset: usize) -> Option<&str> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(start..)?.lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    .then_some(key)
}

/// Clap's error for the merged arguments: when it is about an option that
/// came from the file, the file's line and key with clap's reason;
/// otherwise clap's own.
fn blame(e: clap::Error, file: Option<&Path>, text: &str, from_file: &[FileKey]) -> Error {
    use clap::error::{ContextKind, ContextValue};
    let Some(path) = file else {
        return Error::Clap(e);
    };
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return Error::Merged(e, path.to_path_buf());
    };
    let long: String = arg
        .trim_start_matches('-')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let Some(k) = from_file.iter().find(|k| k.key == long) else {
        return Error::Merged(e, path.to_path_buf());
    };
    // The line of the offending element of a list written over several.
    let mut line = k.line;
    if let Some(ContextValue::String(v)) = e.get(ContextKind::InvalidValue) {
        let value = text.get(k.value.clone()).unwrap_or_default();
        if let Some(i) = [format!("\"{v}\""), format!("'{v}'")]
            .iter()
            .find_map(|q| value.find(q.as_str()))
        {
            line = line_of(text, k.value.start + i);
        }
    }
    // Clap's first paragraph, without its "error: " and the option's
    // spelling (the key says which).
    let rendered = e.render().to_string();
    let first = rendered.split("\n\n").next().unwrap_or_default();
    let msg = first
        .trim_start_matches("error: ")
        .replace(&format!(" for '{arg}'"), "");
    let msg = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    Error::File(vec![format!(
        "{}:{line}: key \"{}\": {msg}",
        path.display(),
        k.key
    )])
}

/// The options with a value in `m`, as a config file for `cmd`: those
/// given (file or command line) as keys, the defaults as comments.
fn render(cmd: &Command, m: &ArgMatches, file: Option<&Path>) -> String {
    let mut out = format!(
        "# {}: the running configuration ({}).\n\
         # Options at their defaults are shown as comments.\n",
        cmd.get_name(),
        file.map_or("the command line".into(), |f| format!(
            "{} and the command line over it",
            f.display()
        )),
    );
    for arg in cmd.get_arguments() {
        let Some(key) = arg.get_long() else { continue };
        let id = arg.get_id().as_str();
        if key == CONFIG || option(cmd, key).is_none() {
            continue;
        }
        let prefix = match m.value_source(id) {
            Some(ValueSource::DefaultValue) => "# ",
            Some(_) => "",
            None => continue,
        };
        let value = if !arg.get_action().takes_values() {
            toml::Value::Boolean(prefix.is_empty()).to_string()
        } else {
            let raw: Vec<String> = m
                .get_raw(id)
                .into_iter()
                .flatten()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            match (arg.get_action(), raw.as_slice()) {
                (ArgAction::Append, [one]) => format!("[{}]", value(one)),
                (ArgAction::Append, many) => {
                    let items: Vec<String> = many
                        .iter()
                        .map(|v| format!("    {},\n", value(v)))
                        .collect();
                    format!("[\n{}]", items.concat())
                }
                (_, [one, ..]) => value(one),
                (_, []) => continue,
            }
        };
        out.push_str(&format!("{prefix}{key} = {value}\n"));
    }
    out
}

/// A TOML value for one of an option's values: an integer when that is
/// what it reads as, else a string.
fn value(v: &str) -> String {
    match v.parse::<i64>() {
        Ok(n) if n.to_string() == v => n.to_string(),
        _ => Value::String(v.to_string()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Write;

    /// Options of every kind the daemons use.
    #[derive(Parser, Debug)]
    #[command(name = "demo")]
    struct Demo {
        /// Required unless given by the file.
        #[arg(long)]
        link: String,
        #[arg(long = "ctrl", value_name = "SPEC")]
        ctrls: Vec<String>,
        #[arg(long, default_value_t = 1)]
        pollers: usize,
        #[arg(long)]
        handover: bool,
        #[arg(long, value_delimiter = ',')]
        cpus: Vec<u32>,
        #[arg(long, default_value = "info")]
        log_level: String,
        #[arg(long, default_value = "text")]
        log_format: crate::logging::LogFormat,
        #[arg(long, value_parser = ["busy", "adaptive", "sleep"], default_value = "adaptive")]
        poll: String,
        #[arg(long, hide = true)]
        secret: Option<String>,
    }

    struct File(tempfile::TempPath);

    fn file(text: &str) -> File {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        File(f.into_temp_path())
    }

    impl File {
        fn path(&self) -> String {
            self.0.display().to_string()
        }
        fn parse(&self, args: &[&str]) -> Result<(Demo, Effective), Error> {
            let p = self.path();
            let argv = ["demo", "--config", p.as_str()]
                .into_iter()
                .chain(args.iter().copied());
            parse::<Demo>(argv)
        }
        fn error(&self, args: &[&str]) -> String {
            match self.parse(args) {
                Ok(d) => panic!("parsed: {d:?}"),
                Err(e) => e.to_string(),
            }
        }
    }

    #[test]
    fn the_file_gives_what_the_command_line_does_not() {
        let f = file(
            "link = \"unix:/run/h.sock\"\n\
             ctrl = [\"name=a\", \"name=b\"]\n\
             pollers = 4\n\
             handover = true\n\
             cpus = [2, \"3\"]\n\
             log-level = \"debug\"\n",
        );
        let (d, _) = f.parse(&[]).unwrap();
        assert_eq!(d.link, "unix:/run/h.sock");
        assert_eq!(d.ctrls, ["name=a", "name=b"]);
        assert_eq!(d.pollers, 4);
        assert!(d.handover);
        assert_eq!(d.cpus, [2, 3]);
        assert_eq!(d.log_level, "debug");
        assert_eq!(d.poll, "adaptive");
    }

    #[test]
    fn the_command_line_overrides_the_file_lists_whole() {
        let f = file("link = \"unix:/a\"\nctrl = [\"name=a\", \"name=b\"]\npollers = \"4\"\n");
        let (d, _) = f
            .parse(&["--ctrl", "name=c", "--pollers=8", "--link", "unix:/b"])
            .unwrap();
        assert_eq!(d.link, "unix:/b");
        assert_eq!(d.ctrls, ["name=c"]);
        assert_eq!(d.pollers, 8);
        // A flag false in the file, given on the command line.
        let f = file("link = \"unix:/a\"\nhandover = false\n");
        assert!(!f.parse(&[]).unwrap().0.handover);
        assert!(f.parse(&["--handover"]).unwrap().0.handover);
    }

    #[test]
    fn without_a_file_it_is_the_command_line() {
        let (d, e) = parse::<Demo>(["demo", "--link", "x", "--poll", "busy"]).unwrap();
        assert_eq!((d.link.as_str(), d.poll.as_str()), ("x", "busy"));
        assert!(e.file.is_none());
        let e = parse::<Demo>(["demo"]).unwrap_err();
        assert!(matches!(e, Error::Clap(_)), "{e}");
        assert!(e.to_string().contains("--link"), "{e}");
        // A bad value on the command line is clap's to report.
        let e = parse::<Demo>(["demo", "--link", "x", "--pollers", "y"]).unwrap_err();
        assert!(matches!(e, Error::Clap(_)), "{e}");
    }

    #[test]
    fn the_effective_configuration_reads_back_the_same() {
        let f = file(
            "link = \"unix:/a\"\nctrl = [\"name=a\", \"name=b\"]\ncpus = [2, 3]\nhandover = true\n",
        );
        let (_, e) = f.parse(&["--pollers", "3", "--log-level", "warn"]).unwrap();
        let t = &e.toml;
        assert!(t.contains(&f.path()), "{t}");
        assert!(t.contains("\nlink = \"unix:/a\"\n"), "{t}");
        assert!(
            t.contains("\nctrl = [\n    \"name=a\",\n    \"name=b\",\n]\n"),
            "{t}"
        );
        assert!(t.contains("\npollers = 3\n"), "{t}");
        assert!(t.contains("\nhandover = true\n"), "{t}");
        assert!(t.contains("\ncpus = [\n    2,\n    3,\n]\n"), "{t}");
        assert!(t.contains("\nlog-level = \"warn\"\n"), "{t}");
        assert!(t.contains("\n# log-format = \"text\"\n"), "{t}");
        assert!(t.contains("\n# poll = \"adaptive\"\n"), "{t}");
        assert!(!t.contains("secret") && !t.contains("config ="), "{t}");
        // Started again from it: the same options.
        let again = file(t);
        let (d, e2) = again.parse(&[]).unwrap();
        assert_eq!((d.pollers, d.handover, d.cpus.len()), (3, true, 2));
        let body = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| !l.starts_with("# "))
                .map(String::from)
                .collect()
        };
        assert_eq!(body(&e2.toml), body(t));
        // A string that needs escapes survives.
        let (_, e) = parse::<Demo>(["demo", "--link", "a \"b\"\\c"]).unwrap();
        assert_eq!(file(&e.toml).parse(&[]).unwrap().0.link, "a \"b\"\\c");
    }

    #[test]
    fn syntax_errors_name_the_line_and_key() {
        let f = file("link = \"x\"\n\npollers = = 2\n");
        let e = f.error(&[]);
        assert!(
            e.starts_with(&format!("{}:3: key \"pollers\": ", f.path())),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let f = file("link = \"x\"\nlink = \"y\"\n");
        let e = f.error(&[]);
        assert!(e.starts_with(&format!("{}:2:", f.path())), "{e}");
    }

    #[test]
    fn unknown_keys_and_hidden_options_are_refused() {
        let f = file(
            "link = \"x\"\npolers = 2\nsecret = \"s\"\nconfig = \"other.toml\"\nhelp = true\n",
        );
        let e = f.error(&[]);
        let p = f.path();
        let want = [
            format!("{p}:2: key \"polers\": unknown option (did you mean \"pollers\"?)"),
            format!("{p}:3: key \"secret\": unknown option"),
            format!(
                "{p}:4: key \"config\": not accepted in a config file (only on the command line)"
            ),
            format!("{p}:5: key \"help\": unknown option"),
        ];
        assert_eq!(e, want.join("\n"));
        // A table is no option either.
        let f = file("link = \"x\"\n[pollers]\nn = 2\n");
        let e = f.error(&[]);
        assert!(
            e.starts_with(&format!(
                "{}:2: key \"pollers\": expected a string or a number, got a table",
                f.path()
            )),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_are_refused() {
        let f =
            file("link = [\"x\"]\nhandover = \"yes\"\nctrl = \"name=a\"\ncpus = [1, {a = 1}]\n");
        let e = f.error(&[]);
        let p = f.path();
        let want = [
            format!("{p}:1: key \"link\": expected a string or a number, got an array"),
            format!("{p}:2: key \"handover\": expected a boolean (true or false), got a string"),
            format!("{p}:3: key \"ctrl\": expected an array of strings (a repeated option), got a string"),
            format!("{p}:4: key \"cpus\": element 2: expected a string or a number, got a table"),
        ];
        assert_eq!(e, want.join("\n"));
    }

    #[test]
    fn values_the_option_refuses_name_the_line_and_key() {
        let f = file("link = \"x\"\n\npollers = \"x\"\n");
        let e = f.error(&[]);
        assert_eq!(
            e,
            format!(
                "{}:3: key \"pollers\": invalid value 'x': invalid digit found in string",
                f.path()
            )
        );
        let f = file("link = \"x\"\nlog-format = \"xml\"\n");
        let e = f.error(&[]);
        assert!(
            e.starts_with(&format!(
                "{}:2: key \"log-format\": invalid value 'xml': ",
                f.path()
            )),
            "{e}"
        );
        assert!(e.contains("expected text or json"), "{e}");
        let f = file("link = \"x\"\npoll = \"bsy\"\n");
        let e = f.error(&[]);
        assert!(
            e.starts_with(&format!(
                "{}:2: key \"poll\": invalid value 'bsy'",
                f.path()
            )),
            "{e}"
        );
        assert!(e.contains("busy, adaptive, sleep"), "{e}");
        // The element of a list written over several lines.
        let f = file("link = \"x\"\ncpus = [\n  1,\n  \"z\",\n]\n");
        let e = f.error(&[]);
        assert!(
            e.starts_with(&format!("{}:4: key \"cpus\": invalid value 'z'", f.path())),
            "{e}"
        );
        // Overridden by the command line: the file's value is not parsed
        // (its type is checked all the same).
        let f = file("link = \"x\"\npollers = \"x\"\n");
        assert_eq!(f.parse(&["--pollers", "2"]).unwrap().0.pollers, 2);
        let f = file("link = \"x\"\npollers = [1]\n");
        let e = f.error(&["--pollers", "2"]);
        assert!(e.contains(":2: key \"pollers\": expected a string"), "{e}");
    }

    #[test]
    fn other_errors_say_a_file_was_read() {
        // Missing in both: clap's report, and that the file was read.
        let f = file("pollers = 2\n");
        let e = f.parse(&[]).unwrap_err();
        assert!(matches!(e, Error::Merged(..)), "{e}");
        let e = e.to_string();
        assert!(e.contains("--link"), "{e}");
        assert!(
            e.ends_with(&format!("(the options included those of {})", f.path())),
            "{e}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = parse::<Demo>(["demo", "--config", "/nonexistent/x.toml"]).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/x.toml: "), "{e}");
    }
}
