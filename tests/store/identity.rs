//! Request IDs are scoped by the caller's identity end to end over the
//! PostgreSQL ledger: a server checking tokens, two identities sending the
//! same request ID through the real gRPC front. Neither replays the
//! other's outcome nor is refused as reusing it with another payload.

use std::{sync::Arc, time::Duration};

use abacus::{
    client::{BearerToken, Client, ClientConfig, tcp_channel},
    server::{
        self, Calculator, Edge, ServerConfig,
        auth::{Authenticator, tokens},
    },
    store::{
        DedupConfig, Ledger,
        postgres::{PgConfig, PgLedger},
    },
    trace::EventSink,
};
use tokio::net::TcpListener;

use crate::support::pg;

const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdefgh";

fn client(addr: std::net::SocketAddr, token: &str) -> Client {
    let config = ClientConfig {
        deadline: Duration::from_secs(10),
        attempt_timeout: Duration::from_secs(10),
        token: Some(BearerToken::new(token, "test").unwrap()),
        ..ClientConfig::default()
    };
    Client::new(tcp_channel(&addr.to_string()).unwrap(), config)
}

#[tokio::test]
async fn request_ids_are_scoped_by_identity_over_postgres() {
    let Some(db) = pg::fresh_database("identity_scope").await else {
        return;
    };
    let ledger: Arc<dyn Ledger> = Arc::new(
        PgLedger::connect(
            PgConfig::from_url(&db.url).unwrap(),
            DedupConfig::default(),
            EventSink::default(),
        )
        .await
        .unwrap(),
    );
    let entries = tokens::parse(&format!("alice write {ALICE}\nbob write {BOB}\n")).unwrap();
    let config = ServerConfig {
        edge: Edge {
            auth: Some(Arc::new(Authenticator::new(entries, None))),
            ..Edge::default()
        },
        ..ServerConfig::default()
    };
    let calculator = Calculator::from_config(&config, ledger);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve_calculator(
        calculator,
        server::tcp_incoming(listener),
        async {
            let _ = stopped.await;
        },
    ));
    let (alice, bob) = (client(addr, ALICE), client(addr, BOB));
    assert_eq!(
        alice.accumulate_with_id("r", 1.0, "id-1").await,
        Ok((1.0, false))
    );
    assert_eq!(
        bob.accumulate_with_id("r", 1.0, "id-1").await,
        Ok((2.0, false))
    );
    assert_eq!(
        bob.accumulate_with_id("r", 5.0, "id-2").await,
        Ok((7.0, false))
    );
    assert_eq!(
        alice.accumulate_with_id("r", 3.0, "id-2").await,
        Ok((10.0, false))
    );
    assert_eq!(
        alice.accumulate_with_id("r", 1.0, "id-1").await,
        Ok((1.0, true))
    );
    assert_eq!(
        bob.accumulate_with_id("r", 5.0, "id-2").await,
        Ok((7.0, true))
    );
    assert_eq!(alice.get("r").await, Ok(10.0));
}
