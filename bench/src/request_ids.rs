//! What the clients send as `request_id`, the key the coordinator indexes every committed change by
//! for its retention window.
//!
//! Where an id lands in that index decides what it costs the coordinator to keep: sled keeps
//! bookkeeping in memory per page, and a page of keys that arrive in order is written once and left
//! alone, while a page of random keys takes its writes one at a time and keeps up to ten fragments,
//! each with its header in memory (`docs/benchmarks.md`, "Memory"). So the benchmark can send either.

/// The form of the clients' request ids (`--request-ids`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RequestIds {
    /// `c<client>-<n>`: each client's ids nearly in the order it sends them, as time-ordered ids
    /// (UUIDv7, what `tpc` and the coordinator make up for a request without one) arrive.
    #[default]
    Sequential,
    /// 122 random bits as a UUIDv4, as a client that makes its own ids at random sends them.
    Random,
}

impl RequestIds {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "sequential" => Some(Self::Sequential),
            "random" => Some(Self::Random),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sequential => "sequential",
            Self::Random => "random",
        }
    }
}

/// One client's request ids; a random client draws from a seed of its own, so a run repeats.
pub struct IdMaker {
    form: RequestIds,
    client: usize,
    rng: fastrand::Rng,
}

impl IdMaker {
    pub fn new(form: RequestIds, client: usize) -> Self {
        Self {
            form,
            client,
            rng: fastrand::Rng::with_seed(0x1d5_0000 + client as u64),
        }
    }

    /// The id of the client's `n`th request.
    pub fn id(&mut self, n: u64) -> String {
        match self.form {
            RequestIds::Sequential => format!("c{}-{n}", self.client),
            RequestIds::Random => {
                let bits = (u128::from(self.rng.u64(..)) << 64) | u128::from(self.rng.u64(..));
                // The version (4) and variant (10) bits of an RFC 9562 UUIDv4.
                let bits = (bits & !(0xf << 76) & !(0b11 << 62)) | (0x4 << 76) | (0b10 << 62);
                let hex = format!("{bits:032x}");
                format!(
                    "{}-{}-{}-{}-{}",
                    &hex[..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..]
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_name_the_client_and_the_request() {
        let mut ids = IdMaker::new(RequestIds::Sequential, 3);
        assert_eq!(ids.id(1), "c3-1");
        assert_eq!(ids.id(2), "c3-2");
    }

    #[test]
    fn random_ids_are_uuid_v4s_in_no_order_and_repeat_per_client() {
        let mut ids = IdMaker::new(RequestIds::Random, 5);
        let drawn: Vec<String> = (1..=200).map(|n| ids.id(n)).collect();
        for id in &drawn {
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(
                id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
                "{id}"
            );
            assert!(groups[2].starts_with('4'), "version 4: {id}");
            assert!(
                matches!(&groups[3][..1], "8" | "9" | "a" | "b"),
                "variant: {id}"
            );
        }
        let mut sorted = drawn.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), drawn.len(), "no id twice");
        let rising = drawn.windows(2).filter(|w| w[0] < w[1]).count();
        assert!((60..140).contains(&rising), "{rising} of 199 in order");
        let mut again = IdMaker::new(RequestIds::Random, 5);
        assert_eq!(again.id(1), drawn[0]);
        assert_ne!(IdMaker::new(RequestIds::Random, 6).id(1), drawn[0]);
    }

    #[test]
    fn forms_parse_by_name() {
        for form in [RequestIds::Sequential, RequestIds::Random] {
            assert_eq!(RequestIds::parse(form.as_str()), Some(form));
        }
        assert_eq!(RequestIds::parse("v4"), None);
    }
}
