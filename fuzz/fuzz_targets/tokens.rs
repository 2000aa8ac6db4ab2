//! Token checks, fed arbitrary strings as a `Login` frame's or a bearer header's token: every
//! input is refused (or, for a real token, accepted) without a panic, and nothing but a token
//! signed with the key is ever accepted.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use cim_core::UserId;
use cim_core::token::TokenKey;
use libfuzzer_sys::fuzz_target;

fn key() -> &'static TokenKey {
    static KEY: OnceLock<TokenKey> = OnceLock::new();
    KEY.get_or_init(|| TokenKey::new(&[7; 32]).expect("a 32-byte key"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(claims) = key().verify(text) {
        // Only this key's own tokens verify; the fuzzer cannot forge a signature, so an
        // accepted token must round-trip through a refresh.
        let (fresh, _) = key()
            .refresh(&claims, Duration::from_secs(60))
            .expect("refresh a valid token");
        assert_eq!(key().verify(&fresh).expect("fresh").user_id, claims.user_id);
    }
    let _ = key().verify_invitation(text);
    // A token with the fuzzer's text as its name round-trips.
    if let Ok((token, _)) = key().issue(UserId(1), text, Duration::from_secs(60)) {
        assert_eq!(key().verify(&token).expect("issued").user_name, text);
    }
});
