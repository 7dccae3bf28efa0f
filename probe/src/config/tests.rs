use super::*;

fn src(text: &str) -> Source {
    Source {
        path: PathBuf::from("probe.toml"),
        text: text.to_string(),
    }
}

fn load_text(text: &str, over: &Overrides) -> Result<Config, ConfigError> {
    let s = src(text);
    let raw = parse(&s)?;
    validate(raw, Some(&s), over)
}

#[test]
fn full_file_is_validated() {
    let cfg = load_text(
        r#"
observation_domain = 7
stats_interval = "5s"
[nflog]
rcvbuf = 1048576
queue_threshold = 32
flush_timeout = "50ms"
[[group]]
id = 2
label = "vpn"
[[group]]
id = 1
label = "esp"
description = "ESP on the uplink"
queue_threshold = 8
[cache]
max_flows = 1000
active_timeout = "2m"
idle_timeout = "10s"
[[export]]
target = "ipfix://127.0.0.1:4739"
mtu = 1200
application_id = "varlen"
[[export]]
target = "netflow5://[::1]:2055"
"#,
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(cfg.observation_domain, 7);
    assert_eq!(cfg.stats_interval, Duration::from_secs(5));
    assert_eq!(cfg.nflog.rcvbuf, 1 << 20);
    assert_eq!(cfg.nflog.flush_timeout, Duration::from_millis(50));
    assert_eq!(cfg.groups.len(), 2);
    assert_eq!(cfg.groups[0].id, 1);
    assert_eq!(cfg.groups[0].queue_threshold, 8);
    assert_eq!(cfg.groups[1].queue_threshold, 32);
    assert_eq!(cfg.label(2), Some("vpn"));
    assert_eq!(cfg.cache.max_flows.get(), 1000);
    assert_eq!(cfg.cache.active_timeout, Duration::from_secs(120));
    assert_eq!(cfg.exports.len(), 2);
    assert_eq!(cfg.exports[0].mtu, 1200);
    assert_eq!(cfg.exports[1].mtu, defaults::MTU);
    assert_eq!(cfg.exports[0].app_id, AppIdEncoding::Varlen);
    assert_eq!(cfg.exports[1].app_id, AppIdEncoding::Rfc6759);
}

#[test]
fn bad_application_id_names_its_line() {
    let target = "[[export]]\ntarget = \"ipfix://127.0.0.1:4739\"\n";
    let e = load_text(
        &format!("{target}application_id = \"nbar\"\n"),
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.place, "probe.toml:3:18");
    assert!(e.message.contains("neither"), "{e}");
    let v9 = "[[export]]\ntarget = \"netflow9://127.0.0.1:2055\"\napplication_id = \"varlen\"\n";
    let e = load_text(v9, &Overrides::default()).unwrap_err();
    assert_eq!(e.place, "probe.toml:3:18");
    assert!(e.message.contains("needs an ipfix:// target"), "{e}");
    let over = Overrides {
        exports: vec!["netflow5://127.0.0.1:2055".into()],
        application_id: Some("varlen".into()),
        ..Overrides::default()
    };
    assert_eq!(load(None, &over).unwrap_err().place, "--application-id");
    let over = Overrides {
        application_id: Some("varlen".into()),
        ..Overrides::default()
    };
    let cfg = load_text(target, &over).unwrap();
    assert_eq!(cfg.exports[0].app_id, AppIdEncoding::Varlen);
}

#[test]
fn unknown_key_names_file_and_line() {
    let e = load_text(
        "[cache]\nmax_flows = 10\nidle = \"1s\"\n",
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.place, "probe.toml:3:1");
    assert!(e.message.contains("unknown field `idle`"), "{e}");
}

#[test]
fn bad_duration_names_its_line() {
    let e = load_text(
        "[cache]\nactive_timeout = \"sixty\"\n",
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.place, "probe.toml:2:18");
    assert!(e.message.contains("invalid duration"), "{e}");
}

#[test]
fn ipsec_ports_default_configure_and_name_a_bad_list() {
    let cfg = load_text("", &Overrides::default()).unwrap();
    assert_eq!(cfg.ipsec, IpsecPorts::DEFAULT);
    let cfg = load_text(
        "[ipsec]\nnatt_ports = [4500, 14500]\nike_ports = []\n",
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(cfg.ipsec, IpsecPorts::new(&[4500, 14500], &[]).unwrap());
    let e = load_text("[ipsec]\nnatt_ports = [4500, 0]\n", &Overrides::default()).unwrap_err();
    assert_eq!(e.place, "probe.toml:2:14");
    assert!(e.message.contains("natt_ports"), "{e}");
    let cfg = load_text(
        "[ipsec]\nvici = \"unix:///run/charon.vici\"\n",
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(cfg.vici, Some(PathBuf::from("/run/charon.vici")));
    let e = load_text(
        "[ipsec]\nvici = \"tcp://127.0.0.1:4502\"\n",
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.place, "probe.toml:2:8");
    let over = Overrides {
        vici: Some("/tmp/x.vici".into()),
        ..Overrides::default()
    };
    assert_eq!(
        load_text("", &over).unwrap().vici,
        Some(PathBuf::from("/tmp/x.vici"))
    );
}

#[test]
fn duplicate_group_and_bad_label_are_rejected() {
    let e = load_text(
        "[[group]]\nid = 1\nlabel = \"a\"\n[[group]]\nid = 1\nlabel = \"b\"\n",
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.place, "probe.toml:5:6");
    let e = load_text(
        "[[group]]\nid = 1\nlabel = \"a b\"\n",
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.place, "probe.toml:3:9");
    let e = load_text(
        "[[group]]\nid = 70000\nlabel = \"a\"\n",
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(e.message.contains("out of range"), "{e}");
}

#[test]
fn max_rate_per_target_default_and_flag() {
    let text = "[[export]]\ntarget = \"ipfix://127.0.0.1:4739\"\nmax_rate = 0\n\
                [[export]]\ntarget = \"ipfix://127.0.0.1:4740\"\n";
    let cfg = load_text(text, &Overrides::default()).unwrap();
    let rates: Vec<u32> = cfg.exports.iter().map(|e| e.max_rate).collect();
    assert_eq!(rates, [0, defaults::MAX_RATE]);
    let over = Overrides {
        max_rate: Some(5_000),
        ..Overrides::default()
    };
    let cfg = load_text(text, &over).unwrap();
    assert!(cfg.exports.iter().all(|e| e.max_rate == 5_000));
    let e = load_text(
        "[[export]]\ntarget = \"ipfix://127.0.0.1:4739\"\nmax_rate = -1\n",
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(e.place.starts_with("probe.toml:3:"), "{e}");
}

#[test]
fn bad_target_names_its_line() {
    let e = load_text(
        "[[export]]\ntarget = \"sflow://127.0.0.1:6343\"\n",
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.place, "probe.toml:2:10");
}

#[test]
fn flags_work_without_a_file_and_override_it() {
    let over = Overrides {
        groups: vec!["1=esp".into(), "2=vpn".into()],
        exports: vec![
            "ipfix://127.0.0.1:4739".into(),
            "netflow9://127.0.0.1:2055".into(),
        ],
        active_timeout: Some("30s".into()),
        idle_timeout: Some("5s".into()),
        max_flows: Some(10),
        ..Overrides::default()
    };
    let cfg = load(None, &over).unwrap();
    assert_eq!(cfg.groups.len(), 2);
    assert_eq!(cfg.exports.len(), 2);
    assert_eq!(cfg.cache.active_timeout, Duration::from_secs(30));
    assert_eq!(cfg.cache.idle_timeout, Duration::from_secs(5));

    let cfg = load_text(
        "[[group]]\nid = 1\nlabel = \"a\"\n[cache]\nmax_flows = 5\n",
        &Overrides {
            groups: vec!["1=b".into()],
            max_flows: Some(9),
            ..Overrides::default()
        },
    )
    .unwrap();
    assert_eq!(cfg.label(1), Some("b"));
    assert_eq!(cfg.cache.max_flows.get(), 9);

    let e = load(
        None,
        &Overrides {
            groups: vec!["x".into()],
            ..Overrides::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.place, "--group");
}

#[test]
fn same_label_twice_is_rejected() {
    let e = load(
        None,
        &Overrides {
            groups: vec!["1=a".into(), "2=a".into()],
            ..Overrides::default()
        },
    )
    .unwrap_err();
    assert!(e.message.contains("used by groups 1 and 2"), "{e}");
}
