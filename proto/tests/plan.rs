//! Compiled flow templates against the reference mapping: for any template a plan accepts and
//! any data set body, `FlowPlan` must give the records (and the errors) that
//! `convert_ipfix_data_set` gives.

use std::collections::HashMap;
use std::net::IpAddr;

use labelflow_proto::convert::{convert_ipfix_data_set, ApplicationKey, ExporterContext};
use labelflow_proto::ie::{FieldSpec, PEN_LABELFLOW, PEN_NETFILTER, PEN_REVERSE, VARLEN};
use labelflow_proto::ipfix::Template;
use labelflow_proto::plan::{ExportClock, FlowPlan};
use proptest::prelude::*;

/// Elements a flow template may hold, with lengths to pick from (some the plan refuses).
const POOL: &[(u32, u16, &[u16])] = &[
    (0, 1, &[1, 2, 4, 8, 3]),
    (0, 2, &[4, 8]),
    (0, 85, &[8, 4]),
    (0, 86, &[8]),
    (0, 4, &[1, 2]),
    (0, 5, &[1]),
    (0, 6, &[1, 2]),
    (0, 7, &[2, 4]),
    (0, 11, &[2]),
    (0, 8, &[4, 4, 4, 6]),
    (0, 12, &[4, 4, 4]),
    (0, 27, &[16, 16, 8]),
    (0, 28, &[16]),
    (0, 10, &[4, 2]),
    (0, 14, &[4]),
    (0, 32, &[2]),
    (0, 139, &[2]),
    (0, 176, &[1]),
    (0, 177, &[1]),
    (0, 61, &[1]),
    (0, 95, &[5, 4, VARLEN, 1]),
    (0, 96, &[VARLEN, VARLEN, 8, 32]),
    (0, 136, &[1]),
    (0, 138, &[4, 2]),
    (0, 150, &[4]),
    (0, 151, &[4]),
    (0, 152, &[8, 8, 4]),
    (0, 153, &[8]),
    (0, 154, &[8]),
    (0, 157, &[8, 4]),
    (0, 295, &[4]),
    (0, 371, &[VARLEN, 16]),
    (0, 210, &[3, VARLEN]),
    // sysUpTime-relative times, placed by the context's system init time when it has one.
    (0, 22, &[4, 4, 8]),
    (0, 21, &[4, 2]),
    (0, 305, &[4]),
    (PEN_NETFILTER, 4, &[4]),
    (PEN_NETFILTER, 3, &[VARLEN, 12]),
    (PEN_NETFILTER, 9, &[2]),
    (9, 1, &[4]),
    // Connection tracking: post-NAT addresses and ports, biflowDirection, flowId, labelflow
    // ctZone / ctTcpState, RFC 5103 reverse counters.
    (0, 225, &[4, 4, 16]),
    (0, 226, &[4]),
    (0, 281, &[16, 4]),
    (0, 282, &[16]),
    (0, 227, &[2, 4]),
    (0, 228, &[2]),
    (0, 239, &[1]),
    (0, 148, &[4, 8]),
    (PEN_LABELFLOW, 2, &[2, 1]),
    (PEN_LABELFLOW, 3, &[1]),
    (PEN_REVERSE, 1, &[8, 4, 9]),
    (PEN_REVERSE, 2, &[8]),
];

fn spec(i: usize, pick: usize) -> FieldSpec {
    let (pen, id, lens) = POOL[i % POOL.len()];
    let len = lens[pick % lens.len()];
    if pen == 0 {
        FieldSpec::iana(id, len)
    } else {
        FieldSpec::enterprise(pen, id, len)
    }
}

/// Octets of one field: a value of its length, or a length-prefixed value for VARLEN. The
/// value starts `skip` octets into the seed, so that fields of one length differ.
fn field_bytes(f: &FieldSpec, seed: &[u8], skip: usize, long: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let value: Vec<u8> = if f.length == VARLEN {
        let n = if long { 260 } else { seed.len() % 12 };
        let v: Vec<u8> = seed.iter().cycle().take(n).copied().collect();
        if n < 255 {
            out.push(n as u8);
        } else {
            out.push(255);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        v
    } else {
        seed.iter()
            .cycle()
            .skip(skip)
            .take(f.length as usize)
            .copied()
            .collect()
    };
    out.extend(value);
    out
}

fn context(names: bool, sampling: Option<u32>, init: Option<u64>) -> ExporterContext {
    let mut applications = HashMap::new();
    if names {
        for selector in 0..4u64 {
            applications.insert(
                ApplicationKey {
                    engine: 6,
                    selector,
                },
                format!("app{selector}"),
            );
        }
    }
    ExporterContext {
        applications,
        sampling_interval: sampling,
        system_init_ms: init,
        ..ExporterContext::default()
    }
}

/// An IPFIX message's clock: export time only.
const CLOCK: ExportClock = ExportClock {
    export_secs: 1_700_000_000,
    sys_uptime_ms: None,
};

fn assert_same(template: &Template, body: &[u8], ctx: &ExporterContext) -> bool {
    let Some(plan) = FlowPlan::compile(template) else {
        return false;
    };
    let mut want = Vec::new();
    let reference = convert_ipfix_data_set(template, body, 7, 1_700_000_000, ctx, &mut want);
    match plan.check(body) {
        Ok(n) => {
            assert_eq!(reference.ok(), Some(n as u32), "record count");
            let mut got = Vec::new();
            plan.decode(body, 7, CLOCK, ctx, |v| {
                let r = v.to_record(ctx);
                // The one-read IPv4 fields agree with the record.
                if let Some(h) = v.ipv4() {
                    assert_eq!(
                        (
                            IpAddr::V4(h.src),
                            IpAddr::V4(h.dst),
                            h.protocol,
                            h.bytes,
                            h.packets
                        ),
                        (r.src_addr, r.dst_addr, r.protocol, r.bytes, r.packets)
                    );
                    assert_eq!(
                        (h.start_ms, h.end_ms, h.ipsec_spi),
                        (r.start_ms, r.end_ms, r.ipsec_spi)
                    );
                    assert_eq!((h.src_port, h.dst_port), v.transport_ports());
                }
                got.push(r);
            });
            assert_eq!(got, want);
        }
        Err(_) => assert!(reference.is_err(), "plan refused a body the reference took"),
    }
    true
}

/// labelflow's own flow templates compile: its export takes the plan.
#[test]
fn labelflow_templates_compile() {
    use labelflow_proto::template::*;
    for def in [
        FLOW_V4, FLOW_V6, FLOW_CT_V4, FLOW_CT_V6, FLOW_BI_V4, FLOW_BI_V6,
    ] {
        let t = Template::new(def.id, 0, def.fields.to_vec()).unwrap();
        assert!(FlowPlan::compile(&t).is_some(), "template {}", def.id);
    }
    let uptime = Template::new(300, 0, vec![FieldSpec::iana(22, 4)]).unwrap();
    assert!(FlowPlan::compile(&uptime).is_some());
    // A record's own system init time is for RecordBuilder.
    let init = Template::new(
        301,
        0,
        vec![FieldSpec::iana(22, 4), FieldSpec::iana(160, 8)],
    );
    assert!(FlowPlan::compile(&init.unwrap()).is_none());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn plan_equals_reference(
        fields in proptest::collection::vec((0usize..POOL.len(), 0usize..4), 1..14),
        records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..24), 0..5),
        long in any::<bool>(),
        trailer in proptest::collection::vec(any::<u8>(), 0..6),
        cut in 0usize..40,
        names in any::<bool>(),
        sampling in proptest::option::of(0u32..5),
        // Near the export time, far before it, or so late that offsets wrap back.
        init in proptest::option::of(prop_oneof![
            Just(1_699_990_000_000u64),
            0u64..4_000_000_000_000,
            Just(u64::MAX - 5),
        ]),
    ) {
        let specs: Vec<FieldSpec> = fields.iter().map(|(i, p)| spec(*i, *p)).collect();
        let Ok(template) = Template::new(400, 0, specs.clone()) else {
            return Ok(());
        };
        let mut body = Vec::new();
        for (k, seed) in records.iter().enumerate() {
            for (j, f) in specs.iter().enumerate() {
                body.extend(field_bytes(f, seed, j, long && k == 0));
            }
        }
        body.extend(&trailer);
        let ctx = context(names, sampling, init);
        assert_same(&template, &body, &ctx);
        // And every truncation of it: the plan must refuse what the reference refuses.
        let short = body.len().saturating_sub(cut);
        assert_same(&template, &body[..short], &ctx);
    }
}

/// sysUpTime-relative times: placed by the system init time, or without one kept as a
/// duration ending at the export time.
#[test]
fn uptime_times() {
    let t = Template::new(300, 0, vec![FieldSpec::iana(22, 4), FieldSpec::iana(21, 4)]).unwrap();
    let mut body = 1_000u32.to_be_bytes().to_vec();
    body.extend(5_000u32.to_be_bytes());
    let export_ms = 1_700_000_000_000u64;
    for (init, want) in [
        (None, (export_ms - 4_000, export_ms)),
        (
            Some(export_ms - 60_000),
            (export_ms - 59_000, export_ms - 55_000),
        ),
    ] {
        let ctx = context(false, None, init);
        assert!(assert_same(&t, &body, &ctx));
        let plan = FlowPlan::compile(&t).unwrap();
        let mut got = Vec::new();
        plan.decode(&body, 7, CLOCK, &ctx, |v| got.push(v.times()));
        assert_eq!(got, vec![want], "init {init:?}");
    }
}
