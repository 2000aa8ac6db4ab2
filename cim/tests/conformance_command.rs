//! `cim conformance`: how a user checks the backends their config names.

use std::process::Command;

#[test]
fn conformance_command_prints_a_table_and_passes_on_the_embedded_backends() {
    let data = tempfile::tempdir().expect("temporary directory");
    let config = data.path().join("cim.toml");
    std::fs::write(
        &config,
        "[accounts]\nbackend = \"memory\"\n[messages]\nbackend = \"sqlite\"\n",
    )
    .expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_cim"))
        .arg("conformance")
        .arg("--config")
        .arg(&config)
        .env("CIM_LOG", "warn")
        .current_dir(data.path())
        .output()
        .expect("the cim binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cim conformance failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for subject in [
        "meta_store",
        "session_store",
        "account_store",
        "message_store",
    ] {
        assert!(
            stdout.contains(subject),
            "{subject} missing from:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("not claimed"),
        "no table header in:\n{stdout}"
    );
    // The sqlite cases wrote into a scratch directory, not beside the config.
    assert!(
        !data.path().join("cim-data").exists(),
        "the suite left data behind"
    );
}

#[test]
fn an_unknown_backend_fails_with_the_registered_names() {
    let data = tempfile::tempdir().expect("temporary directory");
    let config = data.path().join("cim.toml");
    std::fs::write(&config, "[meta]\nbackend = \"zookeepr\"\n").expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_cim"))
        .args(["conformance", "--config"])
        .arg(&config)
        .output()
        .expect("the cim binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("zookeepr") && stderr.contains("memory"),
        "{stderr}"
    );
}
