//! Config and secrets (`wasi:config/store@0.2.0-rc.1`), deny by default: a guest reads its
//! plugin manifest's `[config]` values (with its tenant's overrides) and the secrets its
//! manifest names, with its job's tenant's values ([`crate::secrets`]). Any other key reads as
//! absent, and asking for it is logged once per attempt (target `jobrunner::config`, with
//! whether the runner holds a secret of that name), never with a value.
//!
//! The generated `Host` is implemented here rather than taken from wasmtime-wasi-config,
//! whose static map can neither scope values per tenant nor log what was refused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{Capability, GuestState, JobLabel, Services};
use crate::sandbox::Limits;
use crate::sandbox::bindings::wasi::config::store;

/// The log target of refused keys.
const TARGET: &str = "jobrunner::config";

/// Distinct refused keys logged per attempt: a guest probing keys in a loop writes no more.
const MAX_REFUSALS_LOGGED: usize = 16;

/// What one attempt may read: granted by the plugin's manifest, values overridden by the
/// tenant's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigGrant {
    /// The manifest's `[config]` values, with the tenant's overrides.
    pub values: Arc<BTreeMap<String, String>>,
    /// The secrets the manifest names (`secrets = [...]`).
    pub secrets: Arc<[String]>,
}

impl ConfigGrant {
    /// Replaces the values of the keys `overrides` names that the manifest declares: a
    /// tenant changes its plugins' settings, it does not add keys to them.
    pub fn override_with(&mut self, overrides: &BTreeMap<String, String>) {
        if overrides.keys().any(|key| self.values.contains_key(key)) {
            let values = Arc::make_mut(&mut self.values);
            for (key, value) in overrides {
                if let Some(own) = values.get_mut(key) {
                    value.clone_into(own);
                }
            }
        }
    }
}

/// The config capability.
pub(crate) struct Config;

/// One attempt's view: its grant, and (in its label) the runner's secrets as they were when
/// it started.
pub(crate) struct ConfigState {
    job: Arc<JobLabel>,
    grant: ConfigGrant,
    /// The keys asked for and not granted, each logged once.
    refused: BTreeSet<String>,
}

impl ConfigState {
    /// The value of `key`, if granted: a config value, else a granted secret's.
    fn get(&mut self, key: &str) -> Option<String> {
        if let Some(value) = self.grant.values.get(key) {
            return Some(value.clone());
        }
        let granted = self.grant.secrets.iter().any(|name| name == key);
        let value = granted
            .then(|| self.job.secrets.value(&self.job.tenant, key))
            .flatten();
        match value {
            Some(value) => Some(value.expose().to_owned()),
            None => {
                self.refused(key, granted);
                None
            }
        }
    }

    fn all(&self) -> Vec<(String, String)> {
        let secrets = self.grant.secrets.iter().filter_map(|name| {
            let value = self.job.secrets.value(&self.job.tenant, name)?;
            Some((name.clone(), value.expose().to_owned()))
        });
        let values = self.grant.values.iter();
        values
            .map(|(key, value)| (key.clone(), value.clone()))
            .chain(secrets)
            .collect()
    }

    fn refused(&mut self, key: &str, granted: bool) {
        if self.refused.len() >= MAX_REFUSALS_LOGGED || !self.refused.insert(key.to_owned()) {
            return;
        }
        let reason = if granted {
            "the manifest names this secret, but the runner has no value of it for this tenant"
        } else {
            "neither in the manifest's [config] nor in its `secrets`"
        };
        let job = &self.job;
        let secret = self.job.secrets.is_named(key);
        tracing::warn!(
            target: TARGET,
            job_id = job.id, job_type = %job.job_type, tenant = %job.tenant, attempt = job.attempt,
            key, secret, reason, "config key asked for and not granted"
        );
    }
}

impl Capability for Config {
    type State = ConfigState;

    fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
        store::add_to_linker::<_, HasSelf<GuestState>>(linker, |state| state)
    }

    fn start(job: &Arc<JobLabel>, limits: &Limits, _services: &Services) -> ConfigState {
        ConfigState {
            job: Arc::clone(job),
            grant: limits.config.clone(),
            refused: BTreeSet::new(),
        }
    }

    fn finish(_state: &mut ConfigState) {}
}

impl store::Host for GuestState {
    async fn get(&mut self, key: String) -> Result<Option<String>, store::Error> {
        Ok(self.config.get(&key))
    }

    async fn get_all(&mut self) -> Result<Vec<(String, String)>, store::Error> {
        Ok(self.config.all())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_overrides_declared_keys_only() {
        let mut grant = ConfigGrant {
            values: Arc::new(BTreeMap::from([("repos".into(), "a/b".into())])),
            secrets: Arc::from([]),
        };
        let overrides = BTreeMap::from([
            ("repos".to_owned(), "acme/app".to_owned()),
            ("extra".to_owned(), "x".to_owned()),
        ]);
        grant.override_with(&overrides);
        assert_eq!(
            *grant.values,
            BTreeMap::from([("repos".into(), "acme/app".into())])
        );
    }
}
