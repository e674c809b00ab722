//! The golden files compile, pass clippy as part of this crate's tests, and
//! work: a store served through the generated adapter answers the generated
//! client, with `()` for `google.protobuf.Empty`, a type from another package,
//! methods named after Rust keywords and a wrapper type that is a primitive.

use std::sync::Mutex;

use rpc_core::client::{Channel, Config as ClientConfig};
use rpc_core::server::{Builder, Config, Context};
use rpc_core::{Code, Error, Status};

// Only part of each generated API is exercised here; the rest must still compile.
#[allow(dead_code, unused_imports)]
mod echo {
    include!("golden/echo.rs");
}

#[allow(dead_code, unused_imports)]
mod fixtures {
    pub mod common {
        include!("golden/fixtures.common.rs");
    }
    pub mod store {
        include!("golden/fixtures.store.rs");
    }
}

use fixtures::common::Id;
use fixtures::store::{GetReply, GetRequest, KvStore, KvStoreClient, KvStoreServer, PutRequest};

/// Keeps the last value put.
#[derive(Default)]
struct Memory(Mutex<Vec<(String, Vec<u8>)>>);

impl KvStore for Memory {
    fn get(&self, _ctx: &Context, request: GetRequest) -> Result<GetReply, Status> {
        let values = self.0.lock().unwrap();
        let value = values.iter().rev().find(|(k, _)| *k == request.key).map(|(_, v)| v.clone());
        value.map(|value| GetReply { value }).ok_or_else(|| Status::not_found(request.key))
    }

    fn put(&self, _ctx: &Context, request: PutRequest) -> Result<(), Status> {
        self.0.lock().unwrap().push((request.key, request.value));
        Ok(())
    }

    fn delete(&self, _ctx: &Context, _request: Id) -> Result<(), Status> {
        Err(Status::failed_precondition("values are never deleted"))
    }

    fn r#type(&self, _ctx: &Context, _request: ()) -> Result<Id, Status> {
        Ok(Id { value: self.0.lock().unwrap().len() as u64 })
    }
}

#[test]
fn generated_store_serves_and_calls() {
    let server = Builder::new(Config::default())
        .service(KvStoreServer(Memory::default()))
        .bind("127.0.0.1:0")
        .unwrap();
    let channel = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    let client = KvStoreClient::new(channel);

    client.put(&PutRequest { key: "a".into(), value: b"1".to_vec() }).unwrap();
    assert_eq!(client.get(&GetRequest { key: "a".into() }).unwrap().value, b"1");
    assert_eq!(client.r#type(&()).unwrap(), Id { value: 1 });

    let missing = client.get(&GetRequest { key: "b".into() }).unwrap_err();
    assert!(matches!(&missing, Error::Status(s) if s.code == Code::NotFound), "{missing}");
    let refused = client.delete(&Id { value: 1 }).unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);

    let (tx, rx) = std::sync::mpsc::channel();
    client.type_with(&(), move |result| tx.send(result.map(|id| id.value)).unwrap());
    assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap().unwrap(), 1);
}

#[test]
fn generated_names_match_the_proto() {
    use fixtures::store::{empty_rpc, kv_store_rpc, store_rpc};
    assert_eq!(kv_store_rpc::SERVICE_NAME, "fixtures.store.KVStore");
    assert_eq!(kv_store_rpc::methods::TYPE, "Type");
    assert_eq!(store_rpc::SERVICE_NAME, "fixtures.store.Store");
    assert_eq!(empty_rpc::SERVICE_NAME, "fixtures.store.Empty");
    assert_eq!(fixtures::store::counter_rpc::methods::SELF, "Self");
    assert_eq!(echo::echo_rpc::methods::SAY, "Say");
    // The message keeps the package-level name; the stub lives in its module.
    let _message = fixtures::store::StoreClient { name: String::new() };
    let _stub: fn(Channel) -> store_rpc::StoreClient = store_rpc::StoreClient::new;
}

#[test]
fn declared_placements_reach_the_served_service() {
    use fixtures::store::kv_store_rpc::methods;
    use rpc_core::server::Service;
    // The golden files were generated with KVStore/Put heavy and KVStore/Type in the lane "scans".
    let served = KvStoreServer(Memory::default());
    assert_eq!(served.lanes(), [(methods::PUT, "heavy"), (methods::TYPE, "scans")]);
    assert!(!served.runs_inline(methods::GET));
}

/// Answers `Counter.Self` with a fixed count.
struct Seven;

impl fixtures::store::Counter for Seven {
    fn self_(&self, _ctx: &Context, _request: ()) -> Result<i64, Status> {
        Ok(7)
    }
}

#[test]
fn a_keyword_rpc_answering_a_wrapper_type_works() {
    let server = Builder::new(Config::default())
        .service(fixtures::store::CounterServer(Seven))
        .bind("127.0.0.1:0")
        .unwrap();
    let channel = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    let client = fixtures::store::CounterClient::new(channel);
    assert_eq!(client.self_(&()).unwrap(), 7);
    let (tx, rx) = std::sync::mpsc::channel();
    client.self_with(&(), move |result| tx.send(result).unwrap());
    assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap().unwrap(), 7);
}
