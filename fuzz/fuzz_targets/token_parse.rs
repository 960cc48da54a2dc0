//! Token parsing: never panics, and the constructor of a token agrees with
//! what the verify route accepts (its shape, then its checksum).
#![no_main]

use agent_tokens::domain::token::{PlainToken, PresentedToken};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(candidate) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = PlainToken::parse(candidate);
    let presented = PresentedToken::new(candidate);
    let verified = presented.as_ref().is_ok_and(|p| p.check().is_ok());
    assert_eq!(parsed.is_ok(), verified);
    if let (Ok(token), Ok(presented)) = (parsed, presented) {
        assert_eq!(token.hash(), *presented.hash());
        assert_eq!(token.expose(), candidate);
        let prefix = token.display_prefix();
        assert!(prefix.starts_with("sk_agt_") && prefix.ends_with("...") && prefix.len() == 18);
    }
});
