use super::*;
use jsonwebtoken::{EncodingKey, Header, encode};

/// A key pair made for these tests only.
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIKGpLRRydUXCVpxhzTJO3i735inL8HNx2NhC63Ub/aLD
-----END PRIVATE KEY-----
";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAmABgZFBqCY3gJgg1aw3YK6j//Yd7y0e4XCnfA4f3E6k=
-----END PUBLIC KEY-----
";
const SECRET: &str = "a shared secret of at least 32 bytes";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn settings() -> AuthSettings {
    AuthSettings {
        identities: vec![IdentityConfig {
            certificates: Vec::new(),
            identity: "billing".into(),
            namespace: None,
            tokens_sha256: vec![token::to_hex(&token::hash("bct_billing"))],
            rights: RightsConfig::default(),
        }],
        jwt_keys: vec![
            JwtKeyConfig {
                kid: None,
                algorithm: JwtAlgorithm::HS256,
                secret: Some(SECRET.into()),
                secret_file: None,
                public_key: None,
                public_key_file: None,
            },
            JwtKeyConfig {
                kid: Some("ed".into()),
                algorithm: JwtAlgorithm::EdDSA,
                secret: None,
                secret_file: None,
                public_key: Some(ED_PUBLIC.into()),
                public_key_file: None,
            },
        ],
        ..AuthSettings::default()
    }
}

fn hs256(claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn no_identity_and_no_key_means_no_credentials() {
    assert!(
        Credentials::new(&AuthSettings::default())
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_service_token_proves_its_identity_and_nothing_else_does() {
    let c = Credentials::new(&settings()).unwrap().unwrap();
    let g = c.authenticate("bct_billing").unwrap();
    assert_eq!(&*g.identity, "billing");
    assert_eq!(g.expires_ms, None);
    assert!(g.rights.may_take("billing"));
    assert_eq!(c.authenticate("bct_other").unwrap_err(), "unknown token");
    assert!(c.authenticate("").is_err());
}

#[test]
fn a_jwt_carries_identity_rights_and_expiry() {
    let c = Credentials::new(&settings()).unwrap().unwrap();
    let exp = now() + 600;
    let token = hs256(serde_json::json!({
        "sub": "shipping", "exp": exp,
        "broadcast": { "names": ["shipping.*"], "send_all": false },
    }));
    let g = c.authenticate(&token).unwrap();
    assert_eq!(&*g.identity, "shipping");
    assert_eq!(g.expires_ms, Some(exp * 1000));
    assert!(g.rights.may_take("shipping.eu"));
    assert!(!g.rights.may_take("shipping"));
    assert!(
        g.rights
            .check_send(&broadcast_protocol::Target::All)
            .is_err()
    );

    let ed = encode(
        &Header {
            kid: Some("ed".into()),
            ..Header::new(jsonwebtoken::Algorithm::EdDSA)
        },
        &serde_json::json!({ "sub": "audit", "exp": exp }),
        &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(&*c.authenticate(&ed).unwrap().identity, "audit");
}

#[test]
fn expired_early_forged_malformed_and_revoked_jwts_are_refused() {
    let mut s = settings();
    s.jwt_leeway_secs = 5;
    s.revoked_jti = vec!["stolen".into()];
    s.revoked_before.insert("old".into(), now() - 100);
    let c = Credentials::new(&s).unwrap().unwrap();
    let t = now();
    let refused = |claims: serde_json::Value| c.authenticate(&hs256(claims)).unwrap_err();
    assert!(refused(serde_json::json!({"sub": "a", "exp": t - 60})).contains("Expired"));
    assert!(
        refused(serde_json::json!({"sub": "a", "exp": t + 60, "nbf": t + 60}))
            .contains("ImmatureSignature")
    );
    // The CVE-2026-25537 shapes: exp or nbf of the wrong type must not skip the checks.
    assert!(
        c.authenticate(&hs256(serde_json::json!({"sub": "a", "exp": "soon"})))
            .is_err()
    );
    assert!(
        c.authenticate(&hs256(
            serde_json::json!({"sub": "a", "exp": t + 60, "nbf": "later"})
        ))
        .is_err()
    );
    let m = refused(serde_json::json!({"sub": "a"}));
    assert!(m.contains("exp"), "{m}");
    let m = refused(serde_json::json!({"exp": t + 60}));
    assert!(m.contains("sub"), "{m}");
    assert!(
        refused(serde_json::json!({"sub": "a", "exp": t + 60, "jti": "stolen"}))
            .contains("revoked")
    );
    assert!(
        refused(serde_json::json!({"sub": "old", "exp": t + 60, "iat": t - 200}))
            .contains("revoked")
    );
    assert!(
        c.authenticate(&hs256(
            serde_json::json!({"sub": "old", "exp": t + 60, "iat": t})
        ))
        .is_ok()
    );
    assert!(refused(serde_json::json!({"sub": "$broker", "exp": t + 60})).contains("sub"));
    assert!(
        refused(serde_json::json!({"sub": "a", "exp": t + 60, "broadcast": {"sned_all": true}}))
            .contains("sned_all")
    );
    // Signed with another secret.
    let forged = encode(
        &Header::default(),
        &serde_json::json!({"sub": "a", "exp": t + 60}),
        &EncodingKey::from_secret(b"another secret of at least 32 bytes!"),
    )
    .unwrap();
    assert!(
        c.authenticate(&forged)
            .unwrap_err()
            .contains("InvalidSignature")
    );
    assert!(c.authenticate("a.b.c").is_err());
}

#[test]
fn settings_that_cannot_work_are_refused_naming_the_fault() {
    let fault = |s: AuthSettings| Credentials::new(&s).unwrap_err().0;
    let mut s = settings();
    s.identities.push(s.identities[0].clone());
    assert!(fault(s).contains("listed twice"));
    let mut s = settings();
    s.identities[0].tokens_sha256 = vec!["abc".into()];
    assert!(fault(s).contains("SHA-256"));
    let mut s = settings();
    s.identities[0].identity = "$broker".into();
    assert!(fault(s).contains("reserved"));
    let mut s = settings();
    s.identities[0].rights.names = Some(vec!["a.>.b".into()]);
    assert!(fault(s).contains("names"));
    let mut s = settings();
    s.jwt_keys[0].secret = Some("short".into());
    assert!(fault(s).contains("32 bytes"));
    let mut s = settings();
    s.jwt_keys[1].public_key = Some("not a key".into());
    assert!(fault(s).contains("jwt key ed"));
}

#[test]
fn an_hs256_secret_may_come_from_a_file_and_only_from_one_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    let mut s = settings();
    s.jwt_keys[0].secret = None;
    s.jwt_keys[0].secret_file = Some(path.clone());
    let c = Credentials::new(&s).unwrap().unwrap();
    let token = hs256(serde_json::json!({"sub": "a", "exp": now() + 60}));
    assert_eq!(&*c.authenticate(&token).unwrap().identity, "a");
    s.jwt_keys[0].secret = Some(SECRET.into());
    assert!(Credentials::new(&s).unwrap_err().0.contains("exactly one"));
    s.jwt_keys[0].secret = None;
    s.jwt_keys[0].secret_file = Some(dir.path().join("missing"));
    assert!(Credentials::new(&s).unwrap_err().0.contains("cannot read"));
}

#[test]
fn secrets_are_not_shown() {
    let s = settings();
    assert!(!format!("{:?}", s).contains(SECRET));
    assert!(!format!("{:?}", s.redacted()).contains(SECRET));
    assert!(!toml::to_string(&s.redacted()).unwrap().contains(SECRET));
}
