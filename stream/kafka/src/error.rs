//! The error type of `sluice-kafka`: rdkafka's error with what was being done, and on which
//! topic and partition, so a caller only has to add its own context (the job) in front.

use std::time::Duration;

use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client call failed; `during` says what it was doing, naming the topic when there is
    /// one.
    #[error("kafka: while {during}: {source}")]
    Client {
        during: String,
        #[source]
        source: KafkaError,
    },
    /// [`wait_for_topic`](crate::wait_for_topic) gave up.
    #[error("topic `{topic}` has no partitions after {waited:?}")]
    NoPartitions { topic: String, waited: Duration },
    /// [`read_partition`](crate::read_partition) did not reach the end in time.
    #[error(
        "reading `{topic}` [{partition}]: not at the end after {waited:?} ({read} records read; high watermark {high})"
    )]
    NotAtEnd {
        topic: String,
        partition: i32,
        waited: Duration,
        read: usize,
        high: i64,
    },
    /// A record of partition `partition` of `topic` could not be read.
    #[error("reading `{topic}` [{partition}]: {source}")]
    Read {
        topic: String,
        partition: i32,
        #[source]
        source: KafkaError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a failed client call: `.map_err(Error::during("creating an admin client"))`.
    pub fn during(during: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
        let during = during.into();
        move |source| Error::Client { during, source }
    }

    /// The topic the error is about, when it is about one.
    pub fn topic(&self) -> Option<&str> {
        match self {
            Error::Client { .. } => None,
            Error::NoPartitions { topic, .. }
            | Error::NotAtEnd { topic, .. }
            | Error::Read { topic, .. } => Some(topic),
        }
    }

    /// The partition the error is about, when it is about one.
    pub fn partition(&self) -> Option<i32> {
        match self {
            Error::NotAtEnd { partition, .. } | Error::Read { partition, .. } => Some(*partition),
            Error::Client { .. } | Error::NoPartitions { .. } => None,
        }
    }

    /// rdkafka's error underneath, if there is one.
    pub fn kafka(&self) -> Option<&KafkaError> {
        match self {
            Error::Client { source, .. } | Error::Read { source, .. } => Some(source),
            Error::NoPartitions { .. } | Error::NotAtEnd { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    #[test]
    fn messages_say_what_was_being_done() {
        let error = Error::during("creating topic `t`")(KafkaError::AdminOp(
            RDKafkaErrorCode::InvalidPartitions,
        ));
        assert!(
            error
                .to_string()
                .starts_with("kafka: while creating topic `t`: "),
            "{error}"
        );
        assert!(error.kafka().is_some());
        let error = Error::NotAtEnd {
            topic: "j.speed".into(),
            partition: 3,
            waited: Duration::from_secs(2),
            read: 7,
            high: 9,
        };
        assert_eq!(
            error.to_string(),
            "reading `j.speed` [3]: not at the end after 2s (7 records read; high watermark 9)"
        );
        assert_eq!(
            (error.topic(), error.partition()),
            (Some("j.speed"), Some(3))
        );
    }
}
