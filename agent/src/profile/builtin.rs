//! The built-in profiles, compiled in from `agent/profiles/`.

/// (file name, text) of every built-in profile.
pub const FILES: [(&str, &str); 6] = [
    (
        "abb-acs-drive.toml",
        include_str!("../../profiles/abb-acs-drive.toml"),
    ),
    (
        "janitza-umg.toml",
        include_str!("../../profiles/janitza-umg.toml"),
    ),
    (
        "phoenix-bus-coupler.toml",
        include_str!("../../profiles/phoenix-bus-coupler.toml"),
    ),
    (
        "schneider-modicon-m2xx.toml",
        include_str!("../../profiles/schneider-modicon-m2xx.toml"),
    ),
    (
        "siemens-s7-1200.toml",
        include_str!("../../profiles/siemens-s7-1200.toml"),
    ),
    (
        "wago-pfc200.toml",
        include_str!("../../profiles/wago-pfc200.toml"),
    ),
];
