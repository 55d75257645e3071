//! Stable-toolchain stand-in for the `agent_config` fuzz target (proto/fuzz): the agent's config
//! parser (`Config::parse`, pure: no file is read) never panics, and every refusal names the
//! file — on arbitrary bytes, on mutations of a valid config, on hostile values for every key,
//! on deep nesting, and an unknown key is always refused by name.

use outpost_agent::{Config, ConfigError};
use proptest::prelude::*;

const ORIGIN: &str = "/etc/outpost/fuzz.toml";

const VALID: &str = r#"agent_id = "gw-line1"
zone = "cell-1"
state_dir = "/var/lib/outpost-agent"
key_file = "/etc/outpost/agent.key"
poll_interval = "60s"

[diode]
target = "192.0.2.10:7000"
max_datagrams_per_sec = 2000
link_bytes_per_sec = 1000000
fec = true
fec_overhead_percent = 25
fec_min_repair = 24
heartbeat_interval = "10s"

[modbus]
connect_timeout = "2s"
request_timeout = "1s"
min_request_gap = "50ms"
max_parallel_devices = 16

[[devices]]
name = "plc-1"
address = "10.10.1.20:502"
unit_ids = [1, 2]

[[devices.blocks]]
name = "config"
kind = "holding"
start = 100
count = 8
"#;

/// Parses `text`; a refusal must be a non-empty message naming the file.
fn check(text: &str) -> Result<(), TestCaseError> {
    match Config::parse(text, ORIGIN) {
        Ok(_) => Ok(()),
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.contains(ORIGIN), "error does not name the file: {msg}");
            if let ConfigError::Invalid { problems, .. } = &e {
                prop_assert!(!problems.is_empty(), "Invalid without a problem: {msg}");
            }
            Ok(())
        }
    }
}

/// Keys of the config and where they live, for substituting hostile values.
const KEYS: &[&str] = &[
    "agent_id",
    "zone",
    "state_dir",
    "key_file",
    "poll_interval",
    "target",
    "max_datagrams_per_sec",
    "link_bytes_per_sec",
    "fec",
    "fec_overhead_percent",
    "fec_min_repair",
    "heartbeat_interval",
    "connect_timeout",
    "request_timeout",
    "min_request_gap",
    "max_parallel_devices",
    "name",
    "address",
    "unit_ids",
    "kind",
    "start",
    "count",
];

fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#""""#.to_owned()),
        Just(r#""0s""#.to_owned()),
        Just(r#""1ns""#.to_owned()),
        Just(r#""18446744073709551615s""#.to_owned()),
        Just(r#""99999999999999999999999d""#.to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("1e308".to_owned()),
        Just("nan".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("[0, 255, 256, -1]".to_owned()),
        Just(r#""256.256.256.256:70000""#.to_owned()),
        Just(r#""[::1]:0""#.to_owned()),
        Just(r#""host.example:502""#.to_owned()),
        Just(r#""tcp://10.0.0.1:502""#.to_owned()),
        Just(r#""rtu:///dev/ttyS0""#.to_owned()),
        Just(r#""mqtts://""#.to_owned()),
        Just(r#""\u0000\u202e""#.to_owned()),
        Just(format!("{:?}", "x".repeat(5000))),
        Just("1979-05-27T07:32:00Z".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[a-z0-9:./\\[\\]-]{0,40}".prop_map(|s| format!("{s:?}")),
    ]
}

/// `VALID` with the value of every line whose key is `key` replaced by `value`.
fn substitute(key: &str, value: &str) -> String {
    VALID
        .lines()
        .map(|line| match line.split_once(" = ") {
            Some((k, _)) if k == key => format!("{k} = {value}"),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Clone)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Truncate { at: usize },
    DuplicateLine { line: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), "[\\[\\]{}=\"'#.,\n a-z0-9\\\\]{1,12}")
            .prop_map(|(at, text)| Edit::Insert { at, text }),
        any::<usize>().prop_map(|at| Edit::Truncate { at }),
        any::<usize>().prop_map(|line| Edit::DuplicateLine { line }),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for e in edits {
        let n = bytes.len().max(1);
        match e {
            Edit::Delete { at, len } => {
                let at = at % n;
                let end = (at + len).min(bytes.len());
                bytes.drain(at.min(bytes.len())..end);
            }
            Edit::Insert { at, text } => {
                let at = (at % n).min(bytes.len());
                bytes.splice(at..at, text.bytes());
            }
            Edit::Truncate { at } => bytes.truncate(at % n),
            Edit::DuplicateLine { line } => {
                let s = String::from_utf8_lossy(&bytes).into_owned();
                let mut lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let i = line % lines.len();
                    lines.insert(i, lines[i]);
                }
                bytes = lines.join("\n").into_bytes();
            }
        }
    }
    // Cutting inside a multi-byte character is fine: the parser gets text, as from a file
    // read with `read_to_string`, so invalid UTF-8 never reaches it.
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn the_valid_base_config_parses() {
    let config = Config::parse(VALID, ORIGIN).expect("the base config is valid");
    assert_eq!(config.devices.len(), 1);
}

#[test]
fn an_unknown_top_level_key_is_named() {
    let err = Config::parse(&format!("pol_interval = \"5s\"\n{VALID}"), ORIGIN)
        .expect_err("typo refused")
        .to_string();
    assert!(
        err.contains(ORIGIN) && err.contains("pol_interval"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check(&text)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn mutations_of_a_valid_config_never_panic(edits in prop::collection::vec(edit(), 1..6)) {
        check(&apply(VALID, &edits))?;
    }

    #[test]
    fn hostile_values_for_every_key_never_panic(
        key in prop::sample::select(KEYS),
        value in hostile_value(),
    ) {
        check(&substitute(key, &value))?;
    }

    #[test]
    fn an_unknown_key_is_refused_by_name(
        key in "[a-z][a-z_]{2,20}",
        line in 0usize..40,
    ) {
        prop_assume!(!KEYS.contains(&key.as_str())
            && !["diode", "modbus", "devices", "blocks", "mqtt"].contains(&key.as_str()));
        let mut lines: Vec<&str> = VALID.lines().collect();
        let at = line % (lines.len() + 1);
        let extra = format!("{key} = 1");
        lines.insert(at, &extra);
        let text = lines.join("\n");
        match Config::parse(&text, ORIGIN) {
            Ok(_) => prop_assert!(false, "unknown key {key} accepted:\n{text}"),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains(ORIGIN), "{msg}");
                // Inserted in a table header's line slot, a key can land in another table
                // or break its syntax; it is still refused, and by name where it parsed.
                if matches!(e, ConfigError::Syntax { .. }) && msg.contains("unknown field") {
                    prop_assert!(msg.contains(&key), "{msg}");
                }
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_exhausting_the_stack(depth in 1usize..2000) {
        let value = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        check(&substitute("unit_ids", &value))?;
        let table = format!("x = {}1{}", "{a = ".repeat(depth), "}".repeat(depth));
        check(&table)?;
    }
}
