//! Keyed masking: the mechanism behind a row's `masked(…)` and
//! `pseudonymized(…)` values (the runtime applies it; components never see
//! the key).
//!
//! A masked value is deterministic authenticated encryption (SIV-style
//! AES-256-GCM): the nonce is HMAC-SHA256(mac key, field ‖ value) cut to 96
//! bits, so equal (field, value) pairs mask equally (duplicates stay visible),
//! the same value in two fields masks differently, and the key holder can
//! decrypt. The associated data is the token's header and the field, so GCM's
//! tag detects tampering, a swapped key id, and a value moved to another
//! column: revealing needs the field it was masked as. Dead-letter bodies are
//! *sealed* instead: the same cipher with a random nonce and its own key
//! (nobody needs to compare them), bound the same way to the id of the
//! message they came from.
//!
//! Both are text of the form `<scheme>.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`:
//! `mp2` masked values and `mp2s` sealed bodies. Version 1 (`mp1`, `mp1s`)
//! bound only the header, not the field or message id; its tokens still
//! reveal, under keys of their own (see [`KeySet`]). Keys rotate by id: the
//! keyring masks with the current key and reveals under every key it knows.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Deterministically masked column values, bound to their field.
const MASK_SCHEME: &str = "mp2";
/// Randomly sealed dead-letter bodies, bound to their message id.
const SEAL_SCHEME: &str = "mp2s";
/// Version 1 of both: only the header is authenticated. Revealed, never made.
const LEGACY_MASK_SCHEME: &str = "mp1";
const LEGACY_SEAL_SCHEME: &str = "mp1s";
/// Irreversible keyed pseudonyms.
const PSEUDONYM_SCHEME: &str = "ps1";
/// 128 bits of HMAC: collisions stay negligible for any realistic table.
const PSEUDONYM_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_ID_MAX_LEN: usize = 16;

/// A 32-byte master key; every working key is derived from it with HKDF.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    /// Parses 64 hex digits or base64 (standard or URL-safe) of 32 bytes.
    /// Errors never echo the input: it is a secret.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        let bytes = Zeroizing::new(
            // 32 bytes of base64 is 43 or 44 characters: never all-hex of even length.
            if text.len().is_multiple_of(2) && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                hex::decode(text).map_err(|_| KeyError::Encoding)?
            } else {
                STANDARD
                    .decode(text)
                    .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
                    .map_err(|_| KeyError::Encoding)?
            },
        );
        Self::from_bytes(bytes)
    }

    /// A key from its 32 raw bytes (a data key KMS decrypted): taken in
    /// memory that is wiped on drop, as the copy kept is.
    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Result<Self, KeyError> {
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != key.len() {
            return Err(KeyError::Length(bytes.len()));
        }
        key.copy_from_slice(&bytes);
        Ok(Self(key))
    }

    /// A fresh random key, hex-encoded (for `maskpipe keygen`).
    pub fn generate_hex() -> String {
        hex::encode(rand::random::<[u8; 32]>())
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Which configured key an error is about: named by position, because what
/// the operator typed may be key material (a key pasted without its `ID=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    Current,
    /// 1-based position in the retired-keys list.
    Retired(usize),
}

impl fmt::Display for KeySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Current => f.write_str("the current key"),
            Self::Retired(n) => write!(f, "retired key {n}"),
        }
    }
}

/// Why a key or key id is unusable. No variant holds any part of the input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the key is empty")]
    Empty,
    #[error("the key is neither 64 hex digits nor base64")]
    Encoding,
    #[error("the key must be 32 bytes, got {0}")]
    Length(usize),
    #[error(
        "the id of {0} is invalid: use 1-{KEY_ID_MAX_LEN} characters of A-Z, a-z, 0-9, '_' or '-'"
    )]
    KeyId(KeySlot),
    #[error("{1} has the same id as {0}")]
    DuplicateKeyId(KeySlot, KeySlot),
    #[error("retired key {0} is not of the form ID=KEY")]
    RetiredFormat(usize),
    #[error("retired key {0}: {1}")]
    RetiredKey(usize, Box<KeyError>),
}

/// What a version 2 token is bound to, and must be revealed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A masked value: the field (column) it was masked as, e.g. `ip`.
    Field,
    /// A sealed dead-letter body: the SQS message id it came from.
    MessageId,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Field => "field",
            Self::MessageId => "message id",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RevealError {
    #[error(
        "not a maskpipe token (expected mp2.<key id>.<data> or mp2s.<key id>.<data>, or their mp1 forms)"
    )]
    Format,
    #[error("no key with id {0:?} is configured")]
    UnknownKey(String),
    #[error("the value is bound to its {0}: give the {0} it was written with")]
    MissingContext(Bound),
    #[error(
        "authentication failed: the value was altered, or the key, field or message id is wrong"
    )]
    Authentication,
}

/// The kinds of token [`Keyring::reveal`] opens.
#[derive(Clone, Copy)]
enum Scheme {
    Mask,
    Seal,
    LegacyMask,
    LegacySeal,
}

impl Scheme {
    fn parse(scheme: &str) -> Option<Self> {
        Some(match scheme {
            MASK_SCHEME => Self::Mask,
            SEAL_SCHEME => Self::Seal,
            LEGACY_MASK_SCHEME => Self::LegacyMask,
            LEGACY_SEAL_SCHEME => Self::LegacySeal,
            _ => return None,
        })
    }
}

/// A token's scheme, key id and data, if it has the shape of one.
fn split_token(token: &str) -> Option<(Scheme, &str, &str)> {
    let mut parts = token.trim().splitn(3, '.');
    let (scheme, key_id, data) = (parts.next()?, parts.next()?, parts.next()?);
    let scheme = Scheme::parse(scheme)?;
    is_valid_key_id(key_id).then_some((scheme, key_id, data))
}

/// What a token must be revealed with: `None` for version 1 tokens (bound to
/// nothing) and for text that is no token at all.
pub fn required_context(token: &str) -> Option<Bound> {
    match split_token(token)?.0 {
        Scheme::Mask => Some(Bound::Field),
        Scheme::Seal => Some(Bound::MessageId),
        Scheme::LegacyMask | Scheme::LegacySeal => None,
    }
}

/// The key id a masked value or sealed body names, if it is one.
pub fn token_key_id(token: &str) -> Option<&str> {
    split_token(token).map(|(_, key_id, _)| key_id)
}

/// The working keys of one key id.
///
/// Version 2 derives keys of its own rather than reusing version 1's: an mp1
/// and an mp2 token of the same (field, value) would otherwise share a GCM
/// nonce under different associated data, and two tags under one nonce give
/// away GHASH's key, with which tags can be forged, undoing the binding.
struct KeySet {
    mask_cipher: Aes256Gcm,
    mask_mac: Hmac<Sha256>,
    seal_cipher: Aes256Gcm,
    legacy_mask_cipher: Aes256Gcm,
    legacy_seal_cipher: Aes256Gcm,
    pseudonym_mac: Hmac<Sha256>,
}

impl KeySet {
    fn derive(master: &MasterKey) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(b"maskpipe"), master.0.as_slice());
        let derive = |info: &[u8]| {
            let mut key = Zeroizing::new([0u8; 32]);
            hkdf.expand(info, key.as_mut_slice())
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            key
        };
        let cipher = |info: &[u8]| Aes256Gcm::new(derive(info).as_slice().into());
        let hmac = |info: &[u8]| {
            <Hmac<Sha256> as Mac>::new_from_slice(derive(info).as_slice())
                .expect("HMAC accepts any key length")
        };
        Self {
            mask_cipher: cipher(b"maskpipe/v2/mask/aes-256-gcm"),
            mask_mac: hmac(b"maskpipe/v2/mask/hmac-sha256-nonce"),
            seal_cipher: cipher(b"maskpipe/v2/seal/aes-256-gcm"),
            legacy_mask_cipher: cipher(b"maskpipe/v1/mask/aes-256-gcm"),
            legacy_seal_cipher: cipher(b"maskpipe/v1/seal/aes-256-gcm"),
            // Pseudonyms already hash the field in; they keep their version 1 key.
            pseudonym_mac: hmac(b"maskpipe/v1/pseudonym/hmac-sha256"),
        }
    }
}

/// The current key plus any retired keys still needed to reveal old values.
pub struct Keyring {
    current_id: String,
    /// Headers of the current key, computed once: they begin the AEAD's
    /// associated data and every token.
    mask_header: String,
    seal_header: String,
    pseudonym_header: String,
    keys: BTreeMap<String, KeySet>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current_id", &self.current_id)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    pub fn new(
        current_id: &str,
        current: &MasterKey,
        retired: &[(String, MasterKey)],
    ) -> Result<Self, KeyError> {
        let mut keys = BTreeMap::new();
        let mut slots = BTreeMap::new();
        let all = std::iter::once((KeySlot::Current, current_id, current)).chain(
            retired
                .iter()
                .enumerate()
                .map(|(n, (id, key))| (KeySlot::Retired(n + 1), id.as_str(), key)),
        );
        for (slot, id, key) in all {
            if !is_valid_key_id(id) {
                return Err(KeyError::KeyId(slot));
            }
            if let Some(&first) = slots.get(id) {
                return Err(KeyError::DuplicateKeyId(first, slot));
            }
            slots.insert(id, slot);
            keys.insert(id.to_owned(), KeySet::derive(key));
        }
        Ok(Self {
            current_id: current_id.to_owned(),
            mask_header: format!("{MASK_SCHEME}.{current_id}"),
            seal_header: format!("{SEAL_SCHEME}.{current_id}"),
            pseudonym_header: format!("{PSEUDONYM_SCHEME}.{current_id}"),
            keys,
        })
    }

    pub fn current_key_id(&self) -> &str {
        &self.current_id
    }

    /// Every key id this keyring opens: the current one and the retired ones.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    fn current(&self) -> &KeySet {
        &self.keys[&self.current_id]
    }

    /// Masks `value` as a value of column `field`: deterministic, reversible
    /// with the same field only.
    pub fn mask(&self, field: &str, value: &str) -> String {
        let keys = self.current();
        let tag = keyed_digest(&keys.mask_mac, field, value);
        let nonce = Nonce::from_slice(&tag[..NONCE_LEN]);
        encode(
            &self.mask_header,
            nonce,
            &keys.mask_cipher,
            value.as_bytes(),
            &associated_data(&self.mask_header, field),
        )
    }

    /// A keyed, irreversible pseudonym of `value` as a value of `field`.
    pub fn pseudonymize(&self, field: &str, value: &str) -> String {
        let tag = keyed_digest(&self.current().pseudonym_mac, field, value);
        let mut token = String::with_capacity(self.pseudonym_header.len() + 23);
        token.push_str(&self.pseudonym_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&tag[..PSEUDONYM_LEN], &mut token);
        token
    }

    /// Encrypts `plaintext` (a dead-letter body) with a random nonce, bound
    /// to `context`: the id of the message it came from.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        encode(
            &self.seal_header,
            Nonce::from_slice(&nonce_bytes),
            &self.current().seal_cipher,
            plaintext,
            &associated_data(&self.seal_header, context),
        )
    }

    /// Recovers the plaintext of a masked value or a sealed body. `context`
    /// is what an `mp2`/`mp2s` token is bound to (see [`required_context`]):
    /// the field of a masked value, the message id of a sealed body. Version
    /// 1 tokens are bound to neither and ignore it.
    pub fn reveal(&self, token: &str, context: Option<&str>) -> Result<Vec<u8>, RevealError> {
        let token = token.trim();
        let (scheme, key_id, data) = split_token(token).ok_or(RevealError::Format)?;
        let header = &token[..token.len() - data.len() - 1];
        let bound = |what| {
            context
                .map(|context| associated_data(header, context))
                .ok_or(RevealError::MissingContext(what))
        };
        let aad = match scheme {
            Scheme::Mask => bound(Bound::Field)?,
            Scheme::Seal => bound(Bound::MessageId)?,
            Scheme::LegacyMask | Scheme::LegacySeal => header.as_bytes().to_vec(),
        };
        let keys = self
            .keys
            .get(key_id)
            .ok_or_else(|| RevealError::UnknownKey(key_id.to_owned()))?;
        let cipher = match scheme {
            Scheme::Mask => &keys.mask_cipher,
            Scheme::Seal => &keys.seal_cipher,
            Scheme::LegacyMask => &keys.legacy_mask_cipher,
            Scheme::LegacySeal => &keys.legacy_seal_cipher,
        };
        let raw = URL_SAFE_NO_PAD
            .decode(data)
            .map_err(|_| RevealError::Format)?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(RevealError::Format);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| RevealError::Authentication)
    }
}

impl Keyring {
    /// The start of every value [`Keyring::mask`] makes now (`mp2.<current
    /// id>.`): a value that starts with it needs no re-keying.
    pub fn current_mask_prefix(&self) -> String {
        format!("{}.", self.mask_header)
    }

    /// The start of every body [`Keyring::seal`] makes now (`mp2s.<current id>.`).
    pub fn current_seal_prefix(&self) -> String {
        format!("{}.", self.seal_header)
    }

    /// The start of pseudonyms made under the current key (`ps1.<current id>.`).
    pub fn current_pseudonym_prefix(&self) -> String {
        format!("{}.", self.pseudonym_header)
    }

    /// A masked value of `field` (`mp2` or `mp1`, under any configured key)
    /// masked again under the current key; `None` if it already is. The
    /// plaintext lives only in wiped memory. Anything else (a sealed body, a
    /// pseudonym, text that is no token) is a [`RevealError::Format`].
    pub fn remask(&self, field: &str, token: &str) -> Result<Option<String>, RevealError> {
        match split_token(token).ok_or(RevealError::Format)? {
            (Scheme::Mask, key_id, _) if key_id == self.current_id => Ok(None),
            (Scheme::Mask | Scheme::LegacyMask, ..) => {
                let plain = Zeroizing::new(self.reveal(token, Some(field))?);
                let text = std::str::from_utf8(&plain).map_err(|_| RevealError::Format)?;
                Ok(Some(self.mask(field, text)))
            }
            (Scheme::Seal | Scheme::LegacySeal, ..) => Err(RevealError::Format),
        }
    }

    /// A sealed body (`mp2s` or `mp1s`) of message `message_id` sealed again
    /// under the current key; `None` if it already is.
    pub fn reseal(&self, message_id: &str, token: &str) -> Result<Option<String>, RevealError> {
        match split_token(token).ok_or(RevealError::Format)? {
            (Scheme::Seal, key_id, _) if key_id == self.current_id => Ok(None),
            (Scheme::Seal | Scheme::LegacySeal, ..) => {
                let plain = Zeroizing::new(self.reveal(token, Some(message_id))?);
                Ok(Some(self.seal(message_id, &plain)))
            }
            (Scheme::Mask | Scheme::LegacyMask, ..) => Err(RevealError::Format),
        }
    }
}

/// The longest masked text for a value of `value_len` bytes under a key id
/// of `key_id_len` characters (the field is authenticated, not stored).
pub fn masked_len(key_id_len: usize, value_len: usize) -> usize {
    MASK_SCHEME.len() + 1 + key_id_len + 1 + (NONCE_LEN + value_len + TAG_LEN).div_ceil(3) * 4
}

/// HMAC over (field, value), the field length-prefixed so ("ab", "c") and
/// ("a", "bc") differ.
fn keyed_digest(
    mac: &Hmac<Sha256>,
    field: &str,
    value: &str,
) -> hmac::digest::Output<Hmac<Sha256>> {
    let mut mac = mac.clone();
    mac.update(&(field.len() as u64).to_be_bytes());
    mac.update(field.as_bytes());
    mac.update(value.as_bytes());
    mac.finalize().into_bytes()
}

/// Version 2's associated data: header ‖ 0x00 ‖ u64 length ‖ context. A
/// header never holds a 0 byte (key ids are validated), and the length
/// prefix keeps the context's end unambiguous.
fn associated_data(header: &str, context: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 1 + 8 + context.len());
    aad.extend_from_slice(header.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&(context.len() as u64).to_be_bytes());
    aad.extend_from_slice(context.as_bytes());
    aad
}

fn encode(
    header: &str,
    nonce: &Nonce<aes_gcm::aead::consts::U12>,
    cipher: &Aes256Gcm,
    plaintext: &[u8],
    aad: &[u8],
) -> String {
    let ciphertext = cipher
        .encrypt(
            nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        // AES-GCM fails only past 64 GiB of plaintext.
        .expect("AES-GCM encryption of an in-memory value cannot fail");
    let mut raw = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    raw.extend_from_slice(nonce);
    raw.extend_from_slice(&ciphertext);
    let mut token = String::with_capacity(header.len() + 1 + raw.len().div_ceil(3) * 4);
    token.push_str(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&raw, &mut token);
    token
}

/// A key id: 1-16 characters of A-Z, a-z, 0-9, `_` or `-` (it is part of
/// every token's header).
pub fn is_valid_key_id(id: &str) -> bool {
    (1..=KEY_ID_MAX_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The entries of a retired-keys setting, `ID=VALUE,ID=VALUE`, numbered
/// from 1, each split at its first `=` (base64 may end in `=` padding, an id
/// never holds one) and its id checked. Shared by plaintext keys and KMS
/// ciphertexts; errors name an entry by position, never by content.
pub fn retired_entries(text: &str) -> impl Iterator<Item = Result<(usize, &str, &str), KeyError>> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .map(|(index, entry)| {
            let n = index + 1;
            // A base64 value pasted without `ID=` splits at its padding: the
            // "id" is key material and what follows is empty or only `=`.
            let (id, value) = entry
                .split_once('=')
                .filter(|(id, value)| {
                    !id.trim().is_empty() && !value.trim().trim_matches('=').is_empty()
                })
                .ok_or(KeyError::RetiredFormat(n))?;
            let id = id.trim();
            if !is_valid_key_id(id) {
                return Err(KeyError::KeyId(KeySlot::Retired(n)));
            }
            Ok((n, id, value))
        })
}

/// Parses `ID=KEY,ID=KEY` (the retired-keys setting).
pub fn parse_retired_keys(text: &str) -> Result<Vec<(String, MasterKey)>, KeyError> {
    retired_entries(text)
        .map(|entry| {
            let (n, id, key) = entry?;
            let key = MasterKey::parse(key).map_err(|e| KeyError::RetiredKey(n, Box::new(e)))?;
            Ok((id.to_owned(), key))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn keyring(id: &str, key: &str) -> Keyring {
        Keyring::new(id, &MasterKey::parse(key).unwrap(), &[]).unwrap()
    }

    /// Changes one ciphertext character. Not the last one: with unpadded
    /// base64 it may carry fewer than 6 bits, and a replacement that sets the
    /// unused bits is a format error, not an authentication failure (a
    /// randomly sealed body ending in `A` hit that in one run of sixteen).
    fn tamper(token: &str) -> String {
        let mut bytes = token.as_bytes().to_vec();
        let inner = bytes.len() - 5;
        bytes[inner] = if bytes[inner] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn equal_inputs_mask_equally_and_reveal() {
        let ring = keyring("k1", KEY_A);
        let a = ring.mask("ip", "199.172.111.135");
        assert_eq!(a, ring.mask("ip", "199.172.111.135"));
        assert!(a.starts_with("mp2.k1."), "{a}");
        assert_eq!(ring.reveal(&a, Some("ip")).unwrap(), b"199.172.111.135");
    }

    #[test]
    fn the_same_value_masks_differently_per_field_and_value() {
        let ring = keyring("k1", KEY_A);
        assert_ne!(
            ring.mask("ip", "1.2.3.4"),
            ring.mask("device_id", "1.2.3.4")
        );
        assert_ne!(ring.mask("ip", "1.2.3.4"), ring.mask("ip", "1.2.3.5"));
        // The length prefix keeps field/value boundaries apart.
        assert_ne!(ring.mask("ab", "c"), ring.mask("a", "bc"));
    }

    #[test]
    fn a_masked_value_reveals_only_as_its_own_field() {
        let ring = keyring("k1", KEY_A);
        let ip = ring.mask("ip", "10.0.0.1");
        // Copied into masked_device_id, it no longer opens.
        assert_eq!(
            ring.reveal(&ip, Some("device_id")),
            Err(RevealError::Authentication)
        );
        assert_eq!(ring.reveal(&ip, Some("")), Err(RevealError::Authentication));
        assert_eq!(
            ring.reveal(&ip, None),
            Err(RevealError::MissingContext(Bound::Field))
        );
        assert_eq!(required_context(&ip), Some(Bound::Field));
        assert_eq!(ring.reveal(&ip, Some("ip")).unwrap(), b"10.0.0.1");
    }

    #[test]
    fn a_sealed_body_reveals_only_under_its_own_message_id() {
        let ring = keyring("k1", KEY_A);
        let body = br#"{"ip": "1.2.3.4"}"#;
        let sealed = ring.seal("msg-1", body);
        assert!(sealed.starts_with("mp2s.k1."), "{sealed}");
        assert_eq!(ring.reveal(&sealed, Some("msg-1")).unwrap(), body);
        // Swapped onto another dead letter, it no longer opens.
        assert_eq!(
            ring.reveal(&sealed, Some("msg-2")),
            Err(RevealError::Authentication)
        );
        assert_eq!(
            ring.reveal(&sealed, None),
            Err(RevealError::MissingContext(Bound::MessageId))
        );
        assert_eq!(required_context(&sealed), Some(Bound::MessageId));
        // A sealed body is not a masked value of a field named like the id.
        let masked = ring.mask("msg-1", "x");
        assert_eq!(
            ring.reveal(&masked.replacen("mp2.", "mp2s.", 1), Some("msg-1")),
            Err(RevealError::Authentication)
        );
    }

    #[test]
    fn version_1_tokens_still_reveal_and_ignore_the_context() {
        // Made by the version 1 code (mp1, unbound) for KEY_A under id k1.
        let masked = "mp1.k1.yesJdrGIoffmj4Ke7Aqpln0LsStzIGqSjfmGm6zHzGJCAPnGiVGf4m1pWw";
        let sealed = "mp1s.k1.7_YqsZEvWj2iFLw3Z0YMYMftUza9_R7yz2_Givq62i22VAWXayYlf-iTXAKc";
        let ring = keyring("k1", KEY_A);
        for context in [None, Some("ip"), Some("anything")] {
            assert_eq!(ring.reveal(masked, context).unwrap(), b"199.172.111.135");
            assert_eq!(
                ring.reveal(sealed, context).unwrap(),
                br#"{"ip": "1.2.3.4"}"#
            );
        }
        assert_eq!(required_context(masked), None);
        assert_eq!(required_context(sealed), None);
        // Relabelling across versions fails both ways: a version 1 token
        // cannot be passed off as bound, nor a bound one stripped of its field.
        assert_eq!(
            ring.reveal(&masked.replacen("mp1.", "mp2.", 1), Some("ip")),
            Err(RevealError::Authentication)
        );
        let bound = ring.mask("ip", "199.172.111.135");
        assert_eq!(
            ring.reveal(&bound.replacen("mp2.", "mp1.", 1), None),
            Err(RevealError::Authentication)
        );
        // Version 2 uses keys of its own: no nonce is shared with version 1.
        assert_ne!(&bound[7..23], &masked[7..23]);
    }

    #[test]
    fn tampering_and_wrong_keys_are_detected() {
        let ring = keyring("k1", KEY_A);
        let token = ring.mask("ip", "10.0.0.1");
        assert_eq!(
            ring.reveal(&tamper(&token), Some("ip")),
            Err(RevealError::Authentication)
        );
        // A different key under the same id cannot open it.
        assert_eq!(
            keyring("k1", KEY_B).reveal(&token, Some("ip")),
            Err(RevealError::Authentication)
        );
        // Swapping the key id in the header breaks authentication too.
        let other = Keyring::new(
            "k2",
            &MasterKey::parse(KEY_A).unwrap(),
            &[("k1".into(), MasterKey::parse(KEY_A).unwrap())],
        )
        .unwrap();
        assert_eq!(
            other.reveal(&token.replacen("k1", "k2", 1), Some("ip")),
            Err(RevealError::Authentication)
        );
        assert_eq!(
            ring.reveal("mp2.k9.AAAA", Some("ip")),
            Err(RevealError::UnknownKey("k9".into()))
        );
        assert_eq!(token_key_id("mp2s.k9.AAAA"), Some("k9"));
        assert_eq!(ring.reveal("hello", Some("ip")), Err(RevealError::Format));
        assert_eq!(
            ring.reveal("mp2.bad id.AAAA", None),
            Err(RevealError::Format)
        );
    }

    #[test]
    fn a_sealed_body_under_a_wrong_key_or_tampered_fails() {
        let ring = keyring("k1", KEY_A);
        let sealed = ring.seal("msg-1", b"body");
        assert_eq!(
            ring.reveal(&tamper(&sealed), Some("msg-1")),
            Err(RevealError::Authentication)
        );
        assert_eq!(
            keyring("k1", KEY_B).reveal(&sealed, Some("msg-1")),
            Err(RevealError::Authentication)
        );
        // A truncated token is an error, never a panic.
        assert!(
            ring.reveal(&sealed[..sealed.len() - 30], Some("msg-1"))
                .is_err()
        );
        assert_eq!(
            ring.reveal("mp2s.k1.AAAA", Some("msg-1")),
            Err(RevealError::Format)
        );
    }

    #[test]
    fn pseudonyms_are_stable_keyed_and_irreversible() {
        let ring = keyring("k1", KEY_A);
        let a = ring.pseudonymize("device_id", "593-47-5928");
        assert_eq!(a, ring.pseudonymize("device_id", "593-47-5928"));
        assert_ne!(a, ring.pseudonymize("ip", "593-47-5928"));
        assert_ne!(
            a,
            keyring("k1", KEY_B).pseudonymize("device_id", "593-47-5928")
        );
        assert!(a.starts_with("ps1.k1.") && a.len() <= 44, "{a}");
        assert_eq!(ring.reveal(&a, Some("device_id")), Err(RevealError::Format));
    }

    #[test]
    fn sealing_is_randomised_and_reversible() {
        let ring = keyring("k1", KEY_A);
        let body = br#"{"ip": "1.2.3.4"}"#;
        let a = ring.seal("m", body);
        let b = ring.seal("m", body);
        assert_ne!(a, b);
        assert!(a.starts_with("mp2s.k1."));
        assert_eq!(ring.reveal(&a, Some("m")).unwrap(), body);
    }

    #[test]
    fn rotation_masks_with_the_new_key_and_reveals_both() {
        let old = keyring("k1", KEY_A);
        let old_token = old.mask("ip", "10.0.0.1");
        let rotated = Keyring::new(
            "k2",
            &MasterKey::parse(KEY_B).unwrap(),
            &parse_retired_keys(&format!("k1={KEY_A}")).unwrap(),
        )
        .unwrap();
        let new_token = rotated.mask("ip", "10.0.0.1");
        assert!(new_token.starts_with("mp2.k2."));
        assert_eq!(rotated.reveal(&old_token, Some("ip")).unwrap(), b"10.0.0.1");
        assert_eq!(rotated.reveal(&new_token, Some("ip")).unwrap(), b"10.0.0.1");
    }

    #[test]
    fn key_parsing_accepts_hex_and_base64_and_never_echoes() {
        let from_hex = keyring("k1", KEY_A).mask("f", "v");
        let b64 = STANDARD.encode(hex::decode(KEY_A).unwrap());
        assert_eq!(keyring("k1", &b64).mask("f", "v"), from_hex);
        assert_eq!(MasterKey::parse("").unwrap_err(), KeyError::Empty);
        assert_eq!(MasterKey::parse("abcd").unwrap_err(), KeyError::Length(2));
        assert_eq!(MasterKey::parse("abc=").unwrap_err(), KeyError::Length(2));
        let err = MasterKey::parse("not a key at all!")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("not a key"), "{err}");
        assert_eq!(
            Keyring::new("bad.id", &MasterKey::parse(KEY_A).unwrap(), &[]).unwrap_err(),
            KeyError::KeyId(KeySlot::Current)
        );
        assert!(parse_retired_keys("k0").is_err());
    }

    #[test]
    fn raw_key_bytes_make_the_same_key_as_their_hex() {
        let raw = Zeroizing::new(hex::decode(KEY_A).unwrap());
        let ring = Keyring::new("k1", &MasterKey::from_bytes(raw).unwrap(), &[]).unwrap();
        assert_eq!(ring.mask("f", "v"), keyring("k1", KEY_A).mask("f", "v"));
        for len in [0, 31, 33, 64] {
            assert_eq!(
                MasterKey::from_bytes(Zeroizing::new(vec![7; len])).unwrap_err(),
                KeyError::Length(len)
            );
        }
    }

    #[test]
    fn retired_key_errors_name_the_entry_and_never_echo_it() {
        let b64 = STANDARD.encode(hex::decode(KEY_B).unwrap());
        assert_eq!(b64.len(), 44);
        let cases = [
            // The key without its `ID=`: its padding is the only '='.
            (b64.clone(), KeyError::RetiredFormat(1)),
            (format!("k0={KEY_A},{b64}"), KeyError::RetiredFormat(2)),
            (KEY_B.to_owned(), KeyError::RetiredFormat(1)),
            (
                format!("{}={KEY_A}", &KEY_B[..20]),
                KeyError::KeyId(KeySlot::Retired(1)),
            ),
            (
                format!("k0={}", &KEY_B[..40]),
                KeyError::RetiredKey(1, Box::new(KeyError::Length(20))),
            ),
        ];
        for (text, expected) in cases {
            let error = parse_retired_keys(&text).unwrap_err();
            assert_eq!(error, expected, "{text}");
            let message = error.to_string();
            for secret in [KEY_B, b64.as_str()] {
                for window in secret.as_bytes().windows(8) {
                    let window = std::str::from_utf8(window).unwrap();
                    assert!(!message.contains(window), "{message}");
                }
            }
        }
        let key = || MasterKey::parse(KEY_A).unwrap();
        assert_eq!(
            Keyring::new("k1", &key(), &[("k2".into(), key()), ("k1".into(), key())]).unwrap_err(),
            KeyError::DuplicateKeyId(KeySlot::Current, KeySlot::Retired(2))
        );
        assert_eq!(
            KeyError::DuplicateKeyId(KeySlot::Current, KeySlot::Retired(2)).to_string(),
            "retired key 2 has the same id as the current key"
        );
    }

    #[test]
    fn masked_length_bound_holds() {
        let ring = keyring("k1", KEY_A);
        for len in [0, 1, 15, 45, 128] {
            let value = "x".repeat(len);
            let masked = ring.mask("device_id", &value);
            assert!(masked.len() <= masked_len(2, len), "{len}");
        }
        // The reference transform's limits fit varchar(256) with a 16-char
        // key id: measured, not only computed.
        let longest_id = "k".repeat(KEY_ID_MAX_LEN);
        let ring = keyring(&longest_id, KEY_A);
        let masked = ring.mask("device_id", &"x".repeat(128));
        assert_eq!(masked.len(), masked_len(KEY_ID_MAX_LEN, 128));
        assert!(masked.len() <= 256, "{}", masked.len());
    }

    fn rotated() -> Keyring {
        let old = MasterKey::parse(KEY_A).unwrap();
        Keyring::new(
            "k2",
            &MasterKey::parse(KEY_B).unwrap(),
            &[("k1".into(), old)],
        )
        .unwrap()
    }

    #[test]
    fn remask_moves_a_value_to_the_current_key_once() {
        let before = keyring("k1", KEY_A).mask("ip", "10.0.0.1");
        let ring = rotated();
        let after = ring.remask("ip", &before).unwrap().unwrap();
        assert_eq!(after, ring.mask("ip", "10.0.0.1"));
        assert!(after.starts_with(&ring.current_mask_prefix()), "{after}");
        // Under the current key already: left alone.
        assert_eq!(ring.remask("ip", &after), Ok(None));
        // Version 1 values (bound to no field) become version 2 ones.
        let legacy = "mp1.k1.yesJdrGIoffmj4Ke7Aqpln0LsStzIGqSjfmGm6zHzGJCAPnGiVGf4m1pWw";
        assert_eq!(
            ring.remask("ip", legacy).unwrap().unwrap(),
            ring.mask("ip", "199.172.111.135")
        );
    }

    #[test]
    fn remask_refuses_what_it_cannot_open_or_make_again() {
        let ring = rotated();
        let other_field = keyring("k1", KEY_A).mask("ip", "10.0.0.1");
        assert_eq!(
            ring.remask("device_id", &other_field),
            Err(RevealError::Authentication)
        );
        let unknown = keyring("gone", KEY_A).mask("ip", "10.0.0.1");
        assert_eq!(
            ring.remask("ip", &unknown),
            Err(RevealError::UnknownKey("gone".into()))
        );
        // Pseudonyms are one-way; sealed bodies are not masked values.
        let pseudonym = keyring("k1", KEY_A).pseudonymize("ip", "10.0.0.1");
        assert_eq!(ring.remask("ip", &pseudonym), Err(RevealError::Format));
        let sealed = ring.seal("m-1", b"body");
        assert_eq!(ring.remask("ip", &sealed), Err(RevealError::Format));
        assert_eq!(ring.remask("ip", "10.0.0.1"), Err(RevealError::Format));
    }

    #[test]
    fn reseal_moves_a_body_to_the_current_key_bound_to_its_message() {
        let before = keyring("k1", KEY_A).seal("m-1", b"{\"ip\": \"1.2.3.4\"}");
        let ring = rotated();
        let after = ring.reseal("m-1", &before).unwrap().unwrap();
        assert!(after.starts_with(&ring.current_seal_prefix()), "{after}");
        assert_eq!(
            ring.reveal(&after, Some("m-1")).unwrap(),
            b"{\"ip\": \"1.2.3.4\"}"
        );
        assert_eq!(ring.reseal("m-1", &after), Ok(None));
        assert_eq!(
            ring.reseal("m-2", &before),
            Err(RevealError::Authentication)
        );
        let legacy = "mp1s.k1.7_YqsZEvWj2iFLw3Z0YMYMftUza9_R7yz2_Givq62i22VAWXayYlf-iTXAKc";
        let upgraded = ring.reseal("m-9", legacy).unwrap().unwrap();
        assert_eq!(
            ring.reveal(&upgraded, Some("m-9")).unwrap(),
            br#"{"ip": "1.2.3.4"}"#
        );
        assert_eq!(
            ring.reseal("m-1", &ring.mask("ip", "1.2.3.4")),
            Err(RevealError::Format)
        );
    }
}
