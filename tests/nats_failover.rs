//! Two gateway nodes on a three-server NATS cluster (streams and presence
//! replicated three times); the server leading the channel's stream is
//! killed during traffic. JetStream elects another leader, a node connected
//! to the dead server reconnects to another one, and every subscriber ends
//! with every accepted publication, in order, on both nodes: nothing
//! silent, nothing lost.

mod nats_util;

use nats_util::*;
use serde_json::json;

#[test]
fn a_cluster_server_killed_during_traffic_loses_nothing_accepted() {
    let mut servers = NatsServer::cluster3();
    // Node a knows only s1 (it learns the others from the cluster); node b
    // only s2.
    let replicated = |c: &mut wsgate::config::Config| c.broker.nats_replicas = 3;
    let a = nats_node(&[servers[0].url()], replicated);
    let b = nats_node(&[servers[1].url()], replicated);
    let mut bystander = Client::connect(a.local_addr(), "");
    bystander.subscribe("elsewhere", None);
    let (readers, publisher) =
        start_traffic(a.local_addr(), b.local_addr(), b.local_addr(), "feed");

    // Kill the server that leads the channel's stream: JetStream must
    // elect another leader (and if it was s1 or s2, a node also loses its
    // connection and moves to another server).
    let epoch = publisher.accepted.lock().unwrap()[0].0.clone();
    let info = js_request(
        servers[2].port,
        &format!("$JS.API.STREAM.INFO.wsgate_{epoch}"),
        "",
    )
    .expect("stream info");
    assert_eq!(info["config"]["num_replicas"], json!(3), "{info}");
    let leader = info["cluster"]["leader"]
        .as_str()
        .expect("a leader")
        .to_owned();
    let victim = servers.iter_mut().find(|s| s.name == leader).unwrap();
    eprintln!("killing {leader}, the stream's leader");
    victim.kill();
    let before = publisher.accepted_count();
    wait_for(
        std::time::Duration::from_secs(30),
        "traffic after the failure",
        || publisher.accepted_count() >= before + 300,
    );
    for addr in [a.local_addr(), b.local_addr()] {
        let mut api = Api::new(addr);
        wait_for(
            TIMEOUT,
            "both nodes healthy on the two servers left",
            || api.get("/healthz").0 == 200,
        );
    }
    let failures = publisher.failures();
    let accepted = publisher.stop();
    eprintln!(
        "{} publications accepted, {failures} refused (503) during the failover",
        accepted.len()
    );
    let last = assert_nothing_lost(readers, &accepted);
    // Recovery still works on the node whose server died.
    let mut c = Client::connect(a.local_addr(), "");
    let (v, _) = c.subscribe("feed", Some((&last.0, last.1 - 10)));
    assert_eq!(v["recovered"], json!(true), "{v}");
    let got = c.collect_until(TIMEOUT, |e| offsets(e).len() == 10);
    assert_eq!(offsets(&got), (last.1 - 9..=last.1).collect::<Vec<_>>());
    assert_served(&mut bystander, "the bystander");
    a.stop().unwrap();
    b.stop().unwrap();
}
