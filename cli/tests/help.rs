//! `broadcast --help` describes the commands.

use std::process::Command;

#[test]
fn help_lists_the_listen_and_send_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_broadcast"))
        .arg("--help")
        .output()
        .expect("run broadcast --help");
    assert!(out.status.success(), "{:?}", out.status);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("listen"), "{help}");
    assert!(help.contains("send"), "{help}");
}
