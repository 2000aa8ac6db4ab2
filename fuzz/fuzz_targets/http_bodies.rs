//! The route's JSON request bodies and the name rules, fed arbitrary bytes: each parses or is
//! refused, never panics; a name the rules accept is NFC and has a skeleton.

#![no_main]

use cim_core::{NameRules, canonical_name, name_skeleton};
use cim_proto::http::{
    AddMemberRequest, CreateGroupRequest, Credentials, InvitationRequest, SendMessageRequest,
    SetRoleRequest, UpdateGroupRequest,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Credentials>(data);
    let _ = serde_json::from_slice::<SendMessageRequest>(data);
    let _ = serde_json::from_slice::<CreateGroupRequest>(data);
    let _ = serde_json::from_slice::<UpdateGroupRequest>(data);
    let _ = serde_json::from_slice::<AddMemberRequest>(data);
    let _ = serde_json::from_slice::<SetRoleRequest>(data);
    let _ = serde_json::from_slice::<InvitationRequest>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(name) = NameRules::default().validate("user name", text) {
            assert!(!name.is_empty());
            assert!(!canonical_name(&name).is_empty());
            assert!(!name_skeleton(&name).is_empty());
        }
    }
});
