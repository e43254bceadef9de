//! Hand-written `Debug` for messages that carry a plaintext password: every field but the secret.

use std::fmt;

use crate::v1::{
    Register, RegisterUserRequest, Update, UpdatePasswordRequest, VerifyPasswordRequest,
};

const REDACTED: &str = "[redacted]";

impl fmt::Debug for RegisterUserRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterUserRequest")
            .field("user_id", &self.user_id)
            .field("email", &self.email)
            .field("password", &REDACTED)
            .field("request_id", &self.request_id)
            .finish()
    }
}

impl fmt::Debug for UpdatePasswordRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpdatePasswordRequest")
            .field("user_id", &self.user_id)
            .field("current_password", &REDACTED)
            .field("new_password", &REDACTED)
            .field("request_id", &self.request_id)
            .finish()
    }
}

impl fmt::Debug for Register {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Register")
            .field("user_id", &self.user_id)
            .field("email", &self.email)
            .field("password", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for Update {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Update")
            .field("user_id", &self.user_id)
            .field("current_password", &REDACTED)
            .field("new_password", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for VerifyPasswordRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyPasswordRequest")
            .field("user_id", &self.user_id)
            .field("password", &REDACTED)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_a_password() {
        let req = UpdatePasswordRequest {
            user_id: "alice".into(),
            current_password: "hunter2-old".into(),
            new_password: "hunter2-new".into(),
            request_id: "r1".into(),
        };
        let printed = format!("{req:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("alice"));
    }
}
