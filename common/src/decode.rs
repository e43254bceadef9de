//! What an error decoding a stored record may say.
//!
//! serde_json's messages quote the value they stumbled on ("invalid type: string \"$argon2id$…\""), and
//! a stored record may hold a password hash: such a message must never reach a log, a status or a
//! client. Only the kind of error and where it is are kept.

/// The kind and position of a decode error, without any of the data.
pub fn decode_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "not the expected shape",
        serde_json::error::Category::Eof => "cut short",
    };
    format!("{kind} (line {}, column {})", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decode_error_never_quotes_the_data() {
        let secret = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
        let raw = format!("{{\"hash\": [\"{secret}\"]}}");
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Record {
            hash: String,
        }
        let e = serde_json::from_str::<Record>(&raw).unwrap_err();
        assert!(e.to_string().contains("argon2") || e.to_string().contains("sequence"));
        let said = decode_error(&e);
        assert!(!said.contains("argon2"), "{said}");
        assert!(said.contains("not the expected shape"), "{said}");
    }
}
