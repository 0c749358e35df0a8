use std::sync::Arc;

use novarpc_core::driver::{Driver, DriverDescriptor};
use novarpc_core::{BrokerEntry, Config, ConfigError, Error, Transport};

use crate::brokers::BrokerCache;

/// The drivers novarpc can build, looked up by `rpc_backend` name or alias, or by
/// the scheme of `transport_url`.
#[derive(Clone, Debug)]
pub struct Registry {
    drivers: Vec<DriverDescriptor>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::builtin()
    }
}

impl Registry {
    /// The drivers compiled in: `memory` always, the others by cargo feature.
    pub fn builtin() -> Self {
        #[allow(unused_mut)]
        let mut drivers = vec![novarpc_core::memory::DESCRIPTOR];
        #[cfg(feature = "kombu")]
        drivers.push(novarpc_kombu::DESCRIPTOR);
        #[cfg(feature = "qpid")]
        drivers.push(novarpc_qpid::DESCRIPTOR);
        Registry { drivers }
    }

    /// A registry with no drivers, to fill with [`Registry::register`].
    pub fn empty() -> Self {
        Registry {
            drivers: Vec::new(),
        }
    }

    /// Adds a driver; a name, alias or scheme already taken is an error.
    pub fn register(&mut self, driver: DriverDescriptor) -> Result<(), ConfigError> {
        let names = std::iter::once(driver.name).chain(driver.aliases.iter().copied());
        for name in names {
            if let Some(existing) = self.by_name(name) {
                return Err(ConfigError::Invalid {
                    origin: "driver registry".into(),
                    line: None,
                    key: "name".into(),
                    message: format!(
                        "`{name}` is already registered by driver `{}`",
                        existing.name
                    ),
                });
            }
        }
        for scheme in driver.url_schemes {
            if let Some(existing) = self.by_scheme(scheme) {
                return Err(ConfigError::Invalid {
                    origin: "driver registry".into(),
                    line: None,
                    key: "url_schemes".into(),
                    message: format!(
                        "scheme `{scheme}` is already registered by driver `{}`",
                        existing.name
                    ),
                });
            }
        }
        self.drivers.push(driver);
        Ok(())
    }

    /// The registered drivers.
    pub fn drivers(&self) -> &[DriverDescriptor] {
        &self.drivers
    }

    /// The driver answering to `name` (or an alias).
    pub fn by_name(&self, name: &str) -> Option<&DriverDescriptor> {
        self.drivers.iter().find(|d| d.answers_to(name))
    }

    /// The driver handling transport URLs of `scheme`.
    pub fn by_scheme(&self, scheme: &str) -> Option<&DriverDescriptor> {
        self.drivers
            .iter()
            .find(|d| d.url_schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)))
    }

    /// Every transport URL scheme some driver handles.
    pub fn schemes(&self) -> Vec<&'static str> {
        self.drivers
            .iter()
            .flat_map(|d| d.url_schemes.iter().copied())
            .collect()
    }

    fn available(&self) -> String {
        self.drivers
            .iter()
            .map(|d| {
                if d.aliases.is_empty() {
                    d.name.to_owned()
                } else {
                    format!("{} (aliases: {})", d.name, d.aliases.join(", "))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The driver `config` selects: `rpc_backend` if set, else the transport
    /// URL's scheme, else `memory`. For a broker's configuration
    /// ([`Config::for_broker`]) errors name the `[brokers.NAME]` keys.
    pub fn resolve(&self, config: &Config) -> Result<&DriverDescriptor, ConfigError> {
        let common = config.common();
        let entry = config
            .broker_scope()
            .and_then(|name| config.brokers().iter().find(|b| b.name == name));
        let (url_key, url_line, origin) = match entry {
            Some(entry) => (
                format!("brokers.{}.transport_url", entry.name),
                entry.url_line,
                format!("{} [brokers.{}]", config.origin(), entry.name),
            ),
            None => (
                "DEFAULT.transport_url".to_owned(),
                None,
                config.origin().to_owned(),
            ),
        };
        let by_url = match &common.transport_url {
            Some(url) => Some(
                self.by_scheme(&url.scheme)
                    .ok_or_else(|| ConfigError::Invalid {
                        origin: origin.clone(),
                        line: url_line,
                        key: url_key.clone(),
                        message: format!(
                            "no backend handles the scheme `{}`; known schemes: {}",
                            url.scheme,
                            self.schemes().join(", ")
                        ),
                    })?,
            ),
            None => None,
        };
        let by_name = match &common.rpc_backend {
            Some(name) => Some(
                self.by_name(name)
                    .ok_or_else(|| ConfigError::UnknownBackend {
                        origin: origin.clone(),
                        name: name.clone(),
                        available: self.available(),
                    })?,
            ),
            None => None,
        };
        match (by_name, by_url) {
            (Some(named), Some(url_driver)) if named.name != url_driver.name => {
                Err(ConfigError::Invalid {
                    origin,
                    line: url_line,
                    key: url_key,
                    message: format!(
                        "rpc_backend selects `{}` but the transport URL's scheme selects `{}`",
                        named.name, url_driver.name
                    ),
                })
            }
            (Some(driver), _) | (None, Some(driver)) => Ok(driver),
            (None, None) => self
                .by_name("memory")
                .ok_or_else(|| ConfigError::UnknownBackend {
                    origin,
                    name: "memory".into(),
                    available: self.available(),
                }),
        }
    }

    fn known_tables(&self) -> String {
        let mut known = vec!["DEFAULT", "brokers"];
        known.extend(self.drivers.iter().map(|d| d.config_section));
        known.join(", ")
    }

    /// Checks that every table is known and every driver table parses, and
    /// returns the selected driver. Every `[brokers.NAME]` table is checked
    /// too: its URL's scheme (or `rpc_backend`) must select a driver, and
    /// its driver tables must be known and parse once merged. Does no I/O.
    pub fn validate(&self, config: &Config) -> Result<&DriverDescriptor, ConfigError> {
        let selected = self.resolve(config)?;
        for (table, line) in config.tables() {
            if table == "DEFAULT" || table == "brokers" {
                continue;
            }
            match self.drivers.iter().find(|d| d.config_section == table) {
                Some(driver) => (driver.validate)(config)?,
                None => {
                    return Err(ConfigError::UnknownTable {
                        origin: config.origin().to_owned(),
                        line,
                        table,
                        known: self.known_tables(),
                    });
                }
            }
        }
        (selected.validate)(config)?;
        for entry in config.brokers() {
            self.validate_broker(config, entry)?;
        }
        Ok(selected)
    }

    /// Checks one `[brokers.NAME]` table and returns the driver it selects.
    pub fn validate_broker(
        &self,
        config: &Config,
        entry: &BrokerEntry,
    ) -> Result<&DriverDescriptor, ConfigError> {
        let scoped = config.for_broker(&entry.name)?;
        let selected = self.resolve(&scoped)?;
        for (table, line) in &entry.tables {
            match self.drivers.iter().find(|d| d.config_section == table) {
                Some(driver) => (driver.validate)(&scoped)?,
                None => {
                    return Err(ConfigError::UnknownTable {
                        origin: config.origin().to_owned(),
                        line: *line,
                        table: format!("brokers.{}.{table}", entry.name),
                        known: self
                            .drivers
                            .iter()
                            .map(|d| format!("brokers.{}.{}", entry.name, d.config_section))
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
        }
        (selected.validate)(&scoped)?;
        Ok(selected)
    }

    /// Validates `config` and builds the transport of the driver it selects.
    /// The transport reaches the configuration's `[brokers]` (and brokers
    /// given by URL) through a per-process cache built from this registry:
    /// see [`novarpc_core::RpcClient::cast_to_server`].
    pub async fn connect(&self, config: &Config) -> Result<Transport, Error> {
        let driver = self.validate(config)?;
        let driver: Arc<dyn Driver> = (driver.connect)(config.clone()).await?;
        let cache = BrokerCache::new(self.clone(), config.clone());
        Ok(Transport::with_resolver(driver, cache))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml_str(text, "test.toml").unwrap()
    }

    #[test]
    fn selects_by_name_alias_scheme_and_default() {
        let registry = Registry::builtin();
        assert_eq!(registry.resolve(&config("")).unwrap().name, "memory");
        assert_eq!(
            registry
                .resolve(&config("[DEFAULT]\nrpc_backend = \"fake\"\n"))
                .unwrap()
                .name,
            "memory"
        );
        assert_eq!(
            registry
                .resolve(&config("[DEFAULT]\ntransport_url = \"memory://\"\n"))
                .unwrap()
                .name,
            "memory"
        );
    }

    #[test]
    fn unknown_backend_lists_the_available_ones() {
        let err = Registry::builtin()
            .resolve(&config("[DEFAULT]\nrpc_backend = \"zeromq\"\n"))
            .unwrap_err();
        assert!(matches!(err, ConfigError::UnknownBackend { .. }));
        let text = err.to_string();
        assert!(text.contains("zeromq") && text.contains("memory"), "{text}");
    }

    #[test]
    fn unknown_tables_and_scheme_conflicts_are_errors() {
        let registry = Registry::builtin();
        let err = registry
            .validate(&config(
                "[DEFAULT]\nrpc_backend = \"memory\"\n\n[zmq]\nx = 1\n",
            ))
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::UnknownTable { line: Some(4), .. }),
            "{err}"
        );
        let err = registry
            .validate(&config("[memory]\nbogus = 1\n"))
            .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = registry
            .resolve(&config("[DEFAULT]\ntransport_url = \"gopher://h/\"\n"))
            .unwrap_err();
        assert!(err.to_string().contains("gopher"), "{err}");
    }

    #[test]
    fn brokers_tables_are_validated_against_the_drivers() {
        let registry = Registry::builtin();
        let ok = config(
            "[DEFAULT]\ntransport_url = \"memory://c0\"\n\n[brokers.cell1]\ntransport_url = \"memory://c1\"\n\n[brokers.cell1.memory]\n",
        );
        assert_eq!(registry.validate(&ok).unwrap().name, "memory");
        let err = registry
            .validate(&config(
                "[brokers.cell1]\n\ntransport_url = \"gopher://u:s3cret@h/\"\n",
            ))
            .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { line: Some(3), key, .. } if key == "brokers.cell1.transport_url"),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("gopher") && text.contains("test.toml"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
        let err = registry
            .validate(&config(
                "[brokers.cell1]\ntransport_url = \"memory://c1\"\n\n[brokers.cell1.zmq]\nx = 1\n",
            ))
            .unwrap_err();
        assert!(
            matches!(&err, ConfigError::UnknownTable { line: Some(4), table, .. } if table == "brokers.cell1.zmq"),
            "{err}"
        );
        let err = registry
            .validate(&config(
                "[brokers.cell1]\ntransport_url = \"memory://c1\"\n[brokers.cell1.memory]\nbogus = 1\n",
            ))
            .unwrap_err();
        assert!(
            err.to_string().contains("bogus") && err.to_string().contains("line 4"),
            "{err}"
        );
        let err = registry
            .validate(&config(
                "[brokers.cell1]\ntransport_url = \"memory://c1\"\nrpc_backend = \"zeromq\"\n",
            ))
            .unwrap_err();
        assert!(matches!(err, ConfigError::UnknownBackend { .. }), "{err}");
    }

    #[test]
    fn duplicate_registration_is_refused() {
        let mut registry = Registry::builtin();
        assert!(registry.register(novarpc_core::memory::DESCRIPTOR).is_err());
    }
}
