//! SSH key pairs: `createSSHKeyPair` (a fresh pair; the private key is in that one response
//! and nowhere else), `registerSSHKeyPair`, `listSSHKeyPairs`, `deleteSSHKeyPair`. Names are
//! unique per account; deploy refers to them with `keypair`/`keypairs`.

use serde_json::{Value, json};

use super::{Ctx, Outcome, list_response, owner_fields};
use crate::error::ApiError;
use crate::model::{Db, SshKeyPair};
use crate::sshkey;
use crate::store::{self, new_id};

fn render(db: &Db, pair: &SshKeyPair) -> Value {
    let mut body = json!({
        "id": pair.id,
        "name": pair.name,
        "fingerprint": pair.fingerprint,
    });
    owner_fields(db, &pair.account_id, &mut body);
    body
}

fn name_taken(db: &Db, owner: &str, name: &str) -> Result<(), ApiError> {
    if db
        .ssh_keypairs
        .iter()
        .any(|k| k.account_id == owner && k.name == name)
    {
        return Err(ApiError::param(format!(
            "A key pair with name '{name}' already exists."
        )));
    }
    Ok(())
}

/// `createSSHKeyPair name=…` (synchronous, `keypair` with `privatekey`).
pub(super) fn create(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let name = ctx.params.require(ctx.command, "name")?.to_owned();
    let owner = ctx.owner_for_create()?;
    name_taken(ctx.db, &owner, &name)?;
    let generated = sshkey::generate(&name).map_err(|e| ApiError::internal(e.to_string()))?;
    let pair = SshKeyPair {
        id: new_id(),
        name,
        account_id: owner,
        public_key: generated.public_key.clone(),
        fingerprint: sshkey::fingerprint(&generated.blob),
        created: store::now(),
    };
    let mut body = render(ctx.db, &pair);
    body["privatekey"] = json!(generated.private_key);
    ctx.db.ssh_keypairs.push(pair);
    Ok(Outcome::Sync(json!({ "keypair": body })))
}

/// `registerSSHKeyPair name=… publickey=…` (synchronous, `keypair`).
pub(super) fn register(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let name = ctx.params.require(ctx.command, "name")?.to_owned();
    let key = ctx
        .params
        .require(ctx.command, "publickey")?
        .trim()
        .to_owned();
    let owner = ctx.owner_for_create()?;
    name_taken(ctx.db, &owner, &name)?;
    let parsed =
        sshkey::parse_public(&key).map_err(|_| ApiError::param("Public key is invalid"))?;
    let fingerprint = sshkey::fingerprint(&parsed.blob);
    if ctx
        .db
        .ssh_keypairs
        .iter()
        .any(|k| k.account_id == owner && k.fingerprint == fingerprint)
    {
        return Err(ApiError::param(format!(
            "A key pair with key '{key}' already exists."
        )));
    }
    let pair = SshKeyPair {
        id: new_id(),
        name,
        account_id: owner,
        public_key: key,
        fingerprint,
        created: store::now(),
    };
    let body = render(ctx.db, &pair);
    ctx.db.ssh_keypairs.push(pair);
    Ok(Outcome::Sync(json!({ "keypair": body })))
}

/// `listSSHKeyPairs [name] [fingerprint] [id] [keyword]`: own pairs; an admin's `listall` or
/// `account` shows others'.
pub(super) fn list(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let account_filter = ctx.params.get("account").map(|name| {
        ctx.db
            .accounts
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.id.clone())
            .unwrap_or_default()
    });
    let items = ctx
        .db
        .ssh_keypairs
        .iter()
        .filter(|k| ctx.visible(&k.account_id))
        .filter(|k| account_filter.as_ref().is_none_or(|a| &k.account_id == a))
        .filter(|k| ctx.filter_matches("id", &k.id))
        .filter(|k| ctx.filter_matches("name", &k.name))
        .filter(|k| ctx.filter_matches("fingerprint", &k.fingerprint))
        .filter(|k| ctx.keyword_matches(&k.name))
        .map(|k| render(ctx.db, k))
        .collect();
    Ok(Outcome::Sync(list_response(
        ctx.params,
        "sshkeypair",
        items,
    )?))
}

/// `deleteSSHKeyPair name=…` (synchronous, `success`). VMs deployed with the pair keep its
/// public key.
pub(super) fn delete(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let name = ctx.params.require(ctx.command, "name")?.to_owned();
    let owner = ctx.owner_for_create()?;
    let before = ctx.db.ssh_keypairs.len();
    ctx.db
        .ssh_keypairs
        .retain(|k| !(k.account_id == owner && k.name == name));
    if ctx.db.ssh_keypairs.len() == before {
        return Err(ApiError::param(format!(
            "A key pair with name '{name}' does not exist for account {} in specified domain id",
            super::account_name(ctx.db, &owner)
        )));
    }
    Ok(Outcome::Sync(json!({ "success": true })))
}
