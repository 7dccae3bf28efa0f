//! `[conntrack]`, `--conntrack` and `--ct-label`.
//!
//! ```toml
//! [conntrack]
//! enable = true
//! labels = [{ mark = "0x10/0xf0", label = "web" }, { mark = "0x20", label = "dns" }]
//! default_label = "other"   # connections no rule matches; leave out to ignore them
//! zone = 0                  # only this conntrack zone; leave out for every zone
//! set_sysctls = false       # turn nf_conntrack_acct / nf_conntrack_timestamp on if off
//! rcvbuf = 8388608          # event socket receive buffer, bytes
//! ```

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::{check_label, flag_err, span_err, ConfigError, Overrides, Source};
use crate::conntrack::{CtConfig, LabelRule, DEFAULT_RECV_BUFFER};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConntrack {
    pub enable: Option<bool>,
    #[serde(default)]
    pub labels: Vec<RawCtLabel>,
    pub default_label: Option<Spanned<String>>,
    pub zone: Option<Spanned<u32>>,
    pub set_sysctls: Option<bool>,
    pub rcvbuf: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCtLabel {
    pub mark: Spanned<String>,
    pub label: Spanned<String>,
}

fn number(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `MARK[/MASK]`, decimal or `0x` hexadecimal; the mask defaults to all ones. A value with
/// bits outside its mask could never match.
pub fn parse_mark(s: &str) -> Result<(u32, u32), String> {
    let (v, m) = match s.split_once('/') {
        Some((v, m)) => (v, Some(m)),
        None => (s, None),
    };
    let value = number(v).ok_or_else(|| format!("mark {v:?} is not a 32-bit number"))?;
    let mask = match m {
        Some(m) => number(m).ok_or_else(|| format!("mask {m:?} is not a 32-bit number"))?,
        None => u32::MAX,
    };
    if value & !mask != 0 {
        return Err(format!(
            "mark {s:?}: value {value:#x} has bits outside mask {mask:#x}, it can never match"
        ));
    }
    Ok((value, mask))
}

/// Validates `[conntrack]` with `--conntrack` / `--ct-label` applied; `None` when disabled.
pub fn validate_conntrack(
    raw: &RawConntrack,
    source: Option<&Source>,
    over: &Overrides,
) -> Result<Option<CtConfig>, ConfigError> {
    let err = |span: Range<usize>, msg: String| span_err(source, span, msg);
    let enabled = over.conntrack || raw.enable.unwrap_or(false) || !over.ct_labels.is_empty();
    if !enabled {
        return Ok(None);
    }
    let mut labels = Vec::new();
    for l in &raw.labels {
        let (value, mask) = parse_mark(l.mark.get_ref()).map_err(|m| err(l.mark.span(), m))?;
        check_label(l.label.get_ref()).map_err(|m| err(l.label.span(), m))?;
        labels.push(LabelRule {
            value,
            mask,
            label: l.label.get_ref().clone(),
        });
    }
    for spec in &over.ct_labels {
        let (mark, label) = spec.split_once('=').ok_or_else(|| {
            flag_err(
                "--ct-label",
                format!("{spec:?}: expected MARK[/MASK]=LABEL, e.g. 0x10/0xf0=web"),
            )
        })?;
        let (value, mask) = parse_mark(mark).map_err(|m| flag_err("--ct-label", m))?;
        check_label(label.trim()).map_err(|m| flag_err("--ct-label", m))?;
        labels.push(LabelRule {
            value,
            mask,
            label: label.trim().to_string(),
        });
    }
    let default_label = match &raw.default_label {
        Some(v) => {
            check_label(v.get_ref()).map_err(|m| err(v.span(), m))?;
            Some(v.get_ref().clone())
        }
        None => None,
    };
    for (i, l) in labels.iter().enumerate() {
        let dup = labels[..i].iter().any(|o| o.label == l.label)
            || default_label.as_deref() == Some(l.label.as_str());
        if dup {
            return Err(ConfigError {
                place: source
                    .map(|s| s.path.display().to_string())
                    .unwrap_or_else(|| "--ct-label".into()),
                message: format!(
                    "conntrack label {:?} is given twice; each mark rule needs its own label",
                    l.label
                ),
            });
        }
    }
    if labels.is_empty() && default_label.is_none() {
        return Err(ConfigError {
            place: source
                .map(|s| s.path.display().to_string())
                .unwrap_or_else(|| "--conntrack".into()),
            message: "conntrack is enabled without labels: give [conntrack] labels, \
                      default_label or --ct-label MARK[/MASK]=LABEL"
                .into(),
        });
    }
    let zone = match &raw.zone {
        Some(z) => Some(u16::try_from(*z.get_ref()).map_err(|_| {
            err(
                z.span(),
                format!("zone {} is out of range (0-65535)", z.get_ref()),
            )
        })?),
        None => None,
    };
    let rcvbuf = raw
        .rcvbuf
        .as_ref()
        .map_or(DEFAULT_RECV_BUFFER, |v| *v.get_ref());
    if rcvbuf < 4096 {
        let span = raw.rcvbuf.as_ref().map_or(0..0, |v| v.span());
        return Err(err(span, format!("rcvbuf {rcvbuf} is below 4096 bytes")));
    }
    Ok(Some(CtConfig {
        labels,
        default_label,
        zone,
        set_sysctls: raw.set_sysctls.unwrap_or(false),
        rcvbuf,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, validate};
    use std::path::PathBuf;

    fn load(text: &str, over: &Overrides) -> Result<Option<CtConfig>, ConfigError> {
        let src = Source {
            path: PathBuf::from("probe.toml"),
            text: text.into(),
        };
        let raw = parse(&src)?;
        validate(raw, Some(&src), over).map(|c| c.conntrack)
    }

    #[test]
    fn marks_parse_with_and_without_masks() {
        assert_eq!(parse_mark("0x10/0xf0"), Ok((0x10, 0xf0)));
        assert_eq!(parse_mark("16"), Ok((16, u32::MAX)));
        assert!(parse_mark("0x11/0xf0").unwrap_err().contains("never match"));
        assert!(parse_mark("web").is_err());
    }

    #[test]
    fn labels_from_file_and_flags() {
        let text = "[conntrack]\nenable = true\nlabels = [{ mark = \"0x10/0xf0\", label = \"web\" }]\ndefault_label = \"other\"\nzone = 2\n";
        let over = Overrides {
            ct_labels: vec!["0x20/0xf0=dns".into()],
            ..Overrides::default()
        };
        let c = load(text, &over).unwrap().unwrap();
        let names: Vec<_> = c.labels.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(names, ["web", "dns"]);
        assert_eq!(
            (c.default_label.as_deref(), c.zone),
            (Some("other"), Some(2))
        );
        assert_eq!(load("", &Overrides::default()).unwrap(), None);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let text = "[conntrack]\nenable = true\nlabels = [\n  { mark = \"0x11/0xf0\", label = \"web\" },\n]\n";
        let e = load(text, &Overrides::default()).unwrap_err().to_string();
        assert!(e.starts_with("probe.toml:4:12: "), "{e}");
        let e = load(
            "[conntrack]\nenable = true\nzone = 70000\ndefault_label = \"x\"\n",
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("probe.toml:3:8: zone 70000"), "{e}");
        let e = load("[conntrack]\nenable = true\n", &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("without labels"), "{e}");
        let e = load(
            "[conntrack]\nenable = true\nlabel = []\n",
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("probe.toml:3:1: "), "{e}");
    }
}
