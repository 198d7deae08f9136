//! Client configuration, built one way everywhere: the brokers, then what the caller needs,
//! then the user's `-X key=value` overrides, last, so the user always has the final word.

use rdkafka::ClientConfig;

/// A client configuration: `bootstrap.servers`, then `settings`, then `overrides` (in order; a
/// key given twice keeps its last value).
pub fn client_config(
    brokers: &str,
    overrides: &[(String, String)],
    settings: impl FnOnce(&mut ClientConfig),
) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    settings(&mut client);
    for (key, value) in overrides {
        client.set(key, value);
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overrides_win_over_settings_and_brokers() {
        let overrides = pairs(&[
            ("linger.ms", "50"),
            ("bootstrap.servers", "elsewhere:9092"),
            ("linger.ms", "7"),
        ]);
        let client = client_config("here:9092", &overrides, |client| {
            client.set("linger.ms", "5").set("acks", "all");
        });
        assert_eq!(client.get("bootstrap.servers"), Some("elsewhere:9092"));
        assert_eq!(client.get("linger.ms"), Some("7"));
        assert_eq!(client.get("acks"), Some("all"));
    }

    #[test]
    fn without_overrides_the_settings_stand() {
        let client = client_config("here:9092", &[], |client| {
            client.set("group.id", "g");
        });
        assert_eq!(client.get("bootstrap.servers"), Some("here:9092"));
        assert_eq!(client.get("group.id"), Some("g"));
    }
}
