//! Graceful shutdown: in-flight requests finish, new connections are refused, `run` returns.

use std::sync::atomic::Ordering;

use crate::support::{TestServer, alice};

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let server = TestServer::start().await;
    server.issuer.gate.store(true, Ordering::SeqCst);
    let mut client = server.client(alice()).await;
    let in_flight = tokio::spawn(async move { client.login("{}").await });
    server.issuer.entered.notified().await;

    server.shutdown.cancel();
    // Accepting stops once shutdown is signalled; the login in flight is still answered.
    server.issuer.release.notify_one();
    let response = in_flight.await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());

    server.task.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}
