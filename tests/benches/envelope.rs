//! Micro-benchmarks of the proto hot paths: sealing, verifying, framing and reassembly of a
//! realistic 50-asset summary. `cargo bench --bench envelope`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outpost_proto::chain::ChainTip;
use outpost_proto::envelope::{parse, seal};
use outpost_proto::frame::fragment;
use outpost_proto::reassembly::{Reassembler, ReassemblyLimits};
use outpost_proto::{AgentId, SigningKey, ZoneId};
use outpost_testbed::workload::summary_body;

fn benches(c: &mut Criterion) {
    let (key, _) = SigningKey::generate().expect("key generation");
    let agent = AgentId::new("bench-gw").expect("valid id");
    let zone = ZoneId::new("bench-zone").expect("valid id");
    let body = summary_body(&agent, &zone, 50, 1);
    let sealed = seal(&key, &agent, &zone, &ChainTip::GENESIS, 1, &body).expect("seal");
    let public = key.public_key();

    let mut g = c.benchmark_group("envelope_50_assets");
    g.throughput(Throughput::Elements(1));
    g.bench_function("seal", |b| {
        b.iter(|| seal(&key, &agent, &zone, &ChainTip::GENESIS, 1, black_box(&body)))
    });
    g.bench_function("parse_verify", |b| {
        b.iter(|| parse(black_box(&sealed.wire)).and_then(|u| u.verify(&public)))
    });
    g.bench_function("parse_verify_decode", |b| {
        b.iter(|| {
            parse(black_box(&sealed.wire))
                .and_then(|u| u.verify(&public))
                .and_then(|v| v.body())
        })
    });
    g.finish();

    let datagrams = fragment(7, &sealed.wire).expect("fragment");
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Bytes(sealed.wire.len() as u64));
    g.bench_function("fragment", |b| {
        b.iter(|| fragment(7, black_box(&sealed.wire)))
    });
    g.bench_function("reassemble", |b| {
        let mut id = 0u64;
        let mut r = Reassembler::new(ReassemblyLimits::default());
        b.iter(|| {
            id += 1;
            let mut out = Vec::new();
            for d in &datagrams {
                out = r.push(id, d, 0).expect("valid datagram");
            }
            black_box(out)
        })
    });
    g.finish();
}

criterion_group!(envelope, benches);
criterion_main!(envelope);
