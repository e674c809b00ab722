//! Criterion micro-benches of rpc-core's codec: one frame encoded or decoded
//! per iteration, with a 64 B and a 4 KiB body (`payload` bytes of the echo
//! message, so 67 and 4099 bytes of protobuf).
//!
//! - `request/encode`: `frame::put_request` into a reused buffer (what the
//!   client does per call).
//! - `request/decode`: `frame::decode` of one request (what the server loop
//!   does per call), and the same frame through `benches::wire::decode`,
//!   the references' minimal decoder, for scale.
//! - `response/encode` and `response/decode`: the way back.
//!
//! `cargo bench -p benches --bench codec`

use bytes::{Bytes, BytesMut};
use criterion::{criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use prost::Message;
use rpc_core::frame;

use benches::proto::EchoMessage;
use benches::servers::{METHOD, SERVICE};

const PAYLOADS: [usize; 2] = [64, 4096];

fn body(payload: usize) -> Bytes {
    Bytes::from(EchoMessage { payload: Bytes::from(vec![0xa5u8; payload]) }.encode_to_vec())
}

fn request_frame(body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    frame::put_request(&mut buf, 42, 30_000, SERVICE, METHOD, body);
    buf
}

fn request(c: &mut Criterion) {
    let mut g = c.benchmark_group("request");
    for payload in PAYLOADS {
        let body = body(payload);
        let encoded = request_frame(&body);
        g.throughput(Throughput::Bytes(encoded.len() as u64));

        let mut buf = BytesMut::with_capacity(8192);
        g.bench_with_input(BenchmarkId::new("encode", payload), &body, |b, body| {
            b.iter(|| {
                buf.clear();
                frame::put_request(&mut buf, 42, 30_000, SERVICE, METHOD, std::hint::black_box(body));
                std::hint::black_box(&buf);
            })
        });
        g.bench_with_input(BenchmarkId::new("decode", payload), &encoded, |b, encoded| {
            b.iter_batched(
                || encoded.clone(),
                |mut buf| {
                    let f = frame::decode(&mut buf, frame::DEFAULT_MAX_FRAME).unwrap().unwrap();
                    // What the server loop asks of every request before routing it.
                    std::hint::black_box((f.service().len(), f.method().len()));
                    f
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_with_input(BenchmarkId::new("decode-reference", payload), &encoded, |b, encoded| {
            b.iter_batched(
                || encoded.clone(),
                |mut buf| benches::wire::decode(&mut buf).unwrap().unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn response(c: &mut Criterion) {
    let mut g = c.benchmark_group("response");
    for payload in PAYLOADS {
        let reply: Result<Bytes, rpc_core::Status> = Ok(body(payload));
        let mut encoded = BytesMut::new();
        frame::put_response(&mut encoded, 42, &reply);
        g.throughput(Throughput::Bytes(encoded.len() as u64));

        let mut buf = BytesMut::with_capacity(8192);
        g.bench_with_input(BenchmarkId::new("encode", payload), &reply, |b, reply| {
            b.iter(|| {
                buf.clear();
                frame::put_response(&mut buf, 42, std::hint::black_box(reply));
                std::hint::black_box(&buf);
            })
        });
        g.bench_with_input(BenchmarkId::new("decode", payload), &encoded, |b, encoded| {
            b.iter_batched(
                || encoded.clone(),
                |mut buf| frame::decode(&mut buf, frame::DEFAULT_MAX_FRAME).unwrap().unwrap().into_result(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

mod group {
    criterion::criterion_group!(codec, super::request, super::response);
}
criterion_main!(group::codec);
