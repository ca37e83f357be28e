"""Request and response bodies. Strict: no type coercion, no unknown fields, bounded sizes.

Binary values are unpadded base64url text (``crypto.keys.b64encode``). Field sizes here are
upper bounds on the text; the services check the exact decoded sizes and signatures.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

B64 = r"^[A-Za-z0-9_-]*$"

#: A 16-byte id (account, device, channel): 22 characters of base64url.
Id = Annotated[str, Field(min_length=22, max_length=22, pattern=B64, examples=["AAAAAAAAAAAAAAAAAAAAAA"])]
#: An encoded public key (34 bytes): 46 characters.
PublicKeyB64 = Annotated[str, Field(min_length=1, max_length=64, pattern=B64)]
#: An encoded prekey (102 bytes): 136 characters.
PreKeyB64 = Annotated[str, Field(min_length=1, max_length=160, pattern=B64)]
Username = Annotated[str, Field(min_length=1, max_length=64)]
Password = Annotated[str, Field(min_length=1, max_length=1024)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


# -- accounts ----------------------------------------------------------------------------------


class RegisterRequest(Strict):
    username: Username
    password: Password
    account_key: PublicKeyB64 = Field(description="crypto.keys AccountPublicKey, encoded")
    device_list: Annotated[str, Field(min_length=1, max_length=200_000, pattern=B64)] = Field(
        description="crypto.device_list SignedDeviceList, version 1, naming device_id"
    )
    device_id: Id = Field(description="the registering device (must be named by device_list)")


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the token type name
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    account_id: str
    device_id: str


class RegisterResponse(BaseModel):
    account_id: str
    username: str
    device_id: str
    device_list_version: int
    tokens: TokenResponse


class AccountResponse(BaseModel):
    account_id: str
    username: str
    account_key: str
    device_list_version: int


class DeviceResponse(BaseModel):
    device_id: str
    signing_key: str
    dh_key: str
    added_at_ms: int


class DevicesResponse(BaseModel):
    account_id: str
    device_list_version: int
    devices: list[DeviceResponse]


class SignedListResponse(BaseModel):
    account_id: str
    version: int
    hash: str
    signed_list: str = Field(description="base64url SignedDeviceList, exactly as signed")
    created_at_ms: int


class ListChainResponse(BaseModel):
    account_id: str
    lists: list[SignedListResponse]


class PutDeviceListRequest(Strict):
    device_list: Annotated[str, Field(min_length=1, max_length=200_000, pattern=B64)]


class PutDeviceListResponse(BaseModel):
    version: int
    hash: str
    added: list[str]
    removed: list[str]


# -- auth --------------------------------------------------------------------------------------


class LoginRequest(Strict):
    username: Username
    password: Password
    device_id: Id


class ChallengeRequest(Strict):
    username: Username
    device_id: Id


class ChallengeResponse(BaseModel):
    nonce: str
    expires_in: int


class DeviceLoginRequest(Strict):
    username: Username
    device_id: Id
    nonce: Annotated[str, Field(min_length=43, max_length=43, pattern=B64)]
    signature: Annotated[str, Field(min_length=86, max_length=86, pattern=B64)]


class RefreshRequest(Strict):
    refresh_token: Annotated[str, Field(min_length=1, max_length=128)]


class WhoAmIResponse(BaseModel):
    account_id: str
    device_id: str
    username: str


# -- keys --------------------------------------------------------------------------------------


class UploadKeysRequest(Strict):
    signed_prekey: PreKeyB64 | None = None
    last_resort_prekey: PreKeyB64 | None = None
    # The count limit is the server setting max_prekeys_per_upload (413 prekey_batch_too_large);
    # this bound only keeps absurd bodies out.
    one_time_prekeys: Annotated[list[PreKeyB64], Field(max_length=10_000)] = Field(default_factory=list)


class PreKeyCountResponse(BaseModel):
    one_time: int
    signed_prekey_id: int | None
    last_resort_prekey_id: int | None


class BundleResponse(BaseModel):
    account_id: str
    device_id: str
    signing_key: str
    dh_key: str
    signed_prekey: str
    one_time_prekey: str | None
    last_resort_prekey: str | None = Field(description="present only when no one-time prekey was left")
    one_time_remaining: int


class ClaimTarget(Strict):
    account_id: Id
    device_id: Id


class ClaimRequest(Strict):
    devices: Annotated[list[ClaimTarget], Field(min_length=1, max_length=1000)]


class ClaimResponse(BaseModel):
    bundles: list[BundleResponse]


# -- provisioning ------------------------------------------------------------------------------


class ProvisioningChannelResponse(BaseModel):
    channel_id: str
    channel_secret: str
    expires_in: int


class ProvisioningPayload(Strict):
    payload: Annotated[str, Field(min_length=1, max_length=200_000, pattern=B64)] = Field(
        description="sealed box to the new device (ciphertext only)"
    )


# -- health ------------------------------------------------------------------------------------


class HealthResponse(BaseModel):
    status: str
