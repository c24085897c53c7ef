//! Config and secrets (`wasi:config/store@0.2.0-rc.1`), deny by default: a guest reads its
//! plugin manifest's `[config]` values (with its tenant's overrides) and the secrets its
//! manifest names, with its job's tenant's values ([`crate::secrets`]). Any other key reads as
//! absent; asking for a secret that is not granted is logged (target `jobrunner::config`),
//! without a value.
//!
//! The generated `Host` is implemented here rather than taken from wasmtime-wasi-config,
//! whose static map can neither scope values per tenant nor log what was refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{Capability, GuestState, JobLabel, Services};
use crate::sandbox::Limits;
use crate::sandbox::bindings::wasi::config::store;
use crate::secrets::Secrets;

/// The log target of refused keys.
const TARGET: &str = "jobrunner::config";

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

/// One attempt's view: its grant, and the runner's secrets as they were when it started.
pub(crate) struct ConfigState {
    job: Arc<JobLabel>,
    grant: ConfigGrant,
    secrets: Arc<Secrets>,
}

impl ConfigState {
    /// The value of `key`, if granted: a config value, else a granted secret's.
    fn get(&self, key: &str) -> Option<String> {
        if let Some(value) = self.grant.values.get(key) {
            return Some(value.clone());
        }
        if self.grant.secrets.iter().any(|name| name == key) {
            let value = self.secrets.value(&self.job.tenant, key);
            if value.is_none() {
                self.refused(key, "the runner has no value of it for this tenant");
            }
            return value.map(|v| v.expose().to_owned());
        }
        if self.secrets.is_named(key) {
            self.refused(key, "the plugin's manifest does not list it in `secrets`");
        }
        None
    }

    fn all(&self) -> Vec<(String, String)> {
        let secrets = self.grant.secrets.iter().filter_map(|name| {
            let value = self.secrets.value(&self.job.tenant, name)?;
            Some((name.clone(), value.expose().to_owned()))
        });
        let values = self.grant.values.iter();
        values
            .map(|(key, value)| (key.clone(), value.clone()))
            .chain(secrets)
            .collect()
    }

    fn refused(&self, key: &str, reason: &str) {
        let job = &self.job;
        tracing::warn!(
            target: TARGET,
            job_id = job.id, job_type = %job.job_type, tenant = %job.tenant, attempt = job.attempt,
            key, "secret asked for and not given: {reason}"
        );
    }
}

impl Capability for Config {
    type State = ConfigState;

    fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
        store::add_to_linker::<_, HasSelf<GuestState>>(linker, |state| state)
    }

    fn start(job: &Arc<JobLabel>, limits: &Limits, services: &Services) -> ConfigState {
        ConfigState {
            job: Arc::clone(job),
            grant: limits.config.clone(),
            secrets: services.secrets.load_full(),
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
