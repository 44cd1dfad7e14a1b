"""Keys: the encrypted key files (``keyfile``) and derivation of per-customer secrets (``derive``)."""

from .derive import customer_key, normalize_customer_id, probe_set_key, uniform_ints, validate_display_name
from .keyfile import DEFAULT_SCRYPT, decrypt_secret, encrypt_secret
from .keyring import Keyring, get_passphrase

__all__ = [
    "Keyring",
    "get_passphrase",
    "customer_key",
    "probe_set_key",
    "normalize_customer_id",
    "validate_display_name",
    "uniform_ints",
    "encrypt_secret",
    "decrypt_secret",
    "DEFAULT_SCRYPT",
]
