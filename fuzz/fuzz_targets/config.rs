//! The config loader, fed arbitrary text as `cim.toml`: every section parses into its settings
//! or fails with a `Config` error naming what is wrong, never a panic.

#![no_main]

use cim_core::{CoreConfig, ErrorKind};
use cim_pipeline::LimitsConfig;
use cim_route::RouteConfig;
use cim_server::ServerConfig;
use figment::Figment;
use figment::providers::{Format, Toml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match CoreConfig::from_toml(text) {
        Ok(config) => {
            // Backends named in a parsed config resolve to options or a Config error.
            for section in ["meta", "sessions", "accounts", "messages"] {
                if let Err(e) = config.backend_options(section) {
                    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
                }
            }
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::Config, "{e}"),
    }
    let figment = Figment::from(Toml::string(text));
    if let Err(e) = ServerConfig::from_figment(&figment) {
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    }
    if let Err(e) = LimitsConfig::from_figment(&figment) {
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    }
    if figment.contains("route") {
        if let Ok(route) = figment.extract_inner::<RouteConfig>("route") {
            let _ = route.validate();
        }
    }
});
