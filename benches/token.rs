//! Token micro-benchmarks: generation (CSPRNG + checksum + hex), parsing
//! (format and checksum check), hashing (the stored SHA-256), and the
//! verify hit path's shape check and hash.
//!
//! `cargo bench --bench token` (add `-- --quick` for a short run).

use std::hint::black_box;

use agent_tokens::domain::token::{PlainToken, PresentedToken};
use criterion::{criterion_group, criterion_main, Criterion};
use ring::rand::SystemRandom;

fn token(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let valid = PlainToken::generate(&rng).expect("the system RNG works");
    let text = valid.expose().to_owned();
    // The same token with its last character changed: fails the checksum.
    let mut typo = text.clone();
    let last = typo.pop().expect("a token is not empty");
    typo.push(if last == '0' { '1' } else { '0' });

    let mut group = c.benchmark_group("token");
    group.bench_function("generate", |b| {
        b.iter(|| PlainToken::generate(black_box(&rng)).expect("the system RNG works"))
    });
    group.bench_function("parse (PlainToken::parse)", |b| {
        b.iter(|| PlainToken::parse(black_box(&text)).expect("a valid token"))
    });
    // What verify does before it finds a remembered answer: shape, then hash.
    group.bench_function("shape+hash (PresentedToken::new)", |b| {
        b.iter(|| {
            *PresentedToken::new(black_box(&text))
                .expect("a valid token")
                .hash()
        })
    });
    group.bench_function("hash (PlainToken::hash)", |b| {
        b.iter(|| black_box(&valid).hash())
    });
    group.bench_function("display_prefix", |b| {
        b.iter(|| black_box(&valid).display_prefix())
    });
    group.bench_function("reject typo (bad checksum)", |b| {
        b.iter(|| {
            PresentedToken::new(black_box(&typo))
                .expect("a token's shape")
                .check()
                .expect_err("a typo")
        })
    });
    group.bench_function("reject JWT-shaped input (wrong prefix)", |b| {
        b.iter(|| PresentedToken::new(black_box("eyJhbGciOiJIUzI1NiJ9.e30.sig")).is_err())
    });
    group.finish();
}

criterion_group!(benches, token);
criterion_main!(benches);
