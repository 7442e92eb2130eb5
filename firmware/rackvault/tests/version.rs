//! The binary names a real version, and its commit when built from a git checkout.

#[test]
fn version_is_the_workspace_release_with_the_commit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rackvault")).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let want = env!("CARGO_PKG_VERSION");
    assert_ne!(want, "0.0.0", "the workspace has a real version");
    assert!(text.starts_with(&format!("rackvault {want}")), "{text}");
    let in_git = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .is_ok_and(|o| o.status.success());
    if in_git {
        assert!(text.contains(" ("), "a build from a checkout names its commit: {text}");
    }
}
