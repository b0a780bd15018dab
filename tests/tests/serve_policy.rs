//! The network policy through `cairn serve`, end to end on the Linux guest and a fake internet
//! (tests/src/fake_internet.rs; no packet leaves the test's namespaces): `PUT
//! /v1/sandboxes/{name}/policy` changes the policy live (the guest's resolver then REFUSES a
//! denied name, and answers it again once the policy is open), `GET` shows what `cairn policy
//! show --json` shows, presets are listed, and bad input gets a 4xx JSON error. Root and KVM
//! only; needs nftables, dnsmasq and nsenter (scripts/deps).

use cairn_tests::fake_internet::{FakeInternet, RCODE};
use cairn_tests::kvm_available;
use cairn_tests::sandbox::CairnHome;
use cairn_tests::serve::Serve;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn serve_policy_routes_change_the_policy_live() {
    let name = "serve_policy_routes_change_the_policy_live";
    if !kvm_available(name) {
        return;
    }
    // SAFETY: trivial getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {name}: needs root (namespaces, nftables)");
        return;
    }
    cairn_tests::require_tools(name, &["nft", "dnsmasq", "nsenter", "python3"]);
    let inet = FakeInternet::up();
    std::env::set_var("CAIRN_NET_DNS", "198.18.77.53");
    let mut h = CairnHome::new();
    h.netns = Some(inet.host.clone());
    let serve = Serve::start(&h, &[]);

    h.create(
        "p1",
        &["--mem", "256", "--disk", "1", "--idle-timeout", "0"],
    );
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("rcode.pl");
    std::fs::write(&script, RCODE).unwrap();
    h.ok(&["cp", script.to_str().unwrap(), "p1:/root/rcode.pl"]);

    // GET: the network and the (open) policy, as `cairn policy show --json` has them.
    let (code, body) = serve.request("GET", "/v1/sandboxes/p1/policy", None);
    assert_eq!(code, 200, "{body}");
    let shown = json(&body);
    assert_eq!(shown["restricts"], false, "{body}");
    assert_eq!(shown["rules"], serde_json::json!([]));
    assert_eq!(json(&h.ok(&["policy", "show", "p1", "--json"])), shown);
    let gw = shown["network"]["gateway"].as_str().unwrap().to_string();
    let rcode = |q: &str| h.sh("p1", &format!("perl /root/rcode.pl {q} {gw}"));
    assert_eq!(rcode("denied.test").trim(), "rcode=0");

    // PUT: deny all but allowed.test, live.
    let (code, body) = serve.request(
        "PUT",
        "/v1/sandboxes/p1/policy",
        Some(r#"{"allow": ["allowed.test"], "deny": ["*"]}"#),
    );
    assert_eq!(code, 200, "{body}");
    let set = json(&body);
    assert_eq!(set["restricts"], true, "{body}");
    assert_eq!(
        set["rules"],
        serde_json::json!([
            {"action": "allow", "pattern": "allowed.test"},
            {"action": "deny", "pattern": "*"}
        ])
    );
    assert_eq!(rcode("denied.test").trim(), "rcode=5");
    assert_eq!(rcode("allowed.test").trim(), "rcode=0");
    assert_eq!(json(&h.ok(&["policy", "show", "p1", "--json"])), set);

    // A preset through the API, then open again.
    let (code, body) = serve.request(
        "PUT",
        "/v1/sandboxes/p1/policy",
        Some(r#"{"preset": "none"}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(rcode("allowed.test").trim(), "rcode=5");
    let (code, body) = serve.request("PUT", "/v1/sandboxes/p1/policy", Some("{}"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["restricts"], false);
    assert_eq!(rcode("denied.test").trim(), "rcode=0");

    // Presets, and bad input: 4xx with a JSON error, the policy unchanged.
    let (code, body) = serve.request("GET", "/v1/policy/presets", None);
    assert_eq!(code, 200, "{body}");
    let names: Vec<_> = json(&body)
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["open", "none", "dev"]);
    for (path, bad, want) in [
        ("/v1/sandboxes/p1/policy", r#"{"preset": "nope"}"#, 400),
        (
            "/v1/sandboxes/p1/policy",
            r#"{"allow": ["bad name!"]}"#,
            400,
        ),
        (
            "/v1/sandboxes/p1/policy",
            r#"{"allow": [], "oops": 1}"#,
            422,
        ),
        ("/v1/sandboxes/nope/policy", "{}", 404),
    ] {
        let (code, body) = serve.request("PUT", path, Some(bad));
        assert_eq!(code, want, "{bad}: {body}");
        assert!(json(&body)["error"].is_string(), "{body}");
    }
    assert_eq!(
        json(&h.ok(&["policy", "show", "p1", "--json"]))["restricts"],
        false
    );
    drop(serve);
}
