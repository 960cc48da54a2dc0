//! Token parsing: never panics, and the two parsers agree.
#![no_main]

use agent_tokens::domain::token::{PlainToken, TokenHash};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(candidate) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = PlainToken::parse(candidate);
    let hashed = TokenHash::of_presented(candidate);
    assert_eq!(parsed.is_ok(), hashed.is_ok());
    if let (Ok(token), Ok(hash)) = (parsed, hashed) {
        assert_eq!(token.hash(), hash);
        assert_eq!(token.expose(), candidate);
        let prefix = token.display_prefix();
        assert!(prefix.starts_with("sk_agt_") && prefix.ends_with("...") && prefix.len() == 18);
    }
});
