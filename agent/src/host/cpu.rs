//! The CPU model from `/proc/cpuinfo`, for when sysinfo has no brand (common on ARM boards).

use std::path::Path;

use super::{Problems, cut_text};

/// Keys naming the CPU model, most specific first: x86 (`model name`), ARM boards
/// (`Hardware`, `Model`), older ARM kernels (`Processor`), RISC-V (`uarch`), POWER (`cpu`).
const MODEL_KEYS: [&str; 6] = [
    "model name",
    "Hardware",
    "Model",
    "Processor",
    "uarch",
    "cpu",
];

/// The CPU model named in `cpuinfo` text, if any.
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    let fields: Vec<(&str, &str)> = cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    MODEL_KEYS.iter().find_map(|key| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| cut_text((*v).to_owned()))
    })
}

/// Reads `<proc_root>/cpuinfo`; an unreadable file is a problem line.
pub fn from_proc(proc_root: &Path, problems: &mut Problems) -> Option<String> {
    match std::fs::read_to_string(proc_root.join("cpuinfo")) {
        Ok(text) => parse_cpu_model(&text),
        Err(e) => {
            problems.push(format!(
                "cpu model: cannot read /proc/cpuinfo ({})",
                e.kind()
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_model_name() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Atom(TM) CPU E3845 @ 1.91GHz\nflags\t\t: fpu vme\n\nprocessor\t: 1\nmodel name\t: Intel(R) Atom(TM) CPU E3845 @ 1.91GHz\n";
        assert_eq!(
            parse_cpu_model(text).as_deref(),
            Some("Intel(R) Atom(TM) CPU E3845 @ 1.91GHz")
        );
    }

    #[test]
    fn arm_board_without_model_name() {
        let text = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n\nHardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n";
        assert_eq!(parse_cpu_model(text).as_deref(), Some("BCM2835"));
    }

    #[test]
    fn malformed_and_empty_text_names_nothing() {
        assert_eq!(parse_cpu_model(""), None);
        assert_eq!(parse_cpu_model("garbage without colons\n\u{0}\u{1}"), None);
        assert_eq!(parse_cpu_model("model name\t:\nHardware:   \n"), None);
        let long = format!("model name: {}", "x".repeat(2000));
        assert_eq!(parse_cpu_model(&long).map(|m| m.len()), Some(512));
    }

    #[test]
    fn a_missing_file_is_a_problem_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut problems = Problems::default();
        assert_eq!(from_proc(dir.path(), &mut problems), None);
        assert_eq!(
            problems.into_sorted(),
            vec!["cpu model: cannot read /proc/cpuinfo (entity not found)".to_owned()]
        );
    }
}
