//! Topic creation that may be repeated: a topic that already exists is an outcome, not an
//! error, and the caller decides what it means (fine for a job's output topics, a warning for
//! the demo's source topic, a partition check for `<job>.speed`).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::error::{Error, Result};

/// What became of one requested topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    /// It was there already (its partitions and settings may differ from the request).
    Existed,
}

/// Creates `topics` through an admin client made from `client`, waiting for the request;
/// `operation_timeout` is how long the broker may take to finish creating them (`None`: it
/// answers once it accepted the request). Returns each topic's name and outcome, in the
/// broker's order; any refusal other than "already exists" is an error naming the topic.
pub fn create_topics(
    client: &ClientConfig,
    topics: &[NewTopic<'_>],
    operation_timeout: Option<Duration>,
) -> Result<Vec<(String, Created)>> {
    if topics.is_empty() {
        return Ok(Vec::new());
    }
    let admin: AdminClient<DefaultClientContext> = client
        .create()
        .map_err(Error::during("creating an admin client"))?;
    let options = AdminOptions::new().operation_timeout(operation_timeout);
    let names = topics
        .iter()
        .map(|topic| format!("`{}`", topic.name))
        .collect::<Vec<_>>()
        .join(", ");
    let results = futures::executor::block_on(admin.create_topics(topics, &options))
        .map_err(Error::during(format!("creating topics {names}")))?;
    results
        .into_iter()
        .map(|result| match result {
            Ok(topic) => Ok((topic, Created::New)),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => Ok((topic, Created::Existed)),
            Err((topic, code)) => Err(Error::during(format!("creating topic `{topic}`"))(
                KafkaError::AdminOp(code),
            )),
        })
        .collect()
}

/// Deletes `topics` (one that does not exist counts as deleted) and consumer `groups` (one
/// that does not exist counts too), waiting for the requests; any other refusal is an error
/// naming the topic or group.
pub fn delete_topics_and_groups(
    client: &ClientConfig,
    topics: &[&str],
    groups: &[&str],
    timeout: Duration,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client
        .create()
        .map_err(Error::during("creating an admin client"))?;
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    if !topics.is_empty() {
        let results = futures::executor::block_on(admin.delete_topics(topics, &options))
            .map_err(Error::during("deleting topics"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => {
                    return Err(Error::during(format!("deleting topic `{topic}`"))(
                        KafkaError::AdminOp(code),
                    ));
                }
            }
        }
    }
    if !groups.is_empty() {
        let results = futures::executor::block_on(admin.delete_groups(groups, &options))
            .map_err(Error::during("deleting consumer groups"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
                Err((group, code)) => {
                    return Err(Error::during(format!("deleting consumer group `{group}`"))(
                        KafkaError::AdminOp(code),
                    ));
                }
            }
        }
    }
    Ok(())
}
