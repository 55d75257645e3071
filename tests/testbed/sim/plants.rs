//! Ready-made plants: a small realistic line for demos and tests, and generated ones for load.
//!
//! Every device has a "setpoints"/"config" holding block at 100.. (stable unless written: what
//! drift detection watches) and a "process" input block at 0.. (changes on every read).
//! Vendor names, product codes and revisions imitate real products; the devices are simulated.

use std::time::Duration;

use super::spec::{Behaviour, DeviceSpec, Fc43Fault, SimIdentity};

/// Where the configuration holding block starts on every simulated device.
pub const CONFIG_START: u16 = 100;
/// Where the process input block starts on every simulated device.
pub const PROCESS_START: u16 = 0;

fn s(text: &str) -> String {
    text.to_owned()
}

fn bits(pattern: &[u8]) -> Vec<bool> {
    pattern.iter().map(|b| *b != 0).collect()
}

/// Five devices of a small mixing/pressing line:
///
/// | # | name          | imitates                                  | unit ids | notes                     |
/// |---|---------------|-------------------------------------------|----------|---------------------------|
/// | 0 | mixer-plc     | Schneider Electric Modicon M221           | 1        |                           |
/// | 1 | press-gw      | Siemens S7-1200 behind a Modbus gateway   | 1, 2     | two CPUs behind a gateway |
/// | 2 | pump-vfd      | ABB ACS580 drive                          | 1        |                           |
/// | 3 | io-coupler    | Phoenix Contact Inline bus coupler        | 1        | extended objects 0x80/81  |
/// | 4 | feeder-meter  | Janitza UMG 96 energy meter               | 1        | no FC 43: FC 17 only      |
pub fn default_plant() -> Vec<DeviceSpec> {
    vec![
        DeviceSpec {
            name: s("mixer-plc"),
            identity: SimIdentity {
                vendor_name: s("Schneider Electric"),
                product_code: s("TM221CE24T"),
                revision: s("V1.11.2.0"),
                vendor_url: Some(s("https://www.se.com")),
                product_name: Some(s("Modicon M221")),
                model_name: Some(s("TM221CE24T")),
                user_application_name: Some(s("MIXER_LINE1")),
                extra: vec![],
            },
            unit_ids: vec![1],
            // speed rpm, mix time s, temperature setpoint 0.1 °C, batch size kg, recipe no, alarms
            holding: vec![(CONFIG_START, vec![1200, 300, 655, 450, 7, 1, 0, 0])],
            // motor current 0.1 A, tank temperature 0.1 °C, level %, pressure mbar
            input: vec![(PROCESS_START, vec![112, 641, 72, 1013])],
            coils: vec![(0, bits(&[1, 0, 1, 1, 0, 0, 0, 0]))],
            discrete: vec![(0, bits(&[1, 1, 0, 0, 1, 0, 0, 0]))],
            behaviour: Behaviour::Normal,
        },
        DeviceSpec {
            name: s("press-gw"),
            identity: SimIdentity {
                vendor_name: s("Siemens"),
                product_code: s("6ES7 214-1AG40-0XB0"),
                revision: s("V4.5.2"),
                vendor_url: Some(s("https://www.siemens.com")),
                product_name: Some(s("SIMATIC S7-1200 (Modbus TCP gateway)")),
                model_name: Some(s("CPU 1214C DC/DC/DC")),
                user_application_name: Some(s("PRESS_CTRL")),
                extra: vec![],
            },
            unit_ids: vec![1, 2],
            // press force kN, dwell ms, stroke mm, cycle limit, tool id
            holding: vec![(CONFIG_START, vec![250, 800, 120, 30, 3, 0])],
            input: vec![(PROCESS_START, vec![0, 248, 1190, 35])],
            coils: vec![(0, bits(&[0, 1, 0, 0]))],
            discrete: vec![(0, bits(&[1, 0, 1, 0]))],
            behaviour: Behaviour::Normal,
        },
        DeviceSpec {
            name: s("pump-vfd"),
            identity: SimIdentity {
                vendor_name: s("ABB"),
                product_code: s("ACS580-01-12A7-4"),
                revision: s("V2.15.0.1"),
                vendor_url: Some(s("https://new.abb.com/drives")),
                product_name: Some(s("ACS580 general purpose drive")),
                model_name: Some(s("ACS580-01")),
                user_application_name: None,
                extra: vec![],
            },
            unit_ids: vec![1],
            // max frequency 0.01 Hz, accel 0.1 s, decel 0.1 s, motor nominal current 0.1 A,
            // control mode, reference source
            holding: vec![(CONFIG_START, vec![5000, 100, 100, 127, 1, 2])],
            // output frequency 0.01 Hz, current 0.1 A, DC bus V, heatsink °C
            input: vec![(PROCESS_START, vec![4210, 98, 560, 41])],
            coils: vec![(0, bits(&[1, 0]))],
            discrete: vec![(0, bits(&[1, 0, 0, 0]))],
            behaviour: Behaviour::Normal,
        },
        DeviceSpec {
            name: s("io-coupler"),
            identity: SimIdentity {
                vendor_name: s("Phoenix Contact"),
                product_code: s("2703981"),
                revision: s("V1.40"),
                vendor_url: Some(s("https://www.phoenixcontact.com")),
                product_name: Some(s("Inline Modbus TCP bus coupler")),
                model_name: Some(s("IL ETH BK DI8 DO4 2TX-PAC")),
                user_application_name: None,
                extra: vec![(0x80, s("SN 1234567")), (0x81, s("HW 03"))],
            },
            unit_ids: vec![1],
            // watchdog ms, output fault state, process data mapping version
            holding: vec![(CONFIG_START, vec![500, 0, 2, 0])],
            input: vec![(PROCESS_START, vec![0x00A5, 0x0003])],
            coils: vec![(0, bits(&[0, 0, 1, 0]))],
            discrete: vec![(0, bits(&[1, 0, 1, 0, 0, 1, 1, 0]))],
            behaviour: Behaviour::Normal,
        },
        DeviceSpec {
            name: s("feeder-meter"),
            identity: SimIdentity {
                vendor_name: s("Janitza electronics"),
                product_code: s("UMG 96-PA"),
                revision: s("V2.3.14"),
                vendor_url: Some(s("https://www.janitza.com")),
                product_name: Some(s("UMG 96-PA power analyser")),
                model_name: Some(s("UMG 96-PA")),
                user_application_name: None,
                extra: vec![],
            },
            unit_ids: vec![1],
            // CT primary A, CT secondary A, VT ratio, averaging period s
            holding: vec![(CONFIG_START, vec![400, 5, 1, 900])],
            // L1-N V, L2-N V, L3-N V, total power 0.1 kW, frequency 0.01 Hz
            input: vec![(PROCESS_START, vec![2301, 2298, 2305, 1874, 5000])],
            coils: vec![],
            discrete: vec![],
            behaviour: Behaviour::NoDeviceId,
        },
    ]
}

struct Template {
    kind: &'static str,
    vendor: &'static str,
    product: &'static str,
    model: &'static str,
    url: &'static str,
    product_name: &'static str,
}

const TEMPLATES: [Template; 6] = [
    Template {
        kind: "plc",
        vendor: "Schneider Electric",
        product: "TM241CE40T",
        model: "TM241CE40T",
        url: "https://www.se.com",
        product_name: "Modicon M241",
    },
    Template {
        kind: "plc",
        vendor: "Siemens",
        product: "6ES7 215-1AG40-0XB0",
        model: "CPU 1215C DC/DC/DC",
        url: "https://www.siemens.com",
        product_name: "SIMATIC S7-1200",
    },
    Template {
        kind: "vfd",
        vendor: "ABB",
        product: "ACS880-01-025A-3",
        model: "ACS880-01",
        url: "https://new.abb.com/drives",
        product_name: "ACS880 industrial drive",
    },
    Template {
        kind: "io",
        vendor: "Phoenix Contact",
        product: "2688459",
        model: "AXL F BK ETH",
        url: "https://www.phoenixcontact.com",
        product_name: "Axioline F bus coupler",
    },
    Template {
        kind: "meter",
        vendor: "Janitza electronics",
        product: "UMG 604-PRO",
        model: "UMG 604-PRO",
        url: "https://www.janitza.com",
        product_name: "UMG 604-PRO power analyser",
    },
    Template {
        kind: "plc",
        vendor: "WAGO",
        product: "750-8212",
        model: "PFC200 G2 2ETH RS",
        url: "https://www.wago.com",
        product_name: "Controller PFC200",
    },
];

/// `n` varied devices for load tests: vendors and kinds in rotation, revisions and block sizes
/// varying, every fourth device behind a gateway with unit ids 1 and 2. All answer normally.
/// Deterministic: the same `n` always gives the same plant.
pub fn generated_plant(n: usize) -> Vec<DeviceSpec> {
    (0..n)
        .map(|i| {
            let t = &TEMPLATES[i % TEMPLATES.len()];
            let seed = u16::try_from(i % 1000).unwrap_or(0);
            let config_len = 4 + i % 13;
            let process_len = 2 + i % 7;
            DeviceSpec {
                name: format!("{}-{:04}", t.kind, i + 1),
                identity: SimIdentity {
                    vendor_name: t.vendor.to_owned(),
                    product_code: t.product.to_owned(),
                    revision: format!("V{}.{}.{}", 1 + i % 4, (i / 4) % 10, (i * 7) % 23),
                    vendor_url: Some(t.url.to_owned()),
                    product_name: Some(t.product_name.to_owned()),
                    model_name: Some(t.model.to_owned()),
                    user_application_name: (i % 3 == 0).then(|| format!("LINE{}_APP", 1 + i / 10)),
                    extra: if i % 5 == 0 {
                        vec![(0x80, format!("SN {:07}", 1_000_000 + i))]
                    } else {
                        vec![]
                    },
                },
                unit_ids: if i % 4 == 3 { vec![1, 2] } else { vec![1] },
                holding: vec![(
                    CONFIG_START,
                    (0..config_len)
                        .map(|k| seed.wrapping_mul(31).wrapping_add(k as u16 * 10))
                        .collect(),
                )],
                input: vec![(
                    PROCESS_START,
                    (0..process_len).map(|k| 200 + k as u16 * 100).collect(),
                )],
                coils: vec![(0, (0..8).map(|k| (i + k) % 3 == 0).collect())],
                discrete: vec![(0, (0..8).map(|k| (i + k) % 2 == 0).collect())],
                behaviour: Behaviour::Normal,
            }
        })
        .collect()
}

/// `n` devices for discovery: [`generated_plant`] with a mix of what a scan meets in the field.
/// By index `i`:
/// - `i % 10 == 9`: an older device without FC 43 (FC 17 only);
/// - `i % 16 == 7`: a multi-unit gateway answering unit ids 1, 2 and 3;
/// - `i % 25 == 11`: answers "server busy" (exception 06) to its first two requests;
/// - `i % 25 == 13`: slow (answers after 150 ms);
/// - `i % 50 == 17`: a FC 43 fault, rotating through [`Fc43Fault`];
/// - `i` in `silent`: accepts connections and never answers.
///
/// Everything else answers normally. Deterministic.
pub fn varied_plant(n: usize, silent: &[usize]) -> Vec<DeviceSpec> {
    const FAULTS: [Fc43Fault; 6] = [
        Fc43Fault::WrongCount,
        Fc43Fault::Truncated,
        Fc43Fault::InvalidUtf8,
        Fc43Fault::EndlessMoreFollows,
        Fc43Fault::IndividualOnly,
        Fc43Fault::FewerObjects,
    ];
    let mut plant = generated_plant(n);
    for (i, d) in plant.iter_mut().enumerate() {
        if i % 10 == 9 {
            d.behaviour = Behaviour::NoDeviceId;
        } else if i % 25 == 11 {
            d.behaviour = Behaviour::Busy(2);
        } else if i % 25 == 13 {
            d.behaviour = Behaviour::Slow(Duration::from_millis(150));
        } else if i % 50 == 17 {
            d.behaviour = Behaviour::BadFc43(FAULTS[(i / 50) % FAULTS.len()]);
        }
        if i % 16 == 7 {
            d.unit_ids = vec![1, 2, 3];
        }
        if silent.contains(&i) {
            d.behaviour = Behaviour::Silent;
        }
    }
    plant
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plants_are_valid_and_names_unique() {
        for plant in [default_plant(), generated_plant(250)] {
            let mut names: Vec<&str> = plant.iter().map(|d| d.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), plant.len());
            for d in &plant {
                d.validate().unwrap();
                assert!(d.holding.iter().any(|(start, _)| *start == CONFIG_START));
                assert!(d.input.iter().any(|(start, _)| *start == PROCESS_START));
            }
        }
        assert_eq!(generated_plant(7), generated_plant(7));
    }
}
