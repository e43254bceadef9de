//! Overload: a burst beyond what the participants can hash in time. In its own test binary, so it never
//! shares the CPU with other tests' clusters (the point is how tpc itself sheds load).

mod support;

use support::*;
use tonic::Code;
use tpc_proto::v1::RegisterUserRequest;

/// At the secure hashing cost the participants finish only a few dozen changes a second: a burst beyond
/// that is refused at once as overloaded (with a retry hint), never started only to miss its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_capacity_commits_or_is_refused_as_overloaded() -> Result {
    let env = env_with(tpc_harness::ClusterOptions {
        owasp_cost: true,
        ..Default::default()
    })
    .await?;
    let client = env.cluster.client().await?;
    let burst: Vec<_> = (0..48)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let user = format!("burst{i}");
                let answer = client
                    .register_user(RegisterUserRequest {
                        user_id: user.clone(),
                        email: format!("{user}@example.com"),
                        password: format!("{user}-first-password"),
                        request_id: String::new(),
                    })
                    .await;
                (user, answer)
            })
        })
        .collect();
    let (mut committed, mut refused) = (Vec::new(), Vec::new());
    for call in burst {
        let (user, answer) = call.await?;
        match answer {
            Ok(result) => {
                let result = result.into_inner();
                assert!(
                    support::committed(&result),
                    "{user}: aborted: {}",
                    result.reason
                );
                committed.push(user);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{user}: {status:?}");
                let pushback = status
                    .metadata()
                    .get("grpc-retry-pushback-ms")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                assert!(pushback.is_some_and(|ms| ms > 0), "{status:?}");
                refused.push(user);
            }
        }
    }
    assert!(!committed.is_empty());
    for user in &committed {
        assert_eq!(env.get_user_code(user).await?, Code::Ok, "{user}");
    }
    for user in &refused {
        assert_eq!(
            env.get_user_code(user).await?,
            Code::NotFound,
            "{user} changed nothing"
        );
    }
    Ok(())
}
