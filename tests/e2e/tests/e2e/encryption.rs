//! Encrypted stores from the command line: `backup --encrypt` writes the recovery key,
//! every command opens the store with `--key-file`, a wrong or missing key is refused with
//! what to do, and the printable form typed back in opens the store.

use e2e::*;

#[test]
fn an_encrypted_store_round_trips_through_the_cli_with_its_recovery_key() {
    let dir = scratch("enc-cli");
    let d = dir.path();
    let img = d.join("vm.raw");
    make_image(&img, 8 * MIB, 331, Profile::VM);
    let want = hash_file(&img);
    let store = d.join("store");
    let key = d.join("store.key");
    backup(&img, &store, "vm", &["--encrypt", "--key-file", key.to_str().unwrap()]);
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&key).unwrap()).unwrap();
    assert_eq!(file["kind"], "rackvault-recovery-key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

    // Without the key, and with another store's key: refused, saying what to do.
    rv!["list", "--store", &store].run().failure().stderr_has(&["encrypted and no key was given", "--key-file"]);
    let other = d.join("other.key");
    backup(&img, &d.join("store2"), "vm", &["--encrypt", "--key-file", other.to_str().unwrap()]);
    rv!["list", "--store", &store, "--key-file", &other]
        .run()
        .failure()
        .stderr_has(&["does not open this encrypted store"]);

    // With it (flag or environment), everything works: a second backup dedups.
    let again =
        rv!["backup", &img, "--store", &store, "--name", "vm", "--json", "--key-file", &key].run().success().json();
    assert_eq!(again["chunks_new"], 0, "{again}");
    let to = d.join("back.raw");
    rv!["restore", "vm", "--store", &store, "--to", &to].env("RACKVAULT_KEY_FILE", &key).run().success();
    assert_eq!(hash_file(&to), want);
    rv!["verify", "--store", &store, "--key-file", &key].run().success();

    // The printable form, typed back in on standard input, opens it too.
    let export = rv!["key", "export", "--store", &store, "--key-file", &key].run().success();
    let printable: String = export
        .stdout
        .lines()
        .filter(|l| l.starts_with("RVK1") || l.chars().nth(5) == Some('-'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(printable.starts_with("RVK1-"), "{}", export.stdout);
    let typed = d.join("typed.txt");
    std::fs::write(&typed, printable.to_lowercase()).unwrap();
    rv!["key", "check", "--store", &store, "--key-file", &typed].run().success();
    // One mistyped character: the group is named.
    let mut bad = printable.clone().into_bytes();
    bad[7] = if bad[7] == b'A' { b'B' } else { b'A' };
    std::fs::write(&typed, bad).unwrap();
    rv!["list", "--store", &store, "--key-file", &typed].run().failure().stderr_has(&["wrong recovery key", "re-type"]);
}
