//! Secrets: named in the runner's config file, read from the environment or a file when the
//! runner starts and again on SIGHUP, handed (through `wasi:config`) only to the plugins whose
//! manifest names them and only with their job's tenant's value, and redacted from everything a
//! guest writes.
//!
//! ```toml
//! [secrets]                       # every tenant's value, unless its own table has one
//! github_token = { env = "GITHUB_TOKEN" }
//! slack_webhook = { file = "/run/secrets/slack_webhook" }
//!
//! [tenants.acme.secrets]          # acme's own values (never another tenant's)
//! github_token = { env = "ACME_GITHUB_TOKEN" }
//! ```
//!
//! Values are read whole, without trailing whitespace (a file's last newline), and must be at
//! least [`MIN_LEN`] bytes: a shorter one could not be redacted without mangling unrelated
//! text. They never reach the database: each runner reads its own, so every runner needs the
//! same `[secrets]` tables. A value never appears in an error or a `Debug` output.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use serde::Deserialize;

/// The shortest value accepted, in bytes.
pub const MIN_LEN: usize = 8;

/// Where a secret's value is read from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretSource {
    /// An environment variable of the runner's process.
    Env(String),
    /// A file (a mounted Kubernetes or Docker secret, say), read whole.
    File(PathBuf),
}

/// A `[secrets]` table: name → where its value is.
pub type SecretTable = BTreeMap<String, SecretSource>;

/// A secret that cannot be read, or a name or value the runner will not use. Never holds the
/// value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret {name:?}{}: {reason}", tenant.as_ref().map(|t| format!(" of tenant {t:?}")).unwrap_or_default())]
pub struct SecretError {
    /// The secret's name.
    pub name: String,
    /// The tenant whose table names it; `None`: the runner's `[secrets]`.
    pub tenant: Option<String>,
    /// Why.
    pub reason: String,
}

/// A secret's value: its `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Arc<str>);

impl SecretValue {
    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue({} bytes)", self.0.len())
    }
}

/// Every secret a runner holds: its own values and each tenant's, and the redactor that
/// replaces any of them.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    runner: BTreeMap<String, SecretValue>,
    tenants: BTreeMap<String, BTreeMap<String, SecretValue>>,
    redactor: Arc<Redactor>,
}

impl Secrets {
    /// Reads every value the tables name. The first one that cannot be read is the error.
    pub fn read(
        runner: &SecretTable,
        tenants: &BTreeMap<String, SecretTable>,
    ) -> Result<Self, SecretError> {
        let runner = read_table(runner, None)?;
        let tenants = tenants
            .iter()
            .filter(|(_, table)| !table.is_empty())
            .map(|(tenant, table)| Ok((tenant.clone(), read_table(table, Some(tenant))?)))
            .collect::<Result<BTreeMap<_, _>, SecretError>>()?;
        let all = runner
            .iter()
            .chain(tenants.values().flatten())
            .map(|(name, value)| (name.as_str(), value.expose()));
        let redactor = Arc::new(Redactor::new(all));
        Ok(Self {
            runner,
            tenants,
            redactor,
        })
    }

    /// Runner-wide secrets with these `(name, value)`s, for unit tests.
    #[cfg(test)]
    pub(crate) fn of(values: &[(&str, &str)]) -> Self {
        let runner: BTreeMap<String, SecretValue> = values
            .iter()
            .map(|(name, value)| ((*name).to_owned(), SecretValue((*value).into())))
            .collect();
        Self {
            redactor: Arc::new(Redactor::new(values.iter().copied())),
            runner,
            tenants: BTreeMap::new(),
        }
    }

    /// `tenant`'s value of secret `name`: its own, else the runner's.
    pub fn value(&self, tenant: &str, name: &str) -> Option<&SecretValue> {
        self.tenants
            .get(tenant)
            .and_then(|own| own.get(name))
            .or_else(|| self.runner.get(name))
    }

    /// Whether any table names `name` (for the log line of a plugin that asked for a secret
    /// it was not granted).
    pub fn is_named(&self, name: &str) -> bool {
        self.runner.contains_key(name) || self.tenants.values().any(|t| t.contains_key(name))
    }

    /// Replaces every value held here, whichever tenant's.
    pub fn redactor(&self) -> &Arc<Redactor> {
        &self.redactor
    }

    /// How many values are held.
    pub fn len(&self) -> usize {
        self.runner.len() + self.tenants.values().map(BTreeMap::len).sum::<usize>()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn read_table(
    table: &SecretTable,
    tenant: Option<&String>,
) -> Result<BTreeMap<String, SecretValue>, SecretError> {
    table
        .iter()
        .map(|(name, source)| {
            let error = |reason: String| SecretError {
                name: name.clone(),
                tenant: tenant.cloned(),
                reason,
            };
            check_key(name).map_err(&error)?;
            let value = read_value(source).map_err(&error)?;
            Ok((name.clone(), value))
        })
        .collect()
}

fn read_value(source: &SecretSource) -> Result<SecretValue, String> {
    let raw = match source {
        SecretSource::Env(variable) => std::env::var(variable).map_err(|e| match e {
            std::env::VarError::NotPresent => {
                format!("environment variable {variable} is not set")
            }
            std::env::VarError::NotUnicode(_) => {
                format!("environment variable {variable} is not UTF-8")
            }
        })?,
        SecretSource::File(path) => std::fs::read_to_string(path).map_err(|e| {
            // The error's kind only: an I/O error's text never holds the content.
            format!("cannot read {}: {e}", path.display())
        })?,
    };
    let value = raw.trim_end();
    if value.len() < MIN_LEN {
        return Err(format!(
            "the value is {} bytes long; at least {MIN_LEN} are needed to redact it safely",
            value.len()
        ));
    }
    Ok(SecretValue(value.into()))
}

/// Checks a config or secret key: 1 to 128 of `A-Z a-z 0-9 _ . -`.
pub fn check_key(key: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if key.is_empty() || key.len() > 128 || !key.chars().all(valid) {
        return Err(format!(
            "{key:?} is not a key: use 1 to 128 letters, digits, '_', '.' or '-'"
        ));
    }
    Ok(())
}

/// Replaces secret values in text with `[redacted:<name>]`, as written and as JSON escapes
/// them (a result or payload holds them escaped). A value that is a URL is also replaced by
/// its path and query, where its secret part usually is (a Slack webhook's): the host's
/// request log writes the URL with the port added.
#[derive(Debug, Default)]
pub struct Redactor {
    matcher: Option<AhoCorasick>,
    /// The replacement of each pattern, by pattern index.
    markers: Vec<String>,
    /// The longest pattern, in bytes.
    longest: usize,
}

impl Redactor {
    /// A redactor of these `(name, value)` pairs.
    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut patterns = Vec::new();
        let mut markers = Vec::new();
        for (name, value) in secrets {
            let escaped = serde_json::to_string(value).expect("a string serializes");
            let escaped = &escaped[1..escaped.len() - 1];
            let mut forms = vec![value.to_owned()];
            if escaped != value {
                forms.push(escaped.to_owned());
            }
            forms.extend(url_path(value));
            for form in forms {
                patterns.push(form);
                markers.push(format!("[redacted:{name}]"));
            }
        }
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        let matcher = (!patterns.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .expect("literal patterns of bounded size build")
        });
        Self {
            matcher,
            markers,
            longest,
        }
    }

    /// `text` with every secret replaced.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let Some(matcher) = &self.matcher else {
            return Cow::Borrowed(text);
        };
        if !matcher.is_match(text) {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        matcher.replace_all_with(text, &mut out, |m, _, out| {
            out.push_str(&self.markers[m.pattern().as_usize()]);
            true
        });
        Cow::Owned(out)
    }

    /// [`Redactor::redact`] of an owned text, without a copy when it holds no secret.
    pub fn redact_owned(&self, text: String) -> String {
        match self.redact(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(clean) => clean,
        }
    }

    /// Like [`Redactor::redact`], for the tail of a longer text: its first bytes may be the
    /// end of a secret whose start was cut off, so as many bytes as the longest secret (less
    /// one) are dropped from its front first.
    pub fn redact_tail<'t>(&self, tail: &'t str) -> Cow<'t, str> {
        if self.matcher.is_none() {
            return Cow::Borrowed(tail);
        }
        let cut = tail.ceil_char_boundary(self.longest.saturating_sub(1).min(tail.len()));
        self.redact(&tail[cut..])
    }

    /// The longest text a secret can take, in bytes: how far past a cut a reader must look to
    /// redact a secret the cut would split.
    pub fn longest(&self) -> usize {
        self.longest
    }
}

/// The path and query of a URL-valued secret, when they are long enough to be its secret part.
fn url_path(value: &str) -> Option<String> {
    let uri: http::Uri = value.parse().ok()?;
    uri.scheme()?;
    let path = uri.path_and_query()?.as_str();
    (path.len() >= MIN_LEN).then(|| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_replaced_by_name_raw_and_json_escaped() {
        let redactor = Redactor::new([
            ("token", "s3cret-\"quoted\""),
            ("hook", "https://h/services/x/y"),
        ]);
        assert_eq!(
            redactor.redact("a s3cret-\"quoted\" b https://h/services/x/y c"),
            "a [redacted:token] b [redacted:hook] c"
        );
        let json = serde_json::json!({ "t": "s3cret-\"quoted\"" }).to_string();
        assert_eq!(redactor.redact(&json), r#"{"t":"[redacted:token]"}"#);
        assert!(matches!(redactor.redact("nothing here"), Cow::Borrowed(_)));
        assert_eq!(
            redactor.redact("POST https://h:443/services/x/y"),
            "POST https://h:443[redacted:hook]",
            "a URL's path is its secret part"
        );
    }

    #[test]
    fn a_tail_that_starts_inside_a_secret_loses_that_part() {
        let redactor = Redactor::new([("token", "ABCDEFGHIJ")]);
        // The tail of "...ABCDEFGHIJ and more ABCDEFGHIJ".
        let tail = "FGHIJ and more ABCDEFGHIJ";
        let redacted = redactor.redact_tail(tail);
        assert!(!redacted.contains("FGHIJ"), "{redacted}");
        assert!(redacted.ends_with("more [redacted:token]"), "{redacted}");
    }

    #[test]
    fn a_tenants_own_value_comes_before_the_runners() {
        let tenants = BTreeMap::from([(
            "acme".to_owned(),
            SecretTable::from([("token".to_owned(), SecretSource::Env("PATH".into()))]),
        )]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "runner-wide-value\n").unwrap();
        let runner = SecretTable::from([("token".to_owned(), SecretSource::File(file))]);
        let secrets = Secrets::read(&runner, &tenants).unwrap();
        let path = std::env::var("PATH").unwrap();
        assert_eq!(
            secrets.value("acme", "token").unwrap().expose(),
            path.trim_end()
        );
        assert_eq!(
            secrets.value("globex", "token").unwrap().expose(),
            "runner-wide-value",
            "read without its newline"
        );
        assert!(secrets.is_named("token") && !secrets.is_named("other"));
        assert!(!format!("{secrets:?}").contains("runner-wide-value"));
    }

    #[test]
    fn unreadable_short_and_misnamed_secrets_are_refused_without_their_value() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let cases = [
            ("t", SecretSource::File(short), "3 bytes long"),
            (
                "t",
                SecretSource::Env("JOBRUNNER_NO_SUCH_VARIABLE".into()),
                "JOBRUNNER_NO_SUCH_VARIABLE is not set",
            ),
            (
                "t",
                SecretSource::File(dir.path().join("missing")),
                "cannot read",
            ),
            ("bad name", SecretSource::Env("PATH".into()), "is not a key"),
        ];
        for (name, source, expected) in cases {
            let table = SecretTable::from([(name.to_owned(), source)]);
            let error = Secrets::read(&table, &BTreeMap::new())
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains("abc"), "{error}");
        }
    }
}
