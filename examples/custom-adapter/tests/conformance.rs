//! The `tiny` adapter against the shared conformance suite, the way a third party proves theirs.
//!
//! The store is not constructed by hand: the test loads the example `cim.toml`, and every case
//! builds its store through cim-core's registry from that file's `[sessions]` section, exactly as
//! a cim node would. So a passing run also shows that the name resolves, the keys parse and the
//! registration survived linking. Only the case's namespace and TTL are the suite's own (a
//! short TTL keeps the expiry cases fast).
//!
//! Run it with `cargo test -p cim-example-custom-adapter --test conformance`; cases the
//! capabilities do not claim (`count_online`) are listed as ignored, `[not-claimed]`.

use std::path::Path;
use std::process::ExitCode;

use cim_core::registry;
use cim_core::{CoreConfig, SessionStore};
use conformance_tests::Suite;

fn main() -> ExitCode {
    // Without a call into the crate, the linker may drop it and its registration with it.
    cim_example_custom_adapter::link();

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cim.toml");
    let config = match CoreConfig::load(Some(&path)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("cannot load {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };

    Suite::new("tiny")
        .sessions(move |ctx| {
            let options = config.backend_options("sessions").map(|options| {
                options
                    .with_namespace(ctx.namespace)
                    .with_ttl(Some(ctx.ttl))
            });
            async move { registry::build::<dyn SessionStore>(options?).await }
        })
        .run_as_tests()
}
