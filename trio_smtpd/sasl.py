"""SASL mechanisms for AUTH, built in and your own.

Give mechanism objects in ``Config.auth_mechanisms`` (offered under TLS) or
``Config.cleartext_auth_mechanisms`` (offered before TLS too), beside the names
``"PLAIN"``, ``"LOGIN"`` and ``"CRAM-MD5"`` that ``Config.authenticator`` checks::

    config = trio_smtpd.Config(
        tls=context, authenticator=check_password,
        auth_mechanisms=(sasl.ScramSHA256Plus(keys_of), sasl.ScramSHA256(keys_of),
                         "PLAIN", sasl.OAuthBearer(check_token)))

Each takes the application's validator: SCRAM a lookup of the user's stored keys
(``ScramKeys.from_password`` makes them), EXTERNAL and the OAuth mechanisms a function
from credentials to the identity (or None). A mechanism of your own implements
``Mechanism`` and ``Exchange``: steps that take the client's responses and answer with a
``Challenge``, a ``Success`` or a ``Failure``, without I/O.
"""

from ._certificates import load_certificate
from ._mechanisms import (
    Context,
    Exchange,
    External,
    ExternalCredentials,
    Failure,
    Mechanism,
    PasswordMechanism,
    Success,
)
from ._oauth import OAuthBearer, TokenCredentials, XOAuth2
from ._sasl import Challenge, CramMD5Credentials, Credentials, PlainCredentials
from ._scram import ScramCredentials, ScramKeys, ScramServer, ScramSHA256, ScramSHA256Plus

__all__ = [
    "Challenge",
    "Context",
    "CramMD5Credentials",
    "Credentials",
    "Exchange",
    "External",
    "ExternalCredentials",
    "Failure",
    "Mechanism",
    "OAuthBearer",
    "PasswordMechanism",
    "PlainCredentials",
    "ScramCredentials",
    "ScramKeys",
    "ScramSHA256",
    "ScramSHA256Plus",
    "ScramServer",
    "Success",
    "TokenCredentials",
    "XOAuth2",
    "load_certificate",
]
