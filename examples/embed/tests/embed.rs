//! Runs the example as a user would: the hello plugin (built by `make
//! build`) into a scratch outbox, through the library API only.

#[test]
fn the_example_runs_a_plugin_and_sends() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let plugin = std::env::var_os("WASMAIL_PLUGINS")
        .map_or_else(|| root.join("target/wasm32-wasip2/release"), std::path::PathBuf::from)
        .join("wasmail_plugin_hello.wasm");
    assert!(plugin.exists(), "{} is missing: run `make build` first", plugin.display());
    let outbox = std::env::temp_dir().join(format!("wasmail-embed-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_embed")).arg(&plugin).arg(&outbox).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().filter(|l| l.contains("Accepted")).count(), 2, "{stdout}");
    assert!(stdout.contains("sent "), "{stdout}");
    let emls = std::fs::read_dir(&outbox).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "eml")).count();
    assert_eq!(emls, 3, "two runs and one send");
    std::fs::remove_dir_all(&outbox).unwrap();
}
