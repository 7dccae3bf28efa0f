//! Every scenario under `examples/` run end to end as a user runs it (`examples/NAME/lab.sh`):
//! lab up, the example's own rules, probe and collector with the example's configs, traffic,
//! and the collector's report checked against the kernel's counters by the script itself
//! (it exits non-zero on any difference). Both firewalls: iptables and nftables. The
//! ipsec-gateway example also over real IPsec (`lab-real.sh`: strongSwan in the lab).

use std::path::PathBuf;
use std::process::Command;

use labelflow_tests::process::find_binary;

fn run_example(name: &str, firewall: &str) {
    run_script(name, "lab.sh", firewall, &format!("example {name}: OK"));
}

fn run_script(name: &str, script: &str, firewall: &str, ok: &str) {
    labelflow_testkit::tools::require_root("the kernel lab: network namespaces, NFLOG rules");
    let probe = find_binary("labelflow-probe").expect("run `cargo build --workspace --bins` first");
    let bin_dir = probe.parent().unwrap().to_path_buf();
    for b in ["labelflow-collector", "labelflow-lab"] {
        assert!(
            bin_dir.join(b).is_file(),
            "{b} missing in {}: run `cargo build --workspace --bins` first",
            bin_dir.display()
        );
    }
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "examples", name, script]
        .iter()
        .collect();
    let out = Command::new("bash")
        .arg(&path)
        .env("LABELFLOW_BIN", &bin_dir)
        .env("FIREWALL", firewall)
        .output()
        .expect("run the example's script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(ok),
        "examples/{name}/{script} with {firewall} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

#[test]
fn ipsec_gateway_iptables() {
    run_example("ipsec-gateway", "iptables");
}

#[test]
fn ipsec_gateway_nft() {
    run_example("ipsec-gateway", "nft");
}

#[test]
fn ipsec_gateway_real_ipsec_iptables() {
    let ok = "example ipsec-gateway (real IPsec): OK";
    run_script("ipsec-gateway", "lab-real.sh", "iptables", ok);
}

#[test]
fn ipsec_gateway_real_ipsec_nft() {
    let ok = "example ipsec-gateway (real IPsec): OK";
    run_script("ipsec-gateway", "lab-real.sh", "nft", ok);
}

#[test]
fn app_accounting_iptables() {
    run_example("app-accounting", "iptables");
}

#[test]
fn app_accounting_nft() {
    run_example("app-accounting", "nft");
}

#[test]
fn department_accounting_iptables() {
    run_example("department-accounting", "iptables");
}

#[test]
fn department_accounting_nft() {
    run_example("department-accounting", "nft");
}

#[test]
fn subnet_hosts_iptables() {
    run_example("subnet-hosts", "iptables");
}

#[test]
fn subnet_hosts_nft() {
    run_example("subnet-hosts", "nft");
}
