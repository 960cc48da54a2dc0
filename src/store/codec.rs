//! How records are encoded: bincode, behind a leading format byte that
//! names the layout of what follows.

use serde::{Deserialize, Serialize};

use crate::store::error::StoreError;

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub(crate) fn encode<T: Serialize>(format: u8, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![format];
    let body = bincode::serde::encode_to_vec(value, bincode_config())
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

pub(crate) fn decode_body<T: for<'de> Deserialize<'de>>(
    body: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    match bincode::serde::decode_from_slice::<T, _>(body, bincode_config()) {
        Ok((value, used)) if used == body.len() => Ok(value),
        _ => Err(StoreError::Corrupt { what }),
    }
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(
    format: u8,
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((v, body)) if *v == format => decode_body(body, what),
        _ => Err(StoreError::Corrupt { what }),
    }
}
