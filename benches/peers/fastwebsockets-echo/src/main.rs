//! The fastwebsockets echo server, as its crate's `examples/echo_server.rs`
//! runs it: hyper 1 answers the upgrade, `FragmentCollector` reassembles
//! messages (and answers pings and closes), every text or binary message is
//! written back. A current-thread tokio runtime, so that it uses one core
//! like one wsgate worker. Differences from the example: the listen address
//! comes from `--listen`, nothing is printed per connection (the churn
//! benchmark opens thousands per second), and TCP_NODELAY is set as wsgate
//! sets it.

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::net::TcpListener;

async fn handle_client(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn server_upgrade(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::task::spawn(async move {
        if let Err(e) = tokio::task::unconstrained(handle_client(fut)).await {
            // Resets at the end of a run are expected; keep quiet about them.
            if std::env::var_os("PEER_VERBOSE").is_some() {
                eprintln!("websocket: {e}");
            }
        }
    });
    Ok(response)
}

fn main() -> Result<(), WebSocketError> {
    let mut listen = "127.0.0.1:9001".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            other => panic!("unknown argument {other:?} (only --listen ADDR)"),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        eprintln!("fastwebsockets echo listening on {listen}");
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: do not end the benchmark peer.
                    eprintln!("accept: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = http1::Builder::new()
                    .serve_connection(io, service_fn(server_upgrade))
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    })
}
