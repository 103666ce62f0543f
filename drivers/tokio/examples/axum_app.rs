//! An axum application that serves a peerlink node under `/peerlink`, next to its own routes,
//! on its own listener: peers use `http://127.0.0.1:8080/peerlink` as the node's base URL
//! (`peerlink send --url http://127.0.0.1:8080/peerlink --to app-node --key KEY hi`).
//! Messages to the node are printed; `GET /` is the application's own page.
//!
//! `cargo run -p peerlink-tokio --example axum_app [LISTEN]` (default `127.0.0.1:8080`).

use axum::Router;
use axum::routing::get;
use peerlink_core::{EntityId, Event, TrustPolicy};
use peerlink_tokio::{Config, Peerlink};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let identity = peerlink_tokio::keys::generate(EntityId::new("app-node")?)?;
    let key = identity.public_key().to_b64u();
    // Open policy: any entity that proves its key may talk to this node (spec §2.3).
    let config = Config { trust_policy: TrustPolicy::Open, ..Config::ephemeral() };
    let (node, peerlink) = Peerlink::router(config, identity).await?;

    let app = Router::new()
        .route("/", get(|| async { "the application's own page\n" }))
        .nest("/peerlink", peerlink);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("node_id     {}", node.id());
    println!("public_key  {key}");
    println!("url         http://{}/peerlink", listener.local_addr()?);

    let events = node.incoming().await?;
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let Event::Message { from, payload, .. } = event {
                println!("{from}\t{}", String::from_utf8_lossy(&payload));
            }
        }
    });
    axum::serve(listener, app).await?;
    Ok(())
}
