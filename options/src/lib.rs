//! The one grammar of LeapIO's configuration strings.
//!
//! Every configuration string (a controller's `--ctrl`, a target's
//! `--tcp-target`, a QoS `--qos` or `--tenant`, a backend's options) is a
//! list of `key=value` options separated by `,` (or `&` after a backend's
//! `?`). Keys are lowercase words joined by `-` or `_`; a value runs to the
//! next separator. A key given twice is an error unless the grammar repeats
//! it (`ns=`, `allow=`); an unknown key is an error that lists the known
//! ones. Values are typed:
//!
//! | type | written | read by |
//! |---|---|---|
//! | number | decimal, in a range the key sets | [`Opt::number`] |
//! | decimal | up to 3 decimals (`0.2`, `40`), read in thousandths | [`Opt::milli`] |
//! | size | bytes, with an optional binary suffix K, M, G or T (`64M`) | [`Opt::size`] |
//! | toggle | `1`/`0`, `on`/`off`, `true`/`false`, `yes`/`no` | [`Opt::toggle`] |
//! | duration | a number of the unit the key names (`-ms`, `-us`) | [`Opt::millis`], [`Opt::micros`] |
//! | list | items joined by `:` | [`Opt::list`] |
//! | anything else | the value's own syntax (a path, an NQN, an address) | [`Opt::parse`] |
//!
//! Errors say which key and value were wrong and why, in one line.
//!
//! A backend spec is the value of a namespace's `ns=` key: `ram:SIZE`,
//! `file:PATH`, `nvme-tcp:HOST:PORT/SUBNQN`, `flash:PATH`, `zns:PATH`. Its
//! own options follow a `?`, joined by `&` (`nvme-tcp:...?nsid=2&hdgst=1`),
//! except the block size of a RAM or file namespace, `bs=N`, which follows
//! as the next `,` option of the string the namespace is in
//! (`ns=file:/srv/a.img,bs=4096`).

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

/// What is wrong with an option string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// A part without `=`.
    #[error("'{0}' is not key=value")]
    NotKeyValue(String),
    /// A key the grammar does not have.
    #[error("unknown key '{key}' (known: {known})")]
    Unknown {
        /// The key given.
        key: String,
        /// The grammar's keys.
        known: String,
    },
    /// A key that may appear once, given twice.
    #[error("'{0}' given twice")]
    Twice(String),
    /// A required key left out.
    #[error("missing {0}")]
    Missing(String),
    /// A value that is not what its key takes.
    #[error("{key} {why}, got '{value}'")]
    Invalid {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What the key takes ("must be a number from 1 to 64").
        why: String,
    },
    /// Any other mistake, said as it is.
    #[error("{0}")]
    Other(String),
}

/// One `key=value` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opt<'a> {
    /// The key.
    pub key: &'a str,
    /// The value (may be empty).
    pub value: &'a str,
}

impl<'a> Opt<'a> {
    /// An [`OptionError::Invalid`] for this option: the key takes `why`.
    pub fn invalid(&self, why: impl Display) -> OptionError {
        OptionError::Invalid {
            key: self.key.to_string(),
            value: self.value.to_string(),
            why: why.to_string(),
        }
    }

    /// The value, parsed by its type's own syntax; the type's error says
    /// what is wrong.
    pub fn parse<T>(&self) -> Result<T, OptionError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.value
            .parse()
            .map_err(|e: T::Err| OptionError::Other(format!("{}: {e}", self.key)))
    }

    /// A decimal number in `range`.
    pub fn number<T>(&self, range: RangeInclusive<T>) -> Result<T, OptionError>
    where
        T: FromStr + PartialOrd + Display,
    {
        match self.value.parse::<T>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(self.invalid(format_args!(
                "must be a number from {} to {}",
                range.start(),
                range.end()
            ))),
        }
    }

    /// A decimal number from 0 to `max` with at most 3 decimals, in
    /// thousandths: "0.2" is 200, "40" is 40000.
    pub fn milli(&self, max: u64) -> Result<u64, OptionError> {
        let bad = || {
            self.invalid(format_args!(
                "must be a decimal number from 0 to {max} (at most 3 decimals)"
            ))
        };
        let (int, frac) = self.value.split_once('.').unwrap_or((self.value, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || frac.len() > 3 || !digits(int) || !digits(frac) {
            return Err(bad());
        }
        let i: u64 = int.parse().map_err(|_| bad())?;
        let f: u64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<3}").parse().map_err(|_| bad())?
        };
        let total = i
            .checked_mul(1000)
            .and_then(|x| x.checked_add(f))
            .ok_or_else(bad)?;
        if total > max.saturating_mul(1000) {
            return Err(bad());
        }
        Ok(total)
    }

    /// A size in bytes (see [`size`]).
    pub fn size(&self) -> Result<u64, OptionError> {
        size(self.value).map_err(|why| self.invalid(why))
    }

    /// A toggle: `1`, `on`, `true`, `yes` or `0`, `off`, `false`, `no`.
    pub fn toggle(&self) -> Result<bool, OptionError> {
        match self.value {
            "1" | "on" | "true" | "yes" => Ok(true),
            "0" | "off" | "false" | "no" => Ok(false),
            _ => Err(self.invalid("must be 0 or 1")),
        }
    }

    /// Milliseconds in `range`.
    pub fn millis(&self, range: RangeInclusive<u64>) -> Result<Duration, OptionError> {
        self.number(range).map(Duration::from_millis)
    }

    /// Microseconds in `range`.
    pub fn micros(&self, range: RangeInclusive<u64>) -> Result<Duration, OptionError> {
        self.number(range).map(Duration::from_micros)
    }

    /// The value's items, separated by `sep`; empty items are refused.
    pub fn list(&self, sep: char) -> Result<Vec<&'a str>, OptionError> {
        let items: Vec<&str> = self.value.split(sep).collect();
        if items.iter().any(|i| i.is_empty()) {
            return Err(self.invalid(format_args!("must be items joined by '{sep}'")));
        }
        Ok(items)
    }
}

/// A parsed option string: its options in order.
#[derive(Clone, Debug, Default)]
pub struct Options<'a> {
    opts: Vec<Opt<'a>>,
}

impl<'a> Options<'a> {
    /// Split `text` at `sep` into `key=value` options (empty parts are
    /// skipped).
    pub fn parse(text: &'a str, sep: char) -> Result<Options<'a>, OptionError> {
        let mut opts = Vec::new();
        for part in text.split(sep).filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(OptionError::NotKeyValue(part.to_string()));
            };
            opts.push(Opt { key, value });
        }
        Ok(Options { opts })
    }

    /// Refuse keys not in `known` (the error lists them) and keys of `once`
    /// given more than once. Every key is in `known`; those a grammar
    /// repeats (`ns`, `allow`) are not in `once`.
    pub fn check(&self, known: &[&str], once: &[&str]) -> Result<(), OptionError> {
        for (i, o) in self.opts.iter().enumerate() {
            if !known.contains(&o.key) {
                return Err(OptionError::Unknown {
                    key: o.key.to_string(),
                    known: known.join(", "),
                });
            }
            if once.contains(&o.key) && self.opts[..i].iter().any(|p| p.key == o.key) {
                return Err(OptionError::Twice(o.key.to_string()));
            }
        }
        Ok(())
    }

    /// [`Options::check`] with every key of `known` allowed once.
    pub fn check_once(&self, known: &[&str]) -> Result<(), OptionError> {
        self.check(known, known)
    }

    /// The options in order.
    pub fn iter(&self) -> impl Iterator<Item = &Opt<'a>> {
        self.opts.iter()
    }

    /// The option `key` (the last one if it was given several times).
    pub fn get(&self, key: &str) -> Option<Opt<'a>> {
        self.opts.iter().rev().find(|o| o.key == key).copied()
    }

    /// Whether `key` was given.
    pub fn has(&self, key: &str) -> bool {
        self.opts.iter().any(|o| o.key == key)
    }

    /// The value of `key`, or [`OptionError::Missing`] naming `what`.
    pub fn require(&self, key: &str, what: &str) -> Result<Opt<'a>, OptionError> {
        self.get(key)
            .ok_or_else(|| OptionError::Missing(what.to_string()))
    }
}

/// A size: decimal bytes with an optional binary suffix K, M, G or T
/// (either case), e.g. `4096`, `64M`, `1G`.
pub fn size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("size is empty".to_owned());
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("size '{text}' does not start with a number"));
    }
    let shift = match suffix {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        other => {
            return Err(format!(
                "size '{text}' has unknown suffix '{other}' (use K, M, G or T)"
            ))
        }
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("size '{text}' is too large"))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_in_order_with_their_checks() {
        let o = Options::parse("name=vm0,ns=ram:1M,bs=4096,ns=file:/x,", ',').unwrap();
        let keys: Vec<&str> = o.iter().map(|o| o.key).collect();
        assert_eq!(keys, ["name", "ns", "bs", "ns"]);
        assert_eq!(o.get("ns").unwrap().value, "file:/x");
        assert!(o.check(&["name", "ns", "bs"], &["name", "bs"]).is_ok());
        assert_eq!(
            o.check_once(&["name", "ns", "bs"]),
            Err(OptionError::Twice("ns".into()))
        );
        assert_eq!(
            o.check(&["name", "ns"], &[]).unwrap_err().to_string(),
            "unknown key 'bs' (known: name, ns)"
        );
        assert_eq!(
            Options::parse("a=1,b", ',').unwrap_err().to_string(),
            "'b' is not key=value"
        );
        assert_eq!(
            o.require("sock", "sock=PATH").unwrap_err().to_string(),
            "missing sock=PATH"
        );
        let q = Options::parse("nsid=2&hdgst=1", '&').unwrap();
        assert_eq!(q.get("nsid").unwrap().number(1u32..=9), Ok(2));
    }

    #[test]
    fn typed_values_and_their_errors() {
        let opt = |key, value| Opt { key, value };
        assert_eq!(opt("qd", "64").number(1u32..=1023), Ok(64));
        assert_eq!(
            opt("qd", "0").number(1u32..=1023).unwrap_err().to_string(),
            "qd must be a number from 1 to 1023, got '0'"
        );
        assert!(opt("qd", "x").number(1u8..=9).is_err());
        assert_eq!(opt("op", "0.2").milli(10), Ok(200));
        assert_eq!(opt("read", "40").milli(1000), Ok(40_000));
        assert!(opt("op", "0.0001")
            .milli(10)
            .unwrap_err()
            .to_string()
            .contains("at most 3 decimals"));
        assert!(opt("op", "11").milli(10).is_err());
        assert_eq!(opt("size", "64M").size(), Ok(64 << 20));
        assert_eq!(opt("size", "2k").size(), Ok(2048));
        assert!(opt("size", "1Q")
            .size()
            .unwrap_err()
            .to_string()
            .contains("unknown suffix"));
        assert!(opt("size", "99999999999999999999").size().is_err());
        assert_eq!(opt("hdgst", "on").toggle(), Ok(true));
        assert_eq!(opt("hdgst", "0").toggle(), Ok(false));
        assert_eq!(
            opt("hdgst", "2").toggle().unwrap_err().to_string(),
            "hdgst must be 0 or 1, got '2'"
        );
        assert_eq!(
            opt("kato", "1500").millis(0..=3_600_000),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(
            opt("poll", "50").micros(0..=100),
            Ok(Duration::from_micros(50))
        );
        assert_eq!(
            opt("hashes", "sha256:sha384").list(':'),
            Ok(vec!["sha256", "sha384"])
        );
        assert!(opt("hashes", "sha256::x").list(':').is_err());
        let addr: Result<std::net::SocketAddr, _> = opt("listen", "nope").parse();
        assert!(addr.unwrap_err().to_string().starts_with("listen: "));
    }
}
