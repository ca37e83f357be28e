"""Request and response bodies. Strict: no type coercion, no unknown fields, bounded sizes.

Binary values are unpadded base64url text (``saltline.crypto.keys.b64encode``). Field sizes here are
upper bounds on the text; the services check the exact decoded sizes and signatures.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from saltline.server.services.common import MAX_SEALED_BYTES
from saltline.server.services.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH

#: Characters of base64url, any length (opaque names such as a socket ``request_id``).
B64_CHARS = r"^[A-Za-z0-9_-]*$"
_C = "[A-Za-z0-9_-]"
#: Canonical unpadded base64url, exactly what ``saltline.crypto.keys.b64decode`` accepts: no length of the
#: form 4n + 1, and the unused low bits of the last character zero (2 bits after 3 characters, 4
#: after 2).
B64 = rf"^(?:{_C}{{4}})*(?:{_C}[AQgw]|{_C}{{2}}[AEIMQUYcgkosw048])?$"


def b64_exact(size: int, prefix: str = "") -> str:
    """The pattern of canonical base64url of exactly ``size`` bytes; ``prefix`` is a regex of its
    first characters (e.g. an encoded key's version and kind bytes), counting as three of them."""
    whole, rest = divmod(size, 3)
    body = 4 * whole - (3 if prefix else 0)
    tail = {0: "", 1: f"{_C}[AQgw]", 2: f"{_C}{{2}}[AEIMQUYcgkosw048]"}[rest]
    return f"^{prefix}{_C}{{{body}}}{tail}$"


def key_prefix(kind: int) -> str:
    """The first three characters of an encoded key: version 0x01, then ``kind`` (0x01..0x07)."""
    low = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[kind * 4 : kind * 4 + 4]
    return f"AQ[{low}]"


def b64_max_chars(size: int) -> int:
    """The length of unpadded base64url of ``size`` bytes."""
    return (size * 4 + 2) // 3


#: A 16-byte id (account, device, channel, conversation, envelope): 22 characters of base64url.
Id = Annotated[
    str, Field(min_length=22, max_length=22, pattern=b64_exact(16), examples=["AAAAAAAAAAAAAAAAAAAAAA"])
]
#: An encoded account public key (saltline.crypto.keys: version, kind 0x01, 32 bytes).
AccountKeyB64 = Annotated[str, Field(min_length=46, max_length=46, pattern=b64_exact(34, key_prefix(0x01)))]
#: An encoded prekey of one kind (102 bytes: version, kind, key id, key, signature): 136 characters.
SignedPreKeyB64 = Annotated[
    str, Field(min_length=136, max_length=136, pattern=b64_exact(102, key_prefix(0x04)))
]
OneTimePreKeyB64 = Annotated[
    str, Field(min_length=136, max_length=136, pattern=b64_exact(102, key_prefix(0x05)))
]
LastResortPreKeyB64 = Annotated[
    str, Field(min_length=136, max_length=136, pattern=b64_exact(102, key_prefix(0x06)))
]
#: The server's username rule (saltline.server.services.common.normalize_username), case-insensitive.
USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,32}$"
Username = Annotated[str, Field(min_length=3, max_length=32, pattern=USERNAME_PATTERN)]
Password = Annotated[str, Field(min_length=1, max_length=1024)]
#: A new account's password: the registration rule (422 ``password_weak`` otherwise).
NewPassword = Annotated[str, Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)]


def integral(value: object) -> object:
    """A ``BeforeValidator`` for body integers: JSON Schema's ``integer`` includes ``4806.0``, so a
    float with no fraction is that integer (anything else is left for strict validation to
    refuse: ``4806.5``, ``"4806"``, ``true``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


# -- accounts ----------------------------------------------------------------------------------


class RegisterRequest(Strict):
    username: Username
    password: NewPassword
    account_key: AccountKeyB64 = Field(description="saltline.crypto.keys AccountPublicKey, encoded")
    device_list: Annotated[str, Field(min_length=1, max_length=200_000, pattern=B64)] = Field(
        description="saltline.crypto.device_list SignedDeviceList, version 1, naming device_id"
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


#: Opaque ciphertext of 1 to 512 bytes (saltline.server.services.common.MAX_SEALED_BYTES): sealed
#: account-key handoffs and encrypted device names.
Sealed = Annotated[str, Field(min_length=2, max_length=b64_max_chars(MAX_SEALED_BYTES), pattern=B64)]
DeviceListB64 = Annotated[str, Field(min_length=1, max_length=200_000, pattern=B64)]


class PutDeviceListRequest(Strict):
    device_list: DeviceListB64
    key_handoffs: Annotated[dict[Id, Sealed], Field(max_length=1000)] | None = Field(
        default=None,
        description="sealed account-key handoffs for devices of the new list other than the caller",
    )
    sealed_name: Sealed | None = Field(default=None, description="the caller's encrypted device name")


class PutSignedDeviceListRequest(Strict):
    """Linking (``X-Device-Grant``): the current list plus exactly the granted device."""

    device_list: DeviceListB64
    sealed_name: Sealed | None = Field(default=None, description="the new device's encrypted name")


class DeviceGrantRequest(Strict):
    device_id: Id = Field(description="the new device's id (never used before)")
    signing_key: Annotated[str, Field(min_length=43, max_length=43, pattern=b64_exact(32))] = Field(
        description="the new device's raw 32-byte Ed25519 signing key"
    )


class DeviceGrantResponse(BaseModel):
    grant: str = Field(description="32 random bytes, base64url: the X-Device-Grant header value")
    expires_in: int


class KeyHandoff(BaseModel):
    version: int
    sealed: str


class KeyHandoffsResponse(BaseModel):
    handoffs: list[KeyHandoff]


class DeviceNameRequest(Strict):
    sealed_name: Sealed


class DeviceNamesResponse(BaseModel):
    names: dict[str, str] = Field(description="device id -> encrypted name, for active devices")


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
    nonce: Annotated[str, Field(min_length=43, max_length=43, pattern=b64_exact(32))]
    signature: Annotated[str, Field(min_length=86, max_length=86, pattern=b64_exact(64))]


class RefreshRequest(Strict):
    refresh_token: Annotated[str, Field(min_length=1, max_length=128)]


class WhoAmIResponse(BaseModel):
    account_id: str
    device_id: str
    username: str


# -- keys --------------------------------------------------------------------------------------


class UploadKeysRequest(Strict):
    signed_prekey: SignedPreKeyB64 | None = None
    last_resort_prekey: LastResortPreKeyB64 | None = None
    # The count limit is the server setting max_prekeys_per_upload (413 prekey_batch_too_large);
    # this bound only keeps absurd bodies out.
    one_time_prekeys: Annotated[list[OneTimePreKeyB64], Field(max_length=10_000)] = Field(
        default_factory=list
    )


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
    put_secret: str = Field(description="32 random bytes: lets its holder put messages (link code)")
    take_secret: str = Field(description="32 random bytes: lets its holder take messages (keep it)")
    expires_in: int


class ProvisioningPayload(Strict):
    payload: Annotated[str, Field(min_length=1, max_length=200_000, pattern=B64)] = Field(
        description="sealed box to the new device (ciphertext only)"
    )


# -- health ------------------------------------------------------------------------------------


class HealthResponse(BaseModel):
    status: str
